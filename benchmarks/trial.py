"""A ``fmnist_reg``-shaped trial through the production path (search.trial.run_trial in a child process),
per Keras backend and per feature storage dtype, and the cost of compact (float16) feature storage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import child
from search import data, features


def fmnist_reg_spec(cache_dir: str, key: str, epochs: int, split_ratio: float = 0.8, batch_size: int = 32,
                    seed: int = 0) -> dict[str, Any]:
    """study_configs/fmnist_reg.toml's fixed settings (1024 units, Adam 1e-3, batch 32) with one trial's choices."""
    params = {"split_ratio": split_ratio, "epochs": epochs, "batch_size": batch_size, "learning_rate": 1e-3,
              "dropout": 0.5, "l1": 0.0, "l2": 1e-4, "units": 1024, "balance": "balanced"}
    return {"cache_dir": cache_dir, "key": key, "n_classes": 10, "params": params, "seed": seed,
            "reduce_classes": [0, 1, 2], "reduce_fraction": 0.1}


def run(spec: dict[str, Any], backend: str = "tensorflow", env: dict[str, str] | None = None) -> dict[str, Any]:
    t = child("search.trial:run_trial", spec, backend=backend, env=env)
    epoch_marks = [s for s, e in t.events if e.get("stage") == "training"]  # epoch 0 (start), 1, 2, ...
    epochs = list(np.diff(epoch_marks))
    steady = float(np.mean(epochs[1:])) if len(epochs) > 1 else epochs[0]
    r = t.result
    non_training = t.wall_s - r["train_time_s"]
    return {"backend": backend, "epochs": len(epochs), "n_train": r["n_train"], "wall_s": t.wall_s,
            "train_time_s": r["train_time_s"], "test_time_s": r["test_time_s"], "epoch_s": epochs,
            "first_epoch_s": epochs[0], "steady_epoch_s": steady, "non_training_s": non_training,
            "peak_memory_mb": t.peak_memory_mb, "accuracy": r["accuracy"], "roc_auc": r["roc_auc"]}


def extrapolate(r: dict[str, Any], epochs: int, train_share: float = 1.0) -> float:
    """Seconds of a trial of ``epochs`` epochs on ``train_share`` x this trial's training rows."""
    return r["non_training_s"] + (r["first_epoch_s"] + (epochs - 1) * r["steady_epoch_s"]) * train_share


def float16_copy(src_dir: str, key: str, dst_dir: Path) -> dict[str, Any]:
    """The same cache entry with float16 features in ``dst_dir`` (trial.py reads it unchanged: it casts rows)."""
    def build(tmp: Path) -> None:
        x, y = features.load_cached(src_dir, key)
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16, shape=x.shape)
        for s in range(0, len(x), 8192):
            out[s:s + 8192] = x[s:s + 8192]
        out.flush()
        del out
        np.save(tmp / "labels.npy", y)

    features.ensure_cached(dst_dir, key, build)
    x32, _ = features.load_cached(src_dir, key)
    x16, y = features.load_cached(dst_dir, key)
    finite = bool(np.isfinite(x16).all())
    rel = float(np.abs(x16[:2000].astype(np.float32) - x32[:2000]).max() / (np.abs(x32[:2000]).max() or 1))
    tr, _ = data.split_indices(y, 0.8, 0)
    load = {}
    for name, x in (("float32", x32), ("float16", x16)):
        np.asarray(x[tr], np.float32)  # warm the page cache: compare memory, not disk
        t = time.perf_counter()
        np.asarray(x[tr], np.float32)
        load[name] = time.perf_counter() - t
    size = {n: (Path(d) / key / "features.npy").stat().st_size / 2**20 for n, d in (("float32", src_dir),
                                                                                     ("float16", dst_dir))}
    return {"size_mb": size, "train_rows_load_s": load, "all_finite": finite, "max_rel_error": rel,
            "meta": json.loads((dst_dir / key / "meta.json").read_text())["shape"]}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.trial [--epochs 2] [--split 0.8] BACKEND...``: one fmnist_reg trial per backend."""
    import argparse

    from benchmarks.common import ensure_features

    p = argparse.ArgumentParser(prog="python -m benchmarks.trial", description=main.__doc__)
    p.add_argument("backends", nargs="+", choices=["tensorflow", "jax", "torch"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--split", type=float, default=0.8)
    p.add_argument("--cache-dir", type=Path, default=features.default_cache_dir(),
                   help="feature cache (random-weight features of all of Fashion-MNIST are built if missing)")
    a = p.parse_args(argv)
    cached = ensure_features(a.cache_dir, 0)
    for backend in a.backends:
        r = run(fmnist_reg_spec(cached.cache_dir, cached.key, a.epochs, a.split), backend)
        print(json.dumps({k: r[k] for k in ("backend", "n_train", "epochs", "wall_s", "first_epoch_s",
                                            "steady_epoch_s", "peak_memory_mb", "accuracy")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
