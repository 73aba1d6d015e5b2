"""The trainable head: Dense(units, ReLU, L1/L2) -> Dropout -> Dense(classes, softmax), trained with Adam.

The head is the same Keras model whether it sits on cached features or on top
of the frozen backbone (``full_model``), which is what makes the cache a pure
speed-up: same seed, same weights, same batches, same predictions.

``fit`` times what a trial's resource objectives mean: the whole fit, its
first call's tracing and compilation, a steady epoch; time spent evaluating
after each epoch (for curves and snapshots) is measured apart and excluded.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from search import runtime
from search.errors import TrialFailed


@dataclass(frozen=True)
class HeadParams:
    units: int
    dropout: float
    l1: float
    l2: float
    learning_rate: float
    batch_size: int
    epochs: int
    # Imbalance handling inside the loss ("oversample"/"smote" change the data, not the loss: see search.data.datasets).
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


def full_model(backbone, head, augment=None):
    """Backbone in the loop (optionally behind an augmentation model): what a trial costs without the cache."""
    import keras

    inputs = keras.Input(backbone.input_shape[1:])
    x = augment(inputs) if augment is not None else inputs
    return keras.Model(inputs, head(backbone(x, training=False)), name="full")


def _cross_entropy(p: HeadParams) -> Any:
    import keras

    if p.label_smoothing > 0:
        return keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)
    # Sparse labels give the same loss as one-hot categorical cross-entropy without the one-hot copy.
    return "sparse_categorical_crossentropy"


def _focal(p: HeadParams) -> Any:
    import keras

    # alpha=1: the focusing term alone, so the loss keeps cross-entropy's scale relative to L1/L2.
    return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=p.focal_gamma, label_smoothing=p.label_smoothing)


# The loss of each handling that changes the loss (search.config.choices.HANDLINGS); "class_weight" adds sample
# weights to cross-entropy.  A handling that changes the data (search.data.datasets.RESAMPLERS) trains on cross-entropy.
LOSSES: dict[str, Callable[[HeadParams], Any]] = {"none": _cross_entropy, "class_weight": _cross_entropy,
                                                  "focal": _focal}


def compile_model(model, p: HeadParams) -> None:
    import keras

    loss = LOSSES.get(p.handling, _cross_entropy)(p)
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss=loss, metrics=["accuracy"],
                  steps_per_execution=runtime.STEPS_PER_CALL)


def targets(y: np.ndarray, n_classes: int, p: HeadParams) -> np.ndarray:
    """What the loss is fitted to: one-hot rows for the losses that need them, the labels otherwise."""
    return np.eye(n_classes, dtype=np.float32)[y] if p.one_hot else y


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """scikit-learn's "balanced" weights n / (C_present * n_c) for the classes present in ``y``."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    return {int(c): float(w) for c, w in zip(present, compute_class_weight("balanced", classes=present, y=y))}


@dataclass
class FitResult:
    train_time_s: float             # the whole fit, evaluation after epochs excluded (the paper's training time)
    compile_time_s: float           # the first call's tracing and compilation, beyond its steady steps
    epoch_time_s: float             # a steady epoch (median of epochs 2..E)
    eval_time_s: float              # spent in ``after_epoch`` (curves, snapshots), not in train_time_s
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)


# after_epoch(epoch, model) -> True to stop training now (early stopping); its time is excluded from training.
AfterEpoch = Callable[[int, Any], bool]


def fit(model, x: Any, y: np.ndarray, p: HeadParams, seed: int, after_epoch: AfterEpoch | None = None,
        on_epoch: Callable[[int, float], None] = lambda epoch, loss: None, steps: int | None = None) -> FitResult:
    """Train ``model`` in place for ``p.epochs`` epochs (fewer when ``after_epoch`` stops it).

    ``x`` is an array, or a ``keras.utils.PyDataset`` (then ``y`` is unused and ``steps`` is
    its batches per epoch).  A NaN/inf loss fails the trial (TrialFailed, kind "nan").
    """
    import keras

    compile_model(model, p)
    n_classes = int(model.output_shape[-1])
    is_array = isinstance(x, np.ndarray)
    weights = class_weights(y, n_classes) if p.handling == "class_weight" else None
    target = targets(y, n_classes, p) if is_array else None
    steps = steps or (math.ceil(len(x) / p.batch_size) if is_array else len(x))
    timer = _Timer(after_epoch, on_epoch)
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    model.fit(x, target, batch_size=p.batch_size if is_array else None, epochs=p.epochs, shuffle=True,
              verbose=0, class_weight=weights if is_array else None,
              callbacks=[keras.callbacks.TerminateOnNaN(), timer])
    elapsed = time.perf_counter() - start
    losses = timer.history["loss"]
    bad = [i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad or (len(losses) < p.epochs and not timer.stopped):
        raise TrialFailed(f"training loss became NaN/inf at epoch {bad[0] if bad else len(losses) + 1}", kind="nan")
    epochs = timer.history["epoch_time_s"]
    first = min(runtime.STEPS_PER_CALL, steps)  # steps in the first call, which also traces and compiles
    if len(epochs) > 1:
        steady = statistics.median(epochs[1:])
    else:  # one epoch: its time without the first call, scaled to a full epoch
        steady = (epochs[0] - timer.first_call_s) * steps / max(steps - first, 1)
    compile_s = max(0.0, timer.first_call_s - steady * first / steps)
    return FitResult(train_time_s=elapsed - timer.eval_s, compile_time_s=compile_s, epoch_time_s=steady,
                     eval_time_s=timer.eval_s, epochs_run=len(losses), history=timer.history)


class _Timer:
    """Keras callback: epoch and first-call times, the loss/accuracy history, and the after-epoch hook."""

    def __new__(cls, *args, **kwargs):  # a keras.callbacks.Callback, defined lazily: keras loads in the trial
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self, after_epoch, on_epoch):
                super().__init__()
                self.after_epoch, self.on_epoch = after_epoch, on_epoch
                self.history: dict[str, list[float]] = {"loss": [], "accuracy": [], "epoch_time_s": []}
                self.eval_s = 0.0
                self.first_call_s = 0.0
                self.stopped = False

            def on_train_begin(self, logs=None):
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if not self.first_call_s:
                    self.first_call_s = time.perf_counter() - self._t0

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch_start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                loss = float(logs.get("loss", float("nan")))  # float() waits for the epoch's last step
                self.history["epoch_time_s"].append(time.perf_counter() - self._epoch_start)
                self.history["loss"].append(loss)
                self.history["accuracy"].append(float(logs.get("accuracy", float("nan"))))
                self.on_epoch(epoch + 1, loss)
                if self.after_epoch is not None and math.isfinite(loss):
                    t = time.perf_counter()
                    stop = self.after_epoch(epoch + 1, self.model)
                    self.eval_s += time.perf_counter() - t
                    if stop:
                        self.stopped = self.model.stop_training = True

        return Timer(*args, **kwargs)


def predict(model, x: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, float]:
    """Class probabilities and wall seconds."""
    start = time.perf_counter()
    proba = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(proba, dtype=np.float64), time.perf_counter() - start
