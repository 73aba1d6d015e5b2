"""Shared pieces: the machine's matmul limit, FLOP counts, timed child processes, cached features."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import search
from search.errors import MissingExtra, require_modules
from search.features import feature_cache
from search.isolate import run_isolated

N_CLASSES = 10
N_FEATURES = 2048


def require_bench(prog: str, *modules: str) -> None:
    """Exit 2 with one line naming the ``bench`` extra when a module this benchmark needs is missing."""
    try:
        require_modules(prog, "bench", *modules)
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None


# ---------------------------------------------------------------- the machine

def machine() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                      if line.startswith("Model name")), "")
        flags = next((line.split(":", 1)[1].split() for line in out.splitlines()
                      if line.startswith("Flags")), [])
    except OSError:
        flags = []
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "avx512_bf16": "avx512_bf16" in flags,
            "load_avg_at_start": loadavg(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (importing TensorFlow here would cost ~0.5 GB and seconds)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name, dists in (("keras", ["keras"]), ("jax", ["jax"]), ("tensorflow", ["tensorflow", "tensorflow-cpu"]),
                        ("optuna", ["optuna"])):
        out[name] = None
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages: every figure is printed with it (valid only on an idle machine)."""
    return [round(v, 2) for v in os.getloadavg()]


def load_text(load: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


IDLE_LOAD = 0.5  # 1-minute load average above which a machine is not idle enough to measure on


def load_warning(load: list[float], limit: float = IDLE_LOAD) -> str | None:
    """A warning when the 1-minute load average ``load[0]`` says the machine is busy, else None."""
    if load[0] > limit:
        return (f"WARNING: 1-minute load average at start {load[0]:.2f} > {limit}: the machine is not idle, "
                f"these figures are not valid measurements")
    return None


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best float32 GFLOP/s of an n x n x n numpy matrix multiply (the machine's practical limit)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (thread pool, page faults)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def gemm_gflops(m: int, k: int, n: int, min_seconds: float = 0.5) -> float:
    """numpy float32 GFLOP/s of an (m x k) @ (k x n) product, repeated for ``min_seconds``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        a @ b
        reps += 1
    return 2.0 * m * k * n * reps / elapsed / 1e9


def head_train_flops(n_samples: int, units: int, n_features: int = N_FEATURES, n_classes: int = N_CLASSES) -> float:
    """FLOPs of one epoch of head training (2 per multiply-add).

    Forward: both layers.  Backward: weight gradients of both layers, input
    gradient of the second only (the features need no gradient).  So 4 x the
    first layer's MACs plus 6 x the second's; bias, ReLU, dropout, softmax and
    Adam's elementwise update are left out (a few %).
    """
    return 2.0 * (2 * n_features * units + 3 * units * n_classes) * n_samples


# ---------------------------------------------------------------- child processes

@dataclass
class Timed:
    result: Any
    wall_s: float
    peak_memory_mb: float
    events: list[tuple[float, dict]] = field(default_factory=list)  # (seconds since start, event)


def child(target: str, spec: dict[str, Any], backend: str = "tensorflow", env: dict[str, str] | None = None) -> Timed:
    """``run_isolated`` with a chosen Keras backend, timing the whole child and each progress event."""
    events: list[tuple[float, dict]] = []
    start = time.perf_counter()
    out = run_isolated(target, spec, lambda e: events.append((time.perf_counter() - start, e)),
                       env={"KERAS_BACKEND": backend, **(env or {})})
    return Timed(out.result, time.perf_counter() - start, out.peak_memory_mb, events)


# ---------------------------------------------------------------- cached features

@dataclass(frozen=True)
class Cached:
    cache_dir: str
    key: str
    n: int
    extraction: dict | None  # timings if this call built the entry, else None


def extraction_timing(x: dict[str, Any], events: list[tuple[float, dict]]) -> dict[str, Any]:
    """One of ``search.Search.extractions`` with its steady rate, from the progress ``events`` stamped with
    seconds: from the end of the first chunk (model built, graph traced) to the last; with one chunk, the
    whole extraction, start-up included (``steady`` False)."""
    stage = "extracting features" if x["what"] == "features" else "extracting augmented views"
    done = [(t, e) for t, e in events if e.get("stage") == stage and e.get("done")]
    timing = {"wall_s": x["wall_s"], "peak_memory_mb": x["peak_memory_mb"], "n": x["images"],
              "steady": len(done) >= 2, "steady_images": x["images"], "steady_s": x["wall_s"]}
    if timing["steady"]:
        (s0, e0), (s1, e1) = done[0], done[-1]
        timing.update(steady_images=e1["done"] - e0["done"], steady_s=s1 - s0)
    timing["images_per_s"] = timing["steady_images"] / max(timing["steady_s"], 1e-9)
    return timing


def unstored_search(config: Any, cache_dir: Path | str, **kwargs: Any) -> Any:
    """A ``search.Search`` of ``config`` over the feature cache in ``cache_dir`` that stores nothing: it prepares
    the caches and builds trial jobs (``kwargs``: Search's other arguments)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)  # the storage's file is never created
    return search.Search(config, storage=f"sqlite:///{Path(cache_dir) / 'no-study.db'}", cache_dir=Path(cache_dir),
                         **kwargs)


def timed_search(config: Any, cache_dir: Path | str, data_dir: Path | None = None) -> tuple[Any, list]:
    """``unstored_search``, and the list its progress events go to, stamped with seconds."""
    events: list[tuple[float, dict]] = []
    start = time.perf_counter()
    s = unstored_search(config, cache_dir, data_dir=data_dir,
                        on_event=lambda e: events.append((time.perf_counter() - start, e)))
    return s, events


def ensure_features(cache_dir: Path, subset: int, data_dir: Path | None = None) -> Cached:
    """fmnist_reg's own feature cache (random weights) on a stratified Fashion-MNIST slice (0: all 70,000 images),
    extracted by the service (``search.Search.prepare``) unless it is there already; with the extraction's timing."""
    s, events = timed_search(search.load_config("fmnist_reg", weights="random", subset=subset), cache_dir, data_dir)
    s.prepare()
    timing = extraction_timing(s.extractions[0], events) if s.extractions else None
    return Cached(str(cache_dir), s.cache_key, s.load_data().n_images, timing)


def load_verified(cache_dir: Path | str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row (CRC-verified) and the labels of a plain feature-cache entry, in memory."""
    store = feature_cache.FeatureStore(cache_dir, key)
    try:
        return store.take(np.arange(store.n)), store.labels
    finally:
        store.close()
