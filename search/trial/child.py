"""One trial, as it runs inside its own process: cached features -> split -> head -> metrics -> pictures.

``run_trial`` takes a ``TrialSpec`` (search.config.spec) as JSON, so that it can cross a process boundary,
and reports progress through a callback.  Every quality metric it returns carries
its split's prefix (``val_*`` on the validation split, ``test_*`` on the
held-out test split), and ``objective_split`` says which of them the
objectives are.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from search import isolate
from search.config.choices import HANDLINGS, SPLIT_PREFIX
from search.config.spec import TrialParams, TrialSpec
from search.data import datasets
from search.features import feature_cache
from search.training import augment, head
from search.trial import epochs, metrics

Report = Callable[..., None]


@dataclass
class Split:
    fit: np.ndarray                 # training rows (after any imbalance)
    val: np.ndarray | None          # validation rows (validation protocol only)
    test: np.ndarray                # held-out test rows
    train_counts: list[int]
    reduced: tuple[int, ...]
    curve: int                      # the evaluation split's first ``curve`` rows are the learning curve's sample


@dataclass
class Evaluation:
    """The rows measured after training: the objective split's, and the held-out test split's when the objectives
    are on a validation split.  Always the plain cached features, in every augmentation mode."""

    objective_split: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {self.objective_split: (self.x, self.y)}
        if self.x_test is not None:
            out["test"] = (self.x_test, self.y_test)
        return out


@dataclass
class Rows:
    """A trial's data, copied out of the feature cache (which is closed again)."""

    split: Split
    evaluation: Evaluation
    fit_counts: list[int]                      # class counts of the rows one epoch trains on
    x_train: np.ndarray | None = None          # plain training rows (None: augmented)
    y_train: np.ndarray | None = None
    model: Any = None                          # the head, built while the rows were copied (plain only)
    augmented: augment.Augmented | None = None
    views: int = 0                             # cached views the augmented input draws from



def run_trial(job: dict[str, Any], report: Report) -> dict[str, Any]:
    """Train and evaluate one head; return every measure (objective.py picks the objectives).

    ``job``: a ``TrialSpec`` as JSON (``TrialSpec.as_dict``), which is how it crosses the process boundary.
    """
    spec = TrialSpec.from_dict(job)
    _start_backend()
    hp = head_params(spec.params)
    rows = load_rows(spec, hp, report)
    curve: list[float] = []
    snaps = epochs.EpochSnapshots(spec.snapshots)
    model, fit = train(rows, hp, spec, after_epoch(rows, spec.n_classes, snaps, curve), report)
    report(stage="evaluating", spare=True)  # training is over: the next trial's process may start now
    feature_cache.prefetch(spec.cache_dir, spec.key)  # ...and will copy its rows from this file
    splits, measures, times = measure(model, rows.evaluation, spec.n_classes, rows.split.reduced)
    eval_key = f"{SPLIT_PREFIX[rows.evaluation.objective_split]}_accuracy"
    history = {**fit.history, eval_key: curve}
    result = {**measures, **describe(spec, rows, fit, history, times)}
    result.update(snaps.result(fit.history["epoch_time_s"], fit.train_time_s))
    if spec.pictures:
        report(stage="drawing pictures")
        k = rows.split.curve
        curve_label = eval_key + metrics.curve_sample_note([k] if k < len(rows.evaluation.y) else [])
        result["pictures"] = _draw(spec, splits, history, eval_key, curve_label, rows.split.train_counts)
    return result


def load_rows(spec: TrialSpec, hp: head.HeadParams, report: Report) -> Rows:
    """Open the feature cache, split its rows, and copy out what training and evaluation read."""
    p, seed, n_classes = spec.params, spec.seed, spec.n_classes
    handling, mode = p.handling, p.augmentation
    report(stage="loading features")
    store = feature_cache.FeatureStore(spec.cache_dir, spec.key)
    split, y = split_rows(spec, store.labels), store.labels
    # Augmented training rows (views from the view cache, or images through the backbone) are search.training.augment's.
    augmented = augment.training(spec, split.fit, store, report) if mode != "none" else None
    report(stage="copying rows")
    with ThreadPoolExecutor(1) as pool:
        # The head is built (its initialisers traced and compiled, ~0.8 s) while the rows are copied out
        # (~1 s): both are needed before training, neither reads the other's data, and most of each runs
        # outside the GIL.  The same seed gives the same weights as building it afterwards.
        built = pool.submit(head.build_head, store.n_features, n_classes, hp, seed) if augmented is None else None
        x_train, y_train = (store.take(split.fit), y[split.fit]) if augmented is None else (None, None)
        eval_rows = split.val if split.val is not None else split.test
        evaluation = Evaluation(spec.evaluation, store.take(eval_rows), y[eval_rows])
        if split.val is not None:
            evaluation.x_test, evaluation.y_test = store.take(split.test), y[split.test]
        store.close()  # the map's pages count in this process's memory; the rows are copies now
        model = built.result() if built is not None else None
    if augmented is None and HANDLINGS[handling].changes == "data":
        report(stage=f"resampling ({handling})")
        x_train, y_train = datasets.resample(x_train, y_train, handling, seed)
    fit_counts = augmented.fit_counts if augmented is not None else datasets.class_counts(y_train, n_classes)
    return Rows(split, evaluation, fit_counts, x_train, y_train, model, augmented,
                augmented.views if augmented is not None else 0)


