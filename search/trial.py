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
    p = spec["params"]
    seed = spec["seed"]

    report(stage="loading features")
    x, y = features.load_cached(spec["cache_dir"], spec["key"])

    train_idx, test_idx = data.split_indices(y, p["split_ratio"], seed)
    if p["balance"] == "imbalanced":
        train_idx = data.imbalance(train_idx, y, tuple(spec["reduce_classes"]), spec["reduce_fraction"], seed)
    n_classes = spec["n_classes"]
    train_counts = data.class_counts(y[train_idx], n_classes)

    hp = head.HeadParams(units=p["units"], dropout=p["dropout"], l1=p["l1"], l2=p["l2"],
                         learning_rate=p["learning_rate"], batch_size=p["batch_size"], epochs=p["epochs"])
    report(stage="training", epoch=0, epochs=hp.epochs)
    # Fancy indexing copies the rows out of the memory map once, so epochs read RAM, not disk.
    x_train = np.asarray(x[train_idx], dtype=np.float32)
    model, train_time = head.train_head(
        x_train, y[train_idx], n_classes, hp, seed,
        on_epoch=lambda epoch, loss: report(stage="training", epoch=epoch, epochs=hp.epochs, loss=loss))
    del x_train

    report(stage="evaluating")
    proba, test_time = head.predict(model, np.asarray(x[test_idx], dtype=np.float32))
    result = metrics.evaluate(y[test_idx], proba, n_classes)
    result.update(train_time_s=train_time, test_time_s=test_time,
                  n_train=int(len(train_idx)), n_test=int(len(test_idx)),
                  train_class_counts=train_counts,
                  test_class_counts=data.class_counts(y[test_idx], n_classes))
    return result
