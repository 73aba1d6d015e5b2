"""The same trial trained on cached features and with the frozen backbone in the loop (batch 32)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from search import data, features, head, metrics


def _timed_fit(model, x, y, p, seed):
    marks = [time.perf_counter()]
    total = head.fit(model, x, y, p, seed, on_epoch=lambda epoch, loss: marks.append(time.perf_counter()))
    return total, list(np.diff(marks))


def compare(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target.  spec: cache_dir, key, subset, split_ratio, epochs, batch_size, units, seed."""
    from benchmarks.extraction import resnet50_flops_per_image

    seed = spec["seed"]
    pooled = data.load_pooled("fashion_mnist", None, spec["subset"])
    xf, y = features.load_cached(spec["cache_dir"], spec["key"])
    assert np.array_equal(y, pooled.labels), "cache entry does not hold this slice"
    tr, te = data.split_indices(y, spec["split_ratio"], seed)
    p = head.HeadParams(units=spec["units"], dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3,
                        batch_size=spec["batch_size"], epochs=spec["epochs"])

    report(stage="cached")
    model = head.build_head(xf.shape[1], 10, p, seed)
    cached_s, cached_epochs = _timed_fit(model, np.asarray(xf[tr], np.float32), y[tr], p, seed)
    proba, _ = head.predict(model, np.asarray(xf[te], np.float32))
    cached_acc = metrics.evaluate(y[te], proba, 10)["accuracy"]

    report(stage="full")
    backbone = features.build_backbone(features.resolve_weights("random"))
    flops = resnet50_flops_per_image(backbone)
    t = time.perf_counter()
    xi = features.to_backbone_input(pooled.images[tr], "unit")
    prep_s = time.perf_counter() - t
    # Steady forward rate of the backbone (what extraction is made of), after a warm-up call.
    n_fwd = min(len(xi), 1024)
    backbone.predict(xi[:256], batch_size=256, verbose=0)
    t = time.perf_counter()
    backbone.predict(xi[:n_fwd], batch_size=256, verbose=0)
    forward_ips = n_fwd / (time.perf_counter() - t)
    full = head.full_model(backbone, head.build_head(xf.shape[1], 10, p, seed))
    full_s, full_epochs = _timed_fit(full, xi, y[tr], p, seed)
    proba = np.asarray(full.predict(features.to_backbone_input(pooled.images[te], "unit"), batch_size=256, verbose=0))
    full_acc = metrics.evaluate(y[te], proba.astype(np.float64), 10)["accuracy"]
    return {"n_train": int(len(tr)), "epochs": p.epochs, "batch_size": p.batch_size,
            "cached_fit_s": cached_s, "cached_epoch_s": cached_epochs, "cached_accuracy": cached_acc,
            "full_fit_s": full_s, "full_epoch_s": full_epochs, "full_accuracy": full_acc,
            "full_preprocess_s": prep_s, "forward_images_per_s": forward_ips, "resnet50_flops_per_image": flops}


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "fit_ratio": r["full_fit_s"] / r["cached_fit_s"],
            "last_epoch_ratio": r["full_epoch_s"][-1] / r["cached_epoch_s"][-1],
            "full_train_images_per_s": r["n_train"] / r["full_epoch_s"][-1]}