def measure(model: Any, ev: Evaluation, n_classes: int, reduced: tuple[int, ...]
            ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, float]]:
    """Every quality metric on each split of ``ev``: after an epoch (a snapshot) and after training alike.

    Returns per split its labels, probabilities and measures (for the pictures), the split-prefixed
    measures, and each split's prediction time (``val_time_s``, ``test_time_s``).
    """
    splits, measures, times = {}, {}, {}
    for name, (x, y) in ev.splits().items():
        proba, took = head.predict(model, x)
        m = metrics.evaluate(y, proba, n_classes, reduced)
        splits[name] = {"y": y, "proba": proba, "measures": m}
        measures.update(metrics.prefixed(m, name))
        times[f"{SPLIT_PREFIX[name]}_time_s"] = took
    return splits, measures, times


def after_epoch(rows: Rows, n_classes: int, snaps: epochs.EpochSnapshots,
                curve: list[float]) -> head.AfterEpoch:
    """The hook after each epoch: the learning curve's point, and at a snapshot epoch every measure."""
    ev, k = rows.evaluation, rows.split.curve

    def hook(epoch: int, model: Any) -> bool:
        # The paper's training curves: accuracy after each epoch, on the evaluation split's curve sample.
        if not snaps.wants(epoch):
            proba, _ = head.predict(model, ev.x[:k])
            curve.append(float(np.mean(proba.argmax(axis=1) == ev.y[:k])))
            return False
        # An epoch snapshot (search.study.snapshots): this epoch's model as an e-epoch trial, from the same prediction.
        splits, measures, times = measure(model, ev, n_classes, rows.split.reduced)
        curve.append(float(np.mean(splits[ev.objective_split]["proba"][:k].argmax(axis=1) == ev.y[:k])))
        return snaps.add(epoch, measures, times)  # True: early stopping ends training at this rung

    return hook


def train(rows: Rows, hp: head.HeadParams, spec: TrialSpec, hook: head.AfterEpoch,
          report: Report) -> tuple[Any, head.FitResult]:
    """Fit the head once, on the plain rows or the augmented input; the training rows are let go after."""
    report(stage="training", epoch=0, epochs=hp.epochs)

    def on_epoch(epoch: int, loss: float) -> None:
        report(stage="training", epoch=epoch, epochs=hp.epochs, loss=loss)

    aug = rows.augmented
    if aug is None:
        model, fitted, (x, y) = rows.model, rows.model, (rows.x_train, rows.y_train)
    else:
        x, y = aug.inputs(hp, spec.seed)
        model = head.build_head(aug.n_features, spec.n_classes, hp, spec.seed)
        fitted = aug.wrap(model, spec.seed)
    # Curves and snapshots look at the head, which predicts from the cached evaluation features.
    on_head = hook if fitted is model else (lambda epoch, _fitted: hook(epoch, model))
    try:
        fit = head.fit(fitted, x, y, hp, spec.seed, after_epoch=on_head, on_epoch=on_epoch)
    finally:
        if aug is not None:
            aug.close(x)
    rows.x_train = rows.y_train = rows.model = rows.augmented = None  # an online input holds all its images
    return model, fit


