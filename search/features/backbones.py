"""The frozen backbones: Keras applications by name (search.config.choices.BACKBONES), their weights (ImageNet's,
seeded random, or a local file, each identified by content), their preprocessing, their input size, and the
paper's augmentation layers in front of them.

Keras is imported inside the functions that need it: the coordinating process resolves weights (hashing a
file, or fetching ImageNet's in a child process) without loading Keras.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from search.errors import WeightsError
from search.isolate import run_isolated
from search.runtime import extraction_backend

RANDOM_WEIGHTS_SEED = 0
DEFAULT_SIZE = 32  # the paper's 28 -> 32 pixels


@dataclass(frozen=True)
class Application:
    """How Keras builds a backbone: its class in keras.applications, the module whose ``preprocess_input`` is its
    own preprocessing, the file its ImageNet weights (no top) are saved as in Keras' cache, and its GFLOPs per
    224 x 224 image (Keras' documentation; for the cost estimate only)."""

    cls: str
    module: str
    imagenet_file: str
    gflops: float


# The Keras application of each backbone of search.config.choices.BACKBONES.
APPLICATIONS: dict[str, Application] = {
    "resnet50": Application("ResNet50", "resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", 4.1),
    "resnet101": Application("ResNet101", "resnet", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", 7.8),
    "resnet50_v2": Application("ResNet50V2", "resnet_v2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                               3.5),
    "mobilenet_v3_small": Application("MobileNetV3Small", "mobilenet_v3",
                                      "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", 0.06),
    "efficientnet_b0": Application("EfficientNetB0", "efficientnet", "efficientnetb0_notop.h5", 0.39),
    "densenet121": Application("DenseNet121", "densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                               2.9),
    "convnext_tiny": Application("ConvNeXtTiny", "convnext", "convnext_tiny_notop.h5", 4.5),
}
# Measured: all 70,000 Fashion-MNIST images through ResNet50 at 32 px in 95-116 s on an idle 2-core machine.
RESNET50_S_PER_IMAGE_32 = 116 / 70_000
# Below this spread across images (search.features.backbones.spread) features carry no information: random-weight
# MobileNetV3Small and EfficientNetB0 at 32 px measured 1e-13 and 1e-9, ResNets about 3e-3.
COLLAPSED_SPREAD = 1e-6


def extraction_estimate_s(backbone: str, input_size: int, images: int) -> float:
    """Seconds to extract ``images`` on 2 cores: ResNet50's measured rate scaled by FLOPs and pixels (small
    models run below their FLOPs' share on CPUs, so theirs are floors, not promises)."""
    scale = APPLICATIONS[backbone].gflops / APPLICATIONS["resnet50"].gflops * (input_size / DEFAULT_SIZE) ** 2
    return images * RESNET50_S_PER_IMAGE_32 * scale


# ---------------------------------------------------------------- weights

@dataclass(frozen=True)
class Weights:
    """A resolved backbone: its weights (what to load, and their identity by content, recorded with the study),
    which model, and at which input size."""

    kind: str  # "imagenet" | "random" | "file"
    path: str | None
    identity: str
    backbone: str = "resnet50"
    input_size: int = DEFAULT_SIZE


def imagenet_path(backbone: str = "resnet50") -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / APPLICATIONS[backbone].imagenet_file


def resolve_weights(weights: str, backbone: str = "resnet50", input_size: int = DEFAULT_SIZE) -> Weights:
    """``imagenet``, ``random`` or a file path -> Weights, identified by the file's SHA-256.

    ImageNet weights are fetched into Keras' cache with Keras' own downloader (in a
    child process, so this process stays free of Keras); offline, a WeightsError says
    what is missing and how to supply it.
    """
    if weights == "random":
        return Weights("random", None, f"random(seed={RANDOM_WEIGHTS_SEED})", backbone, input_size)
    if weights == "imagenet":
        path = imagenet_path(backbone)
        if not path.is_file():
            _fetch_imagenet(path, backbone)
        return Weights("imagenet", str(path), f"imagenet:sha256={sha256_file(path)[:16]}", backbone, input_size)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights {weights!r} are neither 'imagenet', 'random' nor an existing file")
    return Weights("file", str(path.resolve()), f"file:sha256={sha256_file(path)[:16]}", backbone, input_size)


def _fetch_imagenet(path: Path, backbone: str) -> None:
    try:
        run_isolated("search.features.backbones:fetch_imagenet_job", {"backbone": backbone},
                     env={"KERAS_BACKEND": extraction_backend()})
    except Exception as e:  # any failure (offline, refused, partial) means "not available"
        reason = str(e).split(": ")[-1][:120] or type(e).__name__
        raise WeightsError(f"ImageNet weights for {APPLICATIONS[backbone].cls} are not at {path} and could not be "
                           f"downloaded ({reason}); put the file there, or use --weights random or --weights PATH"
                           ) from None


def fetch_imagenet_job(spec: dict, report: Callable[..., None]) -> dict:
    """Child-process entry: Keras' own loader downloads the weights (checking its hash) into its cache."""
    import keras

    app = APPLICATIONS[spec["backbone"]]
    getattr(keras.applications, app.cls)(include_top=False, weights="imagenet")
    return {"path": str(imagenet_path(spec["backbone"]))}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def build_backbone(weights: Weights):
    """The backbone without its top, average-pooled, frozen, for ``input_size`` square RGB inputs."""
    import keras

    if weights.kind == "random":
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    # "imagenet": Keras' own loader, which finds the file resolve_weights fetched (and hashed) in its cache.
    arg = {"imagenet": "imagenet", "random": None, "file": weights.path}[weights.kind]
    size = weights.input_size
    try:
        model = getattr(keras.applications, APPLICATIONS[weights.backbone].cls)(
            include_top=False, weights=arg, input_shape=(size, size, 3), pooling="avg")
    except Exception as e:
        raise WeightsError(f"cannot load backbone weights {weights.path}: {e}") from None
    model.trainable = False
    return model


# ---------------------------------------------------------------- augmentation (search.training.augment: modes)

def augmenter(rotation: float, shift: float, horizontal_flip: bool, seed: int, size: int = DEFAULT_SIZE):
    """A Keras model applying the paper's augmentation to (N, size, size, 3) images, seeded.

    ``rotation`` is in degrees (Keras' RandomRotation takes a fraction of a full turn).
    The layers augment when called directly and when fitting, never in ``predict``.
    """
    import keras

    layers: list[Any] = [keras.Input((size, size, 3))]
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation / 360.0, fill_mode="nearest", seed=seed))
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=seed + 1))
    if horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2))
    if len(layers) == 1:  # every transformation off: a model still, so callers need no special case
        layers.append(keras.layers.Identity())
    return keras.Sequential(layers, name="augmentation")


