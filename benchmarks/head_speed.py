"""Head training speed: achieved GFLOP/s per batch size, and the cost per row at several training-set sizes.

``python -m benchmarks.head_speed [--rows 20000 42000 63000] [--epochs 4] [--backend jax]`` trains the
fmnist_reg head (1024 units, batch 32) on the first N rows of all 70,000 random-weight Fashion-MNIST features,
each size in its own fresh child, and prints the steady-epoch cost per row: whether it grows with the size of
the training set (issue 24 part 4).  ``benchmarks.run`` uses ``sweep`` for its batch-size sweeps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (N_CLASSES, N_FEATURES, child, ensure_features, head_train_flops, load_text,
                               load_verified, load_warning, loadavg, machine)
from search.features import feature_cache
from search.training import head


def _features(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_rows`` rows of a cache entry (repeated when it has fewer), or synthetic rows (tests)."""
    n = spec["n_rows"]
    if not spec.get("key"):
        rng = np.random.default_rng(0)
        y = rng.integers(0, N_CLASSES, n)
        return rng.standard_normal((n, N_FEATURES), dtype=np.float32) + y[:, None] * 0.1, y
    x, y = load_verified(spec["cache_dir"], spec["key"])
    if len(x) < n:  # throughput does not depend on the values: repeat rows up to n
        reps = -(-n // len(x))
        x, y = np.tile(x, (reps, 1)), np.tile(y, reps)
    return np.ascontiguousarray(x[:n], np.float32), y[:n]


def _fit(model, x, y, p: head.HeadParams, seed: int) -> list[float]:
    """Per-epoch seconds, through the production path (search.training.head.fit and its per-epoch hook)."""
    marks = [time.perf_counter()]
    head.fit(model, x, y, p, seed, on_epoch=lambda e, loss: marks.append(time.perf_counter()))
    return list(np.diff(marks))


def sweep(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target.  spec: cache_dir/key (or none: synthetic rows), n_rows, units, batch_sizes, epochs."""
    import keras

    x, y = _features(spec)
    n, units = spec["n_rows"], spec["units"]
    rows = []
    for b in spec["batch_sizes"]:
        report(stage="batch", batch_size=b)
        p = head.HeadParams(units=units, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3, batch_size=b,
                            epochs=spec["epochs"])
        ep = _fit(head.build_head(x.shape[1], N_CLASSES, p, seed=0), x, y, p, 0)
        steady = min(ep[1:]) if len(ep) > 1 else ep[0]
        rows.append({"batch_size": b, "epoch_s": ep, "steady_epoch_s": steady,
                     "ms_per_row": 1e3 * float(np.median(ep[1:] if len(ep) > 1 else ep)) / n,
                     "gflops": head_train_flops(n, units) / steady / 1e9})
    return {"backend": keras.backend.backend(), "n_rows": n, "units": units, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.head_speed", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[20000, 42000, 63000], help="training-set sizes")
    p.add_argument("--epochs", type=int, default=4, help="epochs per size (the first is left out of the cost)")
    p.add_argument("--backend", default="jax", choices=["jax", "tensorflow", "torch"])
    p.add_argument("--cache-dir", type=Path, default=feature_cache.default_cache_dir(),
                   help="feature cache (random-weight features of all 70,000 images are built there if missing)")
    a = p.parse_args(argv)
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, {m['date']}; load average {load_text(m['load_avg_at_start'])} at start")
    if warn := load_warning(m["load_avg_at_start"]):
        print(warn)
    cached = ensure_features(a.cache_dir, 0)
    print("| rows | backend | epoch s | median steady epoch, ms per row | load after |\n|---|---|---|---|---|")
    for n in a.rows:
        spec = {"cache_dir": cached.cache_dir, "key": cached.key, "n_rows": n, "units": 1024, "batch_sizes": [32],
                "epochs": a.epochs}
        r = child("benchmarks.head_speed:sweep", spec, backend=a.backend).result["rows"][0]
        print(f"| {n:,} | {a.backend} | {', '.join(f'{s:.2f}' for s in r['epoch_s'])} | {r['ms_per_row']:.4f} | "
              f"{load_text(loadavg())} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