def describe(spec: TrialSpec, rows: Rows, fit: head.FitResult, history: dict[str, list[float]],
             times: dict[str, float]) -> dict[str, Any]:
    """What the trial was and cost, beside its quality measures."""
    import keras  # already loaded: which backend trained it is part of what time and memory mean

    p, split, n_classes = spec.params, rows.split, spec.n_classes
    out = dict(
        objective_split=spec.evaluation, keras_backend=keras.backend.backend(),
        threads=len(os.sched_getaffinity(0)),
        train_time_s=fit.train_time_s, compile_time_s=fit.compile_time_s, epoch_time_s=fit.epoch_time_s,
        eval_time_s=fit.eval_time_s, epochs_run=fit.epochs_run, history=history, curve_rows=split.curve,
        test_time_s=times["test_time_s"], n_train=int(len(split.fit)), n_test=int(len(split.test)),
        imbalance_profile=p.profile if p.balance == "imbalanced" else "none",
        reduced_classes=list(split.reduced), handling=p.handling,
        augmentation=p.augmentation, views=rows.views, backbone=p.backbone, input_size=p.input_size,
        train_class_counts=split.train_counts, fit_class_counts=rows.fit_counts,
        test_class_counts=datasets.class_counts(rows.evaluation.y_test if split.val is not None else rows.evaluation.y,
                                            n_classes))
    if split.val is not None:
        out.update(val_time_s=times["val_time_s"], n_val=int(len(split.val)),
                   val_class_counts=datasets.class_counts(rows.evaluation.y, n_classes))
    return out


def warm_up() -> None:
    """Load Keras and start its backend: a process started ahead of its trial does this while it waits."""
    import keras

    keras.ops.convert_to_numpy(keras.ops.ones((8, 8)) @ keras.ops.ones((8, 8)))


def _start_backend() -> None:
    """Load Keras and start its backend, then mark this as the process's memory baseline.

    ``trial_memory_mb`` is the peak above this point: what the trial's own work holds
    (data rows, model, optimizer state, compiled steps), not the interpreter and backend.
    """
    warm_up()
    isolate.mark_baseline()


def head_params(p: TrialParams) -> head.HeadParams:
    return head.HeadParams(units=p.units, dropout=p.dropout, l1=p.l1, l2=p.l2,
                           learning_rate=p.learning_rate, batch_size=p.batch_size, epochs=p.epochs,
                           handling=p.handling, focal_gamma=p.focal_gamma,
                           label_smoothing=p.label_smoothing)


def split_rows(spec: TrialSpec, labels: np.ndarray) -> Split:
    """The trial's fit/validation/test rows: stratified, seeded; imbalance on the training part only.

    The evaluation split's rows are ordered with the learning curve's sample first (``Split.curve``),
    so that the per-epoch prediction reads a slice, not a copy.
    """
    p, seed, n_classes = spec.params, spec.seed, spec.n_classes
    profile = p.profile
    reduce_classes = spec.reduce_classes
    fit_idx, val_idx, test_idx = datasets.protocol_split(labels, p.split_ratio, seed, spec.evaluation,
                                                     spec.validation_fraction)
    if p.balance == "imbalanced":
        fit_idx = datasets.apply_profile(fit_idx, labels, n_classes, profile, seed, rho=p.rho,
                                     paper_classes=reduce_classes, fraction=spec.reduce_fraction)
    eval_idx, curve = curve_first(val_idx if val_idx is not None else test_idx, labels, spec.curve_rows,
                                  seed)
    val_idx, test_idx = (eval_idx, test_idx) if val_idx is not None else (None, eval_idx)
    return Split(fit_idx, val_idx, test_idx, datasets.class_counts(labels[fit_idx], n_classes),
                 datasets.reduced_classes(profile, n_classes, reduce_classes), curve)


def curve_first(idx: np.ndarray, labels: np.ndarray, rows: int, seed: int) -> tuple[np.ndarray, int]:
    """``idx`` reordered so that its first rows are a stratified, seeded sample of ``rows`` of them; and how many.

    ``rows`` 0 (or at least ``len(idx)``): the whole split, order unchanged.
    """
    if rows <= 0 or rows >= len(idx):
        return idx, len(idx)
    from sklearn.model_selection import train_test_split

    pos = np.arange(len(idx))
    try:
        sample, rest = train_test_split(pos, train_size=rows, stratify=labels[idx], random_state=seed)
    except ValueError:  # a class with a single row cannot be stratified: a plain seeded sample
        sample, rest = train_test_split(pos, train_size=rows, random_state=seed)
    return idx[np.concatenate([np.sort(sample), np.sort(rest)])], rows


def _draw(spec: TrialSpec, splits: dict[str, dict[str, Any]], history: dict[str, list[float]], eval_key: str,
          curve_label: str, train_counts: list[int]) -> list[str]:
    """The trial's pictures into a fresh directory the coordinator uploads and removes.  Never raises."""
    from search.trial import pictures

    try:
        out = tempfile.mkdtemp(prefix="search-pictures-", dir=spec.pictures.tmp_dir)
        return pictures.draw_trial(
            Path(out), splits, history, eval_key, curve_label, list(spec.class_names),
            f"{spec.pictures.header}, Keras/{spec.pictures.backend}, weights {spec.pictures.weights}",
            train_counts)
    except Exception as e:  # a picture is never worth a trial
        return [f"error: {type(e).__name__}: {e}"[:500]]