def view_seed(seed: int, view: int) -> int:
    """The augmentation seed of view ``view`` of an entry drawn with ``seed``: an independent stream per view."""
    return int(np.random.SeedSequence([seed, view]).generate_state(1)[0] >> 2)  # Keras seeds fit in int32


# ---------------------------------------------------------------- preprocessing

def _unit(x: np.ndarray, backbone: str) -> np.ndarray:
    return x / 255.0


def _caffe(x: np.ndarray, backbone: str) -> np.ndarray:
    import keras

    return keras.applications.resnet50.preprocess_input(x)


def _native(x: np.ndarray, backbone: str) -> np.ndarray:
    import keras

    return getattr(keras.applications, APPLICATIONS[backbone].module).preprocess_input(x)


# The function of each preprocessing of search.config.choices.PREPROCESSINGS, given the backbone.
PREPROCESS: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {"unit": _unit, "caffe": _caffe,
                                                                  "native": _native}


def to_backbone_input(images: np.ndarray, preprocessing: str, resize: str = "bilinear",
                      backbone: str = "resnet50", size: int = DEFAULT_SIZE) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, 3) -> float32 (N, size, size, 3) in the chosen preprocessing."""
    return preprocess(resize_images(images, resize, size), preprocessing, backbone)


def resize_images(images: np.ndarray, resize: str = "bilinear", size: int = DEFAULT_SIZE) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3) -> float32 (N, size, size, 3) on the 0-255 scale."""
    import keras

    x = images.astype(np.float32)
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[1:3] != (size, size):
        x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size), interpolation=resize))
    return x


def preprocess(x: np.ndarray, preprocessing: str, backbone: str = "resnet50") -> np.ndarray:
    return PREPROCESS[preprocessing](x, backbone)


def spread(features: np.ndarray) -> float:
    """How much the features vary across images (the mean over features of their standard deviation): about 1e-3
    for a random-weight ResNet at 32 px, 1e-13 for MobileNetV3Small's, whose features then carry nothing."""
    return float(np.mean(np.std(np.asarray(features, dtype=np.float64), axis=0))) if len(features) > 1 else 0.0
