"""``python -m benchmarks.threads``: thread scaling of the head on JAX (issue 12 part 3, "per-worker thread limits
so --workers 2 does not oversubscribe 2 cores").

Steady epoch time (every epoch but the first) of the production head (``search.head``: 1024 units, batch 32,
Adam) on cached feature rows, each run in a fresh child process on Keras/JAX, pinned with
``os.sched_setaffinity`` before JAX starts (XLA sizes its thread pool from the CPUs the process may use):

- ``1 core``: one process on core 0;
- ``2 cores``: one process on cores 0 and 1;
- ``2 x 1 core``: two processes at once, on core 0 and core 1 (what pinned ``--workers 2`` would do);
- ``2 x unpinned``: two processes at once, each free to use both cores (what ``--workers 2`` does today).

For the concurrent modes, throughput is the sum of both processes' rows per second over their steady epochs,
and ``overlap`` says which share of those steady windows really ran at the same time (below ~0.8 the figure
mixes concurrent and solo epochs).

    python -m benchmarks.threads                              # 56,000 rows x 3 epochs per process (~5 min idle)
    python -m benchmarks.threads --subset 2000 --rows 1600    # a smoke test on a slice
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import load_text, load_warning, loadavg


def epochs(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target.  spec: cache_dir, key, rows, epochs, cores (list of CPU ids, or None: unpinned)."""
    if spec.get("cores") is not None:
        os.sched_setaffinity(0, spec["cores"])  # first: before numpy, Keras and JAX start their threads
    import keras
    import numpy as np
    import psutil

    from search import data, features, head

    xf, y = features.load_verified(spec["cache_dir"], spec["key"])
    rows = min(spec["rows"], len(y))
    idx = np.arange(len(y)) if rows == len(y) else data.split_indices(y, rows / len(y), 0)[0]
    x, yt = np.asarray(xf[idx], np.float32), y[idx]
    del xf
    p = head.HeadParams(units=1024, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3, batch_size=32,
                        epochs=spec["epochs"])
    model = head.build_head(x.shape[1], 10, p, 0)
    marks = [time.time()]  # wall clock: the parent compares two processes' epochs
    head.fit(model, x, yt, p, 0, on_epoch=lambda e, loss: marks.append(time.time()))
    return {"backend": keras.backend.backend(), "cores": sorted(os.sched_getaffinity(0)), "rows": int(len(idx)),
            "marks": marks, "threads": psutil.Process().num_threads()}


# ---------------------------------------------------------------- arithmetic (pure)

def steady(marks: list[float]) -> tuple[float, float, float]:
    """(mean steady epoch seconds, start, end) of the steady epochs (all but the first) from epoch-end marks."""
    if len(marks) < 3:
        raise ValueError("need at least 2 epochs (the first one is not steady)")
    return (marks[-1] - marks[1]) / (len(marks) - 2), marks[1], marks[-1]


def overlap(windows: list[tuple[float, float]]) -> float:
    """Share of the union of the windows during which all of them ran at once (1.0: fully concurrent)."""
    start, end = max(w[0] for w in windows), min(w[1] for w in windows)
    union = max(w[1] for w in windows) - min(w[0] for w in windows)
    return max(0.0, end - start) / union if union > 0 else 1.0


def summarize_mode(name: str, procs: list[dict[str, Any]]) -> dict[str, Any]:
    per = []
    for r in procs:
        s, a, b = steady(r["marks"])
        per.append({"cores": r["cores"], "steady_epoch_s": s, "rows_per_s": r["rows"] / s, "window": (a, b),
                    "threads": r.get("threads")})
    return {"mode": name, "processes": per, "rows_per_s": sum(p["rows_per_s"] for p in per),
            "steady_epoch_s": sum(p["steady_epoch_s"] for p in per) / len(per),
            "overlap": overlap([p["window"] for p in per]) if len(per) > 1 else None}


def table(modes: list[dict[str, Any]]) -> str:
    base = modes[0]["rows_per_s"]
    lines = ["| mode | processes x cores each | threads each | steady epoch s (mean) | rows/s in all | vs 1 core | "
             "overlap | load before |", "|---|---|---|---|---|---|---|---|"]
    for m in modes:
        cores = ", ".join("all" if p["cores"] is None else str(len(p["cores"])) for p in m["processes"])
        ov = "" if m["overlap"] is None else f"{m['overlap']:.0%}"
        threads = ", ".join(str(p.get("threads")) for p in m["processes"])
        lines.append(f"| {m['mode']} | {len(m['processes'])} x {cores} | {threads} | {m['steady_epoch_s']:.2f} | "
                     f"{m['rows_per_s']:,.0f} | {m['rows_per_s'] / base:.2f}x | {ov} | {m['load_avg_before'][0]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import child, ensure_features, machine
    from search.features import default_cache_dir

    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=56000, help="training rows per process (default 56,000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per process, at least 2 (default 3)")
    p.add_argument("--subset", type=int, default=0, help="Fashion-MNIST slice for the cache (default 0: all 70,000)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="feature cache (built if missing)")
    p.add_argument("--out", type=Path, help="write every figure as JSON")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs: at least 2 (the first epoch is not a steady one)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        p.error(f"needs at least 2 CPUs to compare; this process may use {cpus}")
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, {m['date']}; load average {load_text(m['load_avg_at_start'])} at start",
          flush=True)
    if warn := load_warning(m["load_avg_at_start"]):
        print(warn, flush=True)
    cached = ensure_features(a.cache_dir, a.subset)

    def one(cores: list[int] | None) -> dict[str, Any]:
        spec = {"cache_dir": cached.cache_dir, "key": cached.key, "rows": a.rows, "epochs": a.epochs, "cores": cores}
        r = child("benchmarks.threads:epochs", spec, backend="jax").result
        return {**r, "cores": None if cores is None else r["cores"]}

    plan = [("1 core", [[cpus[0]]]), ("2 cores", [cpus[:2]]), ("2 x 1 core", [[cpus[0]], [cpus[1]]]),
            ("2 x unpinned", [None, None])]
    modes = []
    for name, pins in plan:
        before = loadavg()
        with ThreadPoolExecutor(len(pins)) as pool:  # concurrent modes start both children together
            procs = list(pool.map(one, pins))
        mode = {**summarize_mode(name, procs), "load_avg_before": before, "load_avg_after": loadavg()}
        modes.append(mode)
        print(f"  {name}: {mode['rows_per_s']:,.0f} rows/s, steady epoch {mode['steady_epoch_s']:.2f} s"
              + ("" if mode["overlap"] is None else f", overlap {mode['overlap']:.0%}")
              + f" [load {load_text(before)} -> {load_text(mode['load_avg_after'])}]", flush=True)
    print("\n" + table(modes), flush=True)
    if a.out:
        command = f"python -m benchmarks.threads {' '.join(sys.argv[1:] if argv is None else argv)}"
        a.out.write_text(json.dumps({"machine": m, "command": command,
                                     "modes": modes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
