"""One trial, as it runs inside its own process: cached features -> split -> head -> metrics -> pictures.

``run_trial`` takes a plain-dict spec (JSON-serializable, built by
search.objective.trial_spec) so that it can cross a process boundary, and
reports progress through a callback.  Every quality metric it returns carries
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

from search import augment, data, features, head, isolate, metrics, snapshots

Report = Callable[..., None]


@dataclass
class Split:
    fit: np.ndarray                 # training rows (after any imbalance)
    val: np.ndarray | None          # validation rows (validation protocol only)
    test: np.ndarray                # held-out test rows
    train_counts: list[int]
    reduced: tuple[int, ...]
    curve: int                      # the evaluation split's first ``curve`` rows are the learning curve's sample


def run_trial(spec: dict[str, Any], report: Report) -> dict[str, Any]:
    """Train and evaluate one head; return every measure (objective.py picks the objectives)."""
    p = spec["params"]
    seed = spec["seed"]
    objective_split = spec["evaluation"]
    _start_backend()

    report(stage="loading features")
    store = features.FeatureStore(spec["cache_dir"], spec["key"])
    split = split_rows(spec, store.labels)
    y = store.labels
    handling = p.get("handling", "none")
    mode = p.get("augmentation", "none")
    # Augmented training rows (views from the view cache, or images through the backbone) are search.augment's;
    # validation and test rows are always the plain cached features.
    augmented = augment.training(spec, mode, split.fit, store, handling, seed, report) if mode != "none" else None
    hp = head_params(p)
    report(stage="copying rows")
    with ThreadPoolExecutor(1) as pool:
        # The head is built (its initialisers traced and compiled, ~0.8 s) while the rows are copied out
        # (~1 s): both are needed before training, neither reads the other's data, and most of each runs
        # outside the GIL.  The same seed gives the same weights as building it afterwards.
        built = pool.submit(head.build_head, store.n_features, spec["n_classes"], hp, seed) \
            if augmented is None else None
        x_train, y_train = (store.take(split.fit), y[split.fit]) if augmented is None else (None, None)
        x_eval = store.take(split.val if split.val is not None else split.test)
        x_test = store.take(split.test) if split.val is not None else x_eval
        store.close()  # the map's pages count in this process's memory; the rows are copies now
        model = built.result() if built is not None else None

    if augmented is None and data.HANDLINGS[handling][0] == "data":
        report(stage=f"resampling ({handling})")
        x_train, y_train = data.resample(x_train, y_train, handling, seed)
    fit_counts = augmented.fit_counts if augmented is not None else data.class_counts(y_train, spec["n_classes"])

    y_eval = y[split.val if split.val is not None else split.test]
    y_test = y[split.test]
    eval_key = f"{metrics.SPLIT_PREFIX[objective_split]}_accuracy"
    curve: list[float] = []
    k = split.curve
    snaps = snapshots.EpochSnapshots(spec.get("snapshots"))

    def after_epoch(epoch: int, model: Any) -> bool:
        # The paper's training curves: accuracy after each epoch, on the evaluation split's curve sample.
        if not snaps.wants(epoch):
            proba, _ = head.predict(model, x_eval[:k])
            curve.append(float(np.mean(proba.argmax(axis=1) == y_eval[:k])))
            return False
        proba, took = head.predict(model, x_eval)
        curve.append(float(np.mean(proba[:k].argmax(axis=1) == y_eval[:k])))
        # An epoch snapshot (search.snapshots): this epoch's model as an e-epoch trial, from the same prediction.
        measures = metrics.prefixed(metrics.evaluate(y_eval, proba, spec["n_classes"], split.reduced),
                                    objective_split)
        times = {f"{metrics.SPLIT_PREFIX[objective_split]}_time_s": took}
        if split.val is not None:
            test_proba, times["test_time_s"] = head.predict(model, x_test)
            measures.update(metrics.prefixed(metrics.evaluate(y_test, test_proba, spec["n_classes"],
                                                              split.reduced), "test"))
        return snaps.add(epoch, measures, times)  # True: early stopping ends training at this rung

    report(stage="training", epoch=0, epochs=hp.epochs)

    def on_epoch(epoch: int, loss: float) -> None:
        report(stage="training", epoch=epoch, epochs=hp.epochs, loss=loss)

    if augmented is None:
        fit = head.fit(model, x_train, y_train, hp, seed, after_epoch=after_epoch, on_epoch=on_epoch)
    else:
        model, fit = augmented.train(spec["n_classes"], hp, seed, after_epoch, on_epoch)
    augmented_views = augmented.views if augmented is not None else 0
    del x_train, augmented

    report(stage="evaluating", spare=True)  # training is over: the next trial's process may start now
    features.prefetch(spec["cache_dir"], spec["key"])  # ...and will copy its rows from this file
    splits: dict[str, dict[str, Any]] = {}
    eval_proba, eval_time = head.predict(model, x_eval)
    splits[objective_split] = {"y": y_eval, "proba": eval_proba,
                               "measures": metrics.evaluate(y_eval, eval_proba, spec["n_classes"], split.reduced)}
    test_time = eval_time
    if split.val is not None:
        test_proba, test_time = head.predict(model, x_test)
        splits["test"] = {"y": y_test, "proba": test_proba,
                          "measures": metrics.evaluate(y_test, test_proba, spec["n_classes"], split.reduced)}

    result: dict[str, Any] = {}
    for name, d in splits.items():
        result.update(metrics.prefixed(d["measures"], name))
    history = {**fit.history, eval_key: curve}
    import keras  # already loaded: which backend trained it is part of what time and memory mean

    result.update(
        objective_split=objective_split, keras_backend=keras.backend.backend(),
        threads=len(os.sched_getaffinity(0)),
        train_time_s=fit.train_time_s, compile_time_s=fit.compile_time_s, epoch_time_s=fit.epoch_time_s,
        eval_time_s=fit.eval_time_s, epochs_run=fit.epochs_run, history=history, curve_rows=k,
        test_time_s=test_time, n_train=int(len(split.fit)), n_test=int(len(split.test)),
        imbalance_profile=p.get("profile", "paper") if p["balance"] == "imbalanced" else "none",
        reduced_classes=list(split.reduced), handling=handling,
        augmentation=mode, views=augmented_views,
        train_class_counts=split.train_counts, fit_class_counts=fit_counts,
        test_class_counts=data.class_counts(y[split.test], spec["n_classes"]))
    result.update(snaps.result(fit.history["epoch_time_s"], fit.train_time_s))
    if split.val is not None:
        result.update(val_time_s=eval_time, n_val=int(len(split.val)),
                      val_class_counts=data.class_counts(y[split.val], spec["n_classes"]))
    if spec.get("pictures"):
        report(stage="drawing pictures")
        curve_label = eval_key + metrics.curve_sample_note([k] if k < len(y_eval) else [])
        result["pictures"] = _draw(spec, splits, history, eval_key, curve_label, split.train_counts)
    return result


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


def head_params(p: dict[str, Any]) -> head.HeadParams:
    return head.HeadParams(units=p["units"], dropout=p["dropout"], l1=p["l1"], l2=p["l2"],
                           learning_rate=p["learning_rate"], batch_size=p["batch_size"], epochs=p["epochs"],
                           handling=p.get("handling", "none"), focal_gamma=p.get("focal_gamma", 2.0),
                           label_smoothing=p.get("label_smoothing", 0.0))


def split_rows(spec: dict[str, Any], labels: np.ndarray) -> Split:
    """The trial's fit/validation/test rows: stratified, seeded; imbalance on the training part only.

    The evaluation split's rows are ordered with the learning curve's sample first (``Split.curve``),
    so that the per-epoch prediction reads a slice, not a copy.
    """
    p, seed, n_classes = spec["params"], spec["seed"], spec["n_classes"]
    profile = p.get("profile", "paper")
    reduce_classes = tuple(spec["reduce_classes"])
    fit_idx, val_idx, test_idx = data.protocol_split(labels, p["split_ratio"], seed, spec["evaluation"],
                                                     spec.get("validation_fraction", 0.2))
    if p["balance"] == "imbalanced":
        fit_idx = data.apply_profile(fit_idx, labels, n_classes, profile, seed, rho=p.get("rho", 10.0),
                                     paper_classes=reduce_classes, fraction=spec["reduce_fraction"])
    eval_idx, curve = curve_first(val_idx if val_idx is not None else test_idx, labels, spec.get("curve_rows", 0),
                                  seed)
    val_idx, test_idx = (eval_idx, test_idx) if val_idx is not None else (None, eval_idx)
    return Split(fit_idx, val_idx, test_idx, data.class_counts(labels[fit_idx], n_classes),
                 data.reduced_classes(profile, n_classes, reduce_classes), curve)


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


def _draw(spec: dict[str, Any], splits: dict[str, dict[str, Any]], history: dict[str, list[float]], eval_key: str,
          curve_label: str, train_counts: list[int]) -> list[str]:
    """The trial's pictures into a fresh directory the coordinator uploads and removes.  Never raises."""
    from search import pictures

    try:
        out = tempfile.mkdtemp(prefix="search-pictures-", dir=spec["pictures"].get("tmp_dir"))
        return pictures.draw_trial(
            Path(out), splits, history, eval_key, curve_label, spec["class_names"],
            f"{spec['pictures']['header']}, Keras/{spec['pictures']['backend']}, weights {spec['pictures']['weights']}",
            train_counts)
    except Exception as e:  # a picture is never worth a trial
        return [f"error: {type(e).__name__}: {e}"[:500]]
