"""One trial, as it runs inside its own process: cached features -> split -> head -> metrics.

``run_trial`` takes a plain-dict spec (JSON-serializable, built by
objective.py) so that it can cross a process boundary, and reports progress
through a callback.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from search import data, features, head, metrics

Report = Callable[..., None]


def run_trial(spec: dict[str, Any], report: Report) -> dict[str, Any]:
    """Train and evaluate one head; return every measure (see objective.py for what becomes an objective).

    With ``evaluation = "validation"`` the unprefixed metrics are those of the
    validation split (what the sampler sees) and the held-out test split's are
    ``test_*``; with ``"test"`` (and in specs from before the setting existed) the
    unprefixed metrics are the test split's, as in the paper.
    """
    p = spec["params"]
    seed = spec["seed"]
    n_classes = spec["n_classes"]
    evaluation = spec.get("evaluation", "test")
    profile = p.get("profile", "paper")
    handling = p.get("handling", "none")
    reduce_classes = tuple(spec["reduce_classes"])

    report(stage="loading features")
    x, y = features.load_cached(spec["cache_dir"], spec["key"])

    fit_idx, val_idx, test_idx = data.protocol_split(y, p["split_ratio"], seed, evaluation,
                                                     spec.get("validation_fraction", 0.2))
    if p["balance"] == "imbalanced":
        fit_idx = data.apply_profile(fit_idx, y, n_classes, profile, seed, rho=p.get("rho", 10.0),
                                     paper_classes=reduce_classes, fraction=spec["reduce_fraction"])
    train_counts = data.class_counts(y[fit_idx], n_classes)
    reduced = data.reduced_classes(profile, n_classes, reduce_classes)

    hp = head.HeadParams(units=p["units"], dropout=p["dropout"], l1=p["l1"], l2=p["l2"],
                         learning_rate=p["learning_rate"], batch_size=p["batch_size"], epochs=p["epochs"],
                         handling=handling, focal_gamma=p.get("focal_gamma", 2.0),
                         label_smoothing=p.get("label_smoothing", 0.0))
    # Fancy indexing copies the rows out of the memory map once, so epochs read RAM, not disk; the map
    # (the whole cache file, counted in this process's peak memory while mapped) is closed before training.
    x_train, y_train = np.asarray(x[fit_idx], dtype=np.float32), y[fit_idx]
    x_test = np.asarray(x[test_idx], dtype=np.float32)
    x_val = None if val_idx is None else np.asarray(x[val_idx], dtype=np.float32)
    del x
    if handling in ("oversample", "smote"):
        report(stage=f"resampling ({handling})")
        x_train, y_train = data.resample(x_train, y_train, handling, seed)
    fit_counts = data.class_counts(y_train, n_classes)
    report(stage="training", epoch=0, epochs=hp.epochs)
    model, train_time = head.train_head(
        x_train, y_train, n_classes, hp, seed,
        on_epoch=lambda epoch, loss: report(stage="training", epoch=epoch, epochs=hp.epochs, loss=loss))
    del x_train

    report(stage="evaluating")
    proba, test_time = head.predict(model, x_test)
    test_metrics = metrics.evaluate(y[test_idx], proba, n_classes, reduced)
    import keras  # already loaded by head: which backend trained it is part of what time and memory mean

    common = dict(keras_backend=keras.backend.backend(), evaluation=evaluation,
                  imbalance_profile=profile if p["balance"] == "imbalanced" else "none",
                  reduced_classes=list(reduced), handling=handling,
                  train_time_s=train_time, n_train=int(len(fit_idx)), n_test=int(len(test_idx)),
                  train_class_counts=train_counts, fit_class_counts=fit_counts,
                  test_class_counts=data.class_counts(y[test_idx], n_classes))
    if val_idx is None:
        return {**test_metrics, **common, "test_time_s": test_time}
    val_proba, val_time = head.predict(model, x_val)
    result = metrics.evaluate(y[val_idx], val_proba, n_classes, reduced)
    result.update({f"test_{k}": v for k, v in test_metrics.items()})
    result.update(common, test_time_s=val_time, heldout_test_time_s=test_time, n_val=int(len(val_idx)),
                  val_class_counts=data.class_counts(y[val_idx], n_classes))
    return result
