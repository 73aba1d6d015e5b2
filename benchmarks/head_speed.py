"""Head training speed: achieved GFLOP/s per batch size, Keras backend, thread setting and dtype policy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import N_CLASSES, N_FEATURES, head_train_flops, load_verified
from search.data import datasets
from search.training import head
from search.trial import metrics


def _features(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if spec.get("key"):
        x, y = load_verified(spec["cache_dir"], spec["key"])
        return np.asarray(x, np.float32), y
    rng = np.random.default_rng(0)  # tiny synthetic inputs (tests)
    y = rng.integers(0, N_CLASSES, spec["n_rows"])
    return rng.standard_normal((spec["n_rows"], N_FEATURES), dtype=np.float32) + y[:, None] * 0.1, y


def _fit(model, x, y, p: head.HeadParams, seed: int) -> list[float]:
    """Per-epoch seconds, through the production path (search.training.head.fit and its per-epoch hook)."""
    marks = [time.perf_counter()]
    head.fit(model, x, y, p, seed, on_epoch=lambda e, loss: marks.append(time.perf_counter()))
    return list(np.diff(marks))


def sweep(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target.  spec: cache_dir/key (or n_rows for synthetic), n_rows, units, batch_sizes, epochs,
    policy ("float32" | "mixed_bfloat16"), intra_threads, accuracy (optional
    {"batch_size", "epochs"}: train on a 0.8 split of the real rows and report test accuracy)."""
    import keras

    if keras.backend.backend() == "tensorflow" and spec.get("intra_threads"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(spec["intra_threads"])
        tf.config.threading.set_inter_op_parallelism_threads(spec["intra_threads"])
    keras.config.set_dtype_policy(spec.get("policy", "float32"))
    x, y = _features(spec)
    n = spec["n_rows"]
    if len(x) < n:  # throughput does not depend on the values: repeat rows up to n
        reps = -(-n // len(x))
        x, y = np.tile(x, (reps, 1))[:n], np.tile(y, reps)[:n]
    else:
        x, y = x[:n], y[:n]
    units, epochs = spec["units"], spec["epochs"]
    rows = []
    for b in spec["batch_sizes"]:
        report(stage="batch", batch_size=b)
        p = head.HeadParams(units=units, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3, batch_size=b, epochs=epochs)
        model = head.build_head(x.shape[1], N_CLASSES, p, seed=0)
        ep = _fit(model, x, y, p, 0)
        steady = min(ep[1:]) if len(ep) > 1 else ep[0]
        rows.append({"batch_size": b, "epoch_s": ep, "steady_epoch_s": steady,
                     "gflops": head_train_flops(n, units) / steady / 1e9})
    out: dict[str, Any] = {"backend": keras.backend.backend(), "policy": spec.get("policy", "float32"),
                           "n_rows": n, "units": units, "rows": rows}
    acc = spec.get("accuracy")
    if acc:
        xa, ya = _features(spec)
        xa, ya = xa[:acc.get("rows", len(xa))], ya[:acc.get("rows", len(ya))]
        tr, te = datasets.split_indices(ya, 0.8, 0)
        p = head.HeadParams(units=units, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3,
                            batch_size=acc["batch_size"], epochs=acc["epochs"])
        x = np.asarray(xa[tr], np.float32)
        model = head.build_head(x.shape[1], N_CLASSES, p, 0)
        fit = head.fit(model, x, ya[tr], p, 0)
        fit_s = fit.train_time_s
        proba, _ = head.predict(model, np.asarray(xa[te], np.float32))
        out["accuracy"] = {**acc, "n_train": int(len(tr)), "fit_s": fit_s,
                           "accuracy": metrics.evaluate(ya[te], proba, N_CLASSES)["accuracy"]}
    return out
