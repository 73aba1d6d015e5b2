"""Cached features vs the frozen backbone in the loop (issue 12 part 1): the speed-up per row.

**Rates at scale** (``cached_rate``, ``loop_rate``, ``rates``): per-row training rate over *steady* epochs
   (every epoch but the first, which carries tracing and compilation).  Each side runs in its own child on the
   backend a user gets by default for it: the cached head on JAX (the trials' default), the backbone in the loop
   on TensorFlow (the extraction default, and the faster one for ResNet50 here).  Same head
   (``search.training.head.build_head``), batch 32, epochs timed by ``search.training.head.fit``'s per-epoch hook (a Keras
   callback's ``on_epoch_end``), so a steady epoch is end-of-epoch to end-of-epoch: everything an epoch costs.
That the two heads predict the same is a test (``tests/test_features.py``), not a benchmark.

The arithmetic (``steady_epoch_s``, ``tracing_fraction``, ``summarize_rates``) is pure, for the tests.
"""

from __future__ import annotations

import time
from typing import Any

BATCH = 32


# ---------------------------------------------------------------- arithmetic (pure)

def steady_epoch_s(epoch_s: list[float]) -> float:
    """Mean epoch time without the first epoch (tracing, compilation, first-touch of the data)."""
    if len(epoch_s) < 2:
        raise ValueError("a steady epoch needs at least 2 timed epochs (the first one is excluded)")
    return sum(epoch_s[1:]) / (len(epoch_s) - 1)


def tracing_fraction(epoch_s: list[float]) -> float:
    """Share of the timed part (all epochs) that is first-epoch overhead: (first - steady) / total, >= 0."""
    return max(0.0, epoch_s[0] - steady_epoch_s(epoch_s)) / sum(epoch_s)


def side_summary(rows: int, epoch_s: list[float]) -> dict[str, Any]:
    steady = steady_epoch_s(epoch_s)
    return {"rows": rows, "epoch_s": list(epoch_s), "steady_epoch_s": steady, "rows_per_s": rows / steady,
            "tracing_s": max(0.0, epoch_s[0] - steady), "tracing_fraction": tracing_fraction(epoch_s)}


def summarize_rates(cached: dict[str, Any], loop: dict[str, Any], max_tracing: float = 0.10) -> dict[str, Any]:
    """The cache-vs-loop ratio from two child results ({"rows", "epoch_s", ...} each)."""
    c = {**cached, **side_summary(cached["rows"], cached["epoch_s"])}
    f = {**loop, **side_summary(loop["rows"], loop["epoch_s"])}
    worst = max(c["tracing_fraction"], f["tracing_fraction"])
    return {"cached": c, "loop": f, "ratio": c["rows_per_s"] / f["rows_per_s"], "batch_size": BATCH,
            "max_tracing_fraction": worst, "tracing_ok": worst < max_tracing, "max_tracing_allowed": max_tracing}


def rates_line(r: dict[str, Any]) -> str:
    """One line for the log and the report, with the tracing share that says whether the scale is right."""
    c, f = r["cached"], r["loop"]
    verdict = "under" if r["tracing_ok"] else "NOT under"
    return (f"cached head {c['rows_per_s']:,.0f} rows/s ({c['rows']:,} rows, {c['backend']}) vs backbone in the loop "
            f"{f['rows_per_s']:,.0f} images/s ({f['rows']:,} images, {f['backend']}): {r['ratio']:.1f}x per row, "
            f"steady epochs, batch {r['batch_size']}; tracing {c['tracing_fraction']:.1%} / "
            f"{f['tracing_fraction']:.1%} of the timed part ({verdict} {r['max_tracing_allowed']:.0%})")


# ---------------------------------------------------------------- child targets

def resnet50_flops_per_image(backbone) -> float:
    """Multiply-add FLOPs (2 per MAC) of every convolution of the backbone for one image; the rest is <1%."""
    import keras

    total = 0.0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, cout = layer.output.shape
            total += 2.0 * kh * kw * layer.input.shape[-1] * cout * h * w
    return total


def _params(epochs: int, units: int = 1024):
    from search.training import head

    # fmnist_reg's fixed head (1024 units, Adam 1e-3) with a mid-range dropout; regularization off on both sides.
    return head.HeadParams(units=units, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3, batch_size=BATCH,
                           epochs=epochs)


