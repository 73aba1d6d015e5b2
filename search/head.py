"""The trainable head: Dense(units, ReLU, L1/L2) -> Dropout -> Dense(classes, softmax), trained with Adam.

The head is the same Keras model whether it sits on cached features or on top
of the frozen backbone (``full_model``), which is what makes the cache a pure
speed-up: same seed, same weights, same batches, same predictions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from search.errors import TrialFailed


# Keras backends a head can train on, and the module each needs.  JAX is the default: on these 2-core
# machines it trains the fmnist_reg head 2.2x faster than TensorFlow with 31% less peak memory
# (benchmarks/RESULTS.md); TensorFlow still extracts the features unless KERAS_BACKEND says otherwise.
BACKENDS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
DEFAULT_BACKEND = "jax"


def resolve_backend(name: str | None) -> str:
    """The Keras backend trials train on: ``name``, else $KERAS_BACKEND, else JAX; it must be installed."""
    import importlib.util
    import os

    from search.errors import UsageError

    name = name or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise UsageError(f"--backend: unknown Keras backend {name!r}; valid: {', '.join(BACKENDS)}")
    if importlib.util.find_spec(BACKENDS[name]) is None:
        raise UsageError(f"--backend: {name} is not installed (pip install {BACKENDS[name]}), "
                         f"or choose another of: {', '.join(BACKENDS)}")
    return name


@dataclass(frozen=True)
class HeadParams:
    units: int
    dropout: float
    l1: float
    l2: float
    learning_rate: float
    batch_size: int
    epochs: int
    # Imbalance handling inside the loss ("oversample"/"smote" change the data, not the loss: see search.data).
    handling: str = "none"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0

    @property
    def one_hot(self) -> bool:
        """Focal loss and label smoothing need one-hot targets; plain cross-entropy keeps sparse labels."""
        return self.handling == "focal" or self.label_smoothing > 0


def build_head(n_features: int, n_classes: int, p: HeadParams, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L1L2(l1=p.l1, l2=p.l2) if (p.l1 or p.l2) else None
    return keras.Sequential([
        keras.Input((n_features,)),
        keras.layers.Dense(p.units, activation="relu", kernel_regularizer=reg),
        keras.layers.Dropout(p.dropout, seed=seed),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="head")


def full_model(backbone, head):
    """Backbone in the loop: what a trial would cost without the feature cache."""
    import keras

    inputs = keras.Input(backbone.input_shape[1:])
    return keras.Model(inputs, head(backbone(inputs, training=False)), name="full")


def compile_model(model, p: HeadParams) -> None:
    import keras

    if p.handling == "focal":
        # alpha=1: the focusing term alone, so the loss keeps cross-entropy's scale relative to L1/L2.
        loss = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=p.focal_gamma,
                                                         label_smoothing=p.label_smoothing)
    elif p.label_smoothing > 0:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)
    else:
        # Sparse labels give the same loss as one-hot categorical cross-entropy without the one-hot copy.
        loss = "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss=loss)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """scikit-learn's "balanced" weights n / (C_present * n_c) for the classes present in ``y``."""
    counts = np.bincount(y, minlength=n_classes)
    present = np.flatnonzero(counts)
    return {int(c): float(len(y) / (len(present) * counts[c])) for c in present}


def fit(model, x: np.ndarray, y: np.ndarray, p: HeadParams, seed: int,
        on_epoch: Callable[[int, float], None] = lambda epoch, loss: None) -> float:
    """Train ``model`` in place; return wall seconds.  A NaN/inf loss fails the trial."""
    import keras

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            on_epoch(epoch + 1, float((logs or {}).get("loss", float("nan"))))

    compile_model(model, p)
    n_classes = int(model.output_shape[-1])
    weights = class_weights(y, n_classes) if p.handling == "class_weight" else None
    target = np.eye(n_classes, dtype=np.float32)[y] if p.one_hot else y
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    history = model.fit(x, target, batch_size=p.batch_size, epochs=p.epochs, shuffle=True, verbose=0,
                        class_weight=weights, callbacks=[keras.callbacks.TerminateOnNaN(), _Report()])
    elapsed = time.perf_counter() - start
    losses = history.history.get("loss", [])
    bad = [i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad or len(losses) < p.epochs:
        raise TrialFailed(f"training loss became NaN/inf at epoch {bad[0] if bad else len(losses)}")
    return elapsed


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, p: HeadParams, seed: int,
               on_epoch: Callable[[int, float], None] = lambda epoch, loss: None):
    """Build and train a head on features ``x``; return (model, train seconds)."""
    model = build_head(x.shape[1], n_classes, p, seed)
    return model, fit(model, x, y, p, seed, on_epoch)


def predict(model, x: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, float]:
    """Class probabilities and wall seconds."""
    start = time.perf_counter()
    proba = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(proba, dtype=np.float64), time.perf_counter() - start
