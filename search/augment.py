"""Training-row augmentation: the paper's random rotation, width/height shift and horizontal flip (Keras 3 layers).

Modes (``[augmentation] mode``, searchable as ``augmentation``):

- ``none``: the plain feature cache.
- ``views``: an augmented-view feature cache: V augmented copies of every image
  extracted once through the frozen backbone; each epoch draws one view per
  training row (seeded), so trials stay on cached features.
- ``online``: the backbone in the loop with augmentation applied per batch,
  exactly as the paper; slow, for validating ``views``.

Only training rows are ever augmented: validation and test rows are the plain features.
"""

from __future__ import annotations

from typing import Any

MODES: dict[str, str] = {
    "none": "no augmentation: the plain feature cache",
    "views": "V augmented views of every image extracted once; each epoch draws one view per training row",
    "online": "the frozen backbone in the loop, augmentation per batch (the paper's way; slow)",
}


def augmenter(rotation: float, shift: float, horizontal_flip: bool, seed: int):
    """A Keras model applying the paper's augmentation to (N, 32, 32, 3) images, seeded.

    ``rotation`` is in degrees (Keras' RandomRotation takes a fraction of a full turn).
    """
    import keras

    layers: list[Any] = [keras.Input((32, 32, 3))]
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360.0, fill_mode="nearest", seed=seed))
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=seed + 1))
    if horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2))
    return keras.Sequential(layers, name="augmentation")
