"""The trainable head: Dense(units, ReLU, L1/L2) -> Dropout -> Dense(classes, softmax), trained with Adam.

The head is the same Keras model whether it sits on cached features or on top
of the frozen backbone (``full_model``), which is what makes the cache a pure
speed-up: same seed, same weights, same batches, same predictions.

``fit`` times what a trial's resource objectives mean: the whole fit, its
first call's tracing and compilation, a steady epoch; time spent evaluating
after each epoch (for curves and snapshots) is measured apart and excluded.

A fit can stop after epoch e with a ``Checkpoint`` and go on later, in another
process, from it: the resumed head's epoch E equals an uninterrupted E-epoch
head's (on JAX, the trials' backend; tested).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class Checkpoint:
    """What a head paused after ``epoch`` epochs needs to go on as if it had never stopped: its variables (the
    dropout's seed state among them), Adam's variables, and numpy's RNG state at the start of its last epoch.

    On JAX, Keras shuffles an array with ``np.random.permutation``, one draw per epoch, plus one more on a model's
    first fit; a fresh model resumed from the state before epoch e's draw spends that extra draw on it, so epoch
    e + 1 gets the permutation it would have had.  ``tests/test_head.py`` pins this to the installed Keras.
    """
    epoch: int
    variables: tuple[np.ndarray, ...]
    optimizer: tuple[np.ndarray, ...]
    rng: tuple[Any, ...]

    def save(self, path: Path) -> None:
        """Write whole or not at all (a kill mid-write leaves the previous file)."""
        name, keys, pos, has_gauss, gauss = self.rng
        arrays = {f"v{i}": a for i, a in enumerate(self.variables)}
        arrays.update({f"o{i}": a for i, a in enumerate(self.optimizer)})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, epoch=self.epoch, rng_keys=keys, rng=np.array([pos, has_gauss, gauss]), **arrays,
                         rng_name=np.array(name))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "Checkpoint":
        with np.load(path) as z:
            pos, has_gauss, gauss = z["rng"]
            count = lambda prefix: sum(k.startswith(prefix) and k[1:].isdigit() for k in z.files)  # noqa: E731
            return cls(int(z["epoch"]), tuple(z[f"v{i}"] for i in range(count("v"))),
                       tuple(z[f"o{i}"] for i in range(count("o"))),
                       (str(z["rng_name"]), z["rng_keys"], int(pos), int(has_gauss), float(gauss)))


def _restore(model, ck: Checkpoint) -> None:
    """Put ``ck``'s state into a freshly built and compiled ``model``."""
    import keras

    if keras.backend.backend() != "jax":
        raise TrialFailed(f"resuming from a checkpoint needs the jax backend (got {keras.backend.backend()}): "
                          "other backends shuffle with their own random state")
    model.optimizer.build(model.trainable_variables)
    for v, a in zip(model.variables, ck.variables, strict=True):
        v.assign(a)
    for v, a in zip(model.optimizer.variables, ck.optimizer, strict=True):
        v.assign(a)
    np.random.set_state(ck.rng)


@dataclass
class FitResult:
    train_time_s: float             # the whole fit, evaluation after epochs excluded (the paper's training time)
    compile_time_s: float           # the first call's tracing and compilation, beyond its steady steps
    epoch_time_s: float             # a steady epoch (median of epochs 2..E)
    eval_time_s: float              # spent in ``after_epoch`` (curves, snapshots), not in train_time_s
    epochs_run: int                 # epochs of this call (after ``resume.epoch`` when resumed)
    history: dict[str, list[float]] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # with ``checkpoint=True``: the state after the last epoch run


# after_epoch(epoch, model) -> True to stop training now (early stopping); its time is excluded from training.
AfterEpoch = Callable[[int, Any], bool]


def fit(model, x: Any, y: np.ndarray, p: HeadParams, seed: int, after_epoch: AfterEpoch | None = None,
        on_epoch: Callable[[int, float], None] = lambda epoch, loss: None, steps: int | None = None,
        resume: Checkpoint | None = None, checkpoint: bool = False) -> FitResult:
    """Train ``model`` in place up to epoch ``p.epochs`` (fewer when ``after_epoch`` stops it).

    ``x`` is an array, or a ``keras.utils.PyDataset`` (then ``y`` is unused and ``steps`` is
    its batches per epoch).  A NaN/inf loss fails the trial (TrialFailed, kind "nan").  ``resume``:
    go on from a checkpoint of the same parameters, seed and rows, into a freshly built ``model``;
    ``checkpoint``: return the state after the last epoch run.
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
    if resume is not None:
        _restore(model, resume)
    first_epoch = resume.epoch if resume is not None else 0
    start = time.perf_counter()
    model.fit(x, target, batch_size=p.batch_size if is_array else None, epochs=p.epochs, shuffle=True,
              verbose=0, class_weight=weights if is_array else None, initial_epoch=first_epoch,
              callbacks=[keras.callbacks.TerminateOnNaN(), timer])
    elapsed = time.perf_counter() - start
    losses = timer.history["loss"]
    bad = [first_epoch + i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad or (first_epoch + len(losses) < p.epochs and not timer.stopped):
        raise TrialFailed(f"training loss became NaN/inf at epoch {bad[0] if bad else first_epoch + len(losses) + 1}",
                          kind="nan")
    epochs = timer.history["epoch_time_s"]
    first = min(runtime.STEPS_PER_CALL, steps)  # steps in the first call, which also traces and compiles
    if len(epochs) > 1:
        steady = statistics.median(epochs[1:])
    else:  # one epoch: its time without the first call, scaled to a full epoch
        steady = (epochs[0] - timer.first_call_s) * steps / max(steps - first, 1)
    compile_s = max(0.0, timer.first_call_s - steady * first / steps)
    ck = None
    if checkpoint and losses:
        ck = Checkpoint(first_epoch + len(losses), tuple(v.numpy() for v in model.variables),
                        tuple(v.numpy() for v in model.optimizer.variables), timer.rng_at_last_epoch)
    return FitResult(train_time_s=elapsed - timer.eval_s, compile_time_s=compile_s, epoch_time_s=steady,
                     eval_time_s=timer.eval_s, epochs_run=len(losses), history=timer.history, checkpoint=ck)


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
                self.rng_at_last_epoch = np.random.get_state()  # before this epoch's shuffle: see Checkpoint
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