def _timed_fit(model, x, y, p, seed: int) -> list[float]:
    """Seconds per epoch from search.training.head.fit's per-epoch hook; the first mark is taken just before fit."""
    from search.training import head

    marks = [time.perf_counter()]
    head.fit(model, x, y, p, seed, on_epoch=lambda epoch, loss: marks.append(time.perf_counter()))
    return [b - a for a, b in zip(marks, marks[1:])]


def cached_rate(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target: the head on ``rows`` cached feature rows (a stratified, seeded set).

    spec: cache_dir, key, rows, epochs, seed, units (optional).
    """
    import keras
    import numpy as np

    from benchmarks.common import load_verified
    from search.data import datasets
    from search.training import head

    xf, y = load_verified(spec["cache_dir"], spec["key"])
    rows = min(spec["rows"], len(y))
    idx = np.arange(len(y)) if rows == len(y) else datasets.split_indices(y, rows / len(y), spec["seed"])[0]
    x, yt = np.asarray(xf[idx], np.float32), y[idx]  # in RAM before timing, as in a trial
    del xf
    p = _params(spec["epochs"], spec.get("units", 1024))
    report(stage="cached head", rows=len(idx))
    epochs = _timed_fit(head.build_head(x.shape[1], 10, p, spec["seed"]), x, yt, p, spec["seed"])
    return {"backend": keras.backend.backend(), "rows": int(len(idx)), "epoch_s": epochs}


def loop_rate(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target: the same head with the frozen random-weight ResNet50 in the loop, on ``images`` images.

    spec: images (a stratified slice of Fashion-MNIST), epochs, seed, data_dir (optional), units (optional).
    """
    import keras

    from search.data import datasets
    from search.features import backbones
    from search.training import head

    pooled = datasets.load_pooled("fashion_mnist", spec.get("data_dir"), spec["images"])
    x = backbones.to_backbone_input(pooled.images, "unit")  # preprocessing outside the timed part, as extraction
    backbone = backbones.build_backbone(backbones.resolve_weights("random"))
    p = _params(spec["epochs"], spec.get("units", 1024))
    model = head.full_model(backbone, head.build_head(backbone.output_shape[-1], 10, p, spec["seed"]))
    report(stage="backbone in the loop", rows=len(x))
    epochs = _timed_fit(model, x, pooled.labels, p, spec["seed"])
    # After the timed part: the backbone's forward rate alone (what extraction is made of), warm, batch 256.
    n_fwd = min(len(x), 1024)
    backbone.predict(x[:256], batch_size=256, verbose=0)
    t = time.perf_counter()
    backbone.predict(x[:n_fwd], batch_size=256, verbose=0)
    return {"backend": keras.backend.backend(), "rows": int(len(x)), "epoch_s": epochs,
            "forward_images_per_s": n_fwd / (time.perf_counter() - t),
            "resnet50_flops_per_image": resnet50_flops_per_image(backbone)}


# ---------------------------------------------------------------- the parent side

def measure_rates(cache_dir: str, key: str, cached_rows: int, cached_epochs: int, loop_images: int,
                  loop_epochs: int, seed: int = 0, data_dir: str | None = None) -> dict[str, Any]:
    """Both rate children, one after the other, each on its default backend; load average around each."""
    from benchmarks.common import child, loadavg

    sides = {}
    for name, target, backend, spec in (
            ("cached", "benchmarks.cache_vs_full:cached_rate", "jax",
             {"cache_dir": cache_dir, "key": key, "rows": cached_rows, "epochs": cached_epochs, "seed": seed}),
            ("loop", "benchmarks.cache_vs_full:loop_rate", "tensorflow",
             {"images": loop_images, "epochs": loop_epochs, "seed": seed, "data_dir": data_dir})):
        before = loadavg()
        t = child(target, spec, backend=backend)
        sides[name] = {**t.result, "wall_s": t.wall_s, "peak_memory_mb": t.peak_memory_mb,
                       "load_avg_before": before, "load_avg_after": loadavg()}
    return summarize_rates(sides["cached"], sides["loop"])
