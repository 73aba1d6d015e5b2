"""One ``fmnist_reg`` trial through the production path (``search.trial.child.run_trial`` in a fresh child process, as
``search.study.objective`` runs it), with the breakdown of its wall time outside ``fit`` (issue 12 part 3a), per
Keras backend.

``python -m benchmarks.trial [--epochs 3] [--split 0.8] [--out FILE.json] BACKEND...`` prints, per backend, where
the trial's wall time goes: process start, imports, loading features, copying rows, tracing/compile, fit,
evaluation, pictures, result and exit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


import search
from benchmarks.common import child, load_text, load_warning, loadavg, unstored_search
from search.features import feature_cache


def fmnist_reg_spec(cache_dir: str | Path, subset: int, epochs: int, split_ratio: float = 0.8,
                    batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """The job the service runs for one fmnist_reg trial (``search.Search.trial_spec``, random weights, on a
    ``subset`` slice whose features are in ``cache_dir``), with this trial's choices: ``epochs``, ``split_ratio``,
    dropout 0.5, L2 1e-4, no L1; the config's fixed rest."""
    config = search.load_config("fmnist_reg", weights="random", seed=seed, subset=subset)
    # artifact_dir set: the trial draws its pictures, as in a run (the benchmark only times them).
    s = unstored_search(config, cache_dir, artifact_dir=Path(cache_dir))
    chosen = {"split_ratio": split_ratio, "epochs": epochs, "dropout": 0.5, "l1": 0.0, "l2": 1e-4,
              "batch_size": batch_size}
    return s.trial_spec(chosen).as_dict()


# ---------------------------------------------------------------- the breakdown (pure)

def breakdown(t0: float, t_end: float, events: list[dict[str, Any]], stamps: dict[str, Any],
              train_time_s: float) -> dict[str, Any]:
    """Where one trial's wall time went, from the parent's clock (``t0`` before the child starts, ``t_end``
    after it was reaped), the child's stamped progress events and the stamps of ``trial_child.timed_trial``.

    Returns {"parts": [{"part", "s"}...], "wall_s", "fit_s", "outside_fit_s", "epoch_s"}; ``wall_s`` is the
    trial process as in production.
    """
    parts: list[dict[str, Any]] = []

    def add(part: str, s: float) -> None:
        parts.append({"part": part, "s": max(0.0, s)})

    add("process start: fork, exec, interpreter, search.isolate, reading the job", stamps["module"] - t0)
    add("imports: search.trial.child, scikit-learn", stamps["imports_search"] - stamps["module"])
    add("imports: Keras, its backend, first op", stamps["imports_keras"] - stamps["imports_search"])

    timed = [e for e in events if "t" in e]
    ends = [e["t"] for e in timed[1:]] + [stamps["trial_end"]]
    if timed:
        add("(between imports and the first stage)", timed[0]["t"] - stamps["imports_keras"])
    # Training: "training, epoch 0" is reported just before the model is built, then one event per epoch end.
    marks = [e["t"] for e in timed if e.get("stage") == "training"]
    epoch_s = [b - a for a, b in zip(marks, marks[1:])]
    fit_s = marks[-1] - marks[0] if marks else 0.0

    def add_training() -> None:
        if len(epoch_s) >= 2:
            steady = sum(epoch_s[1:]) / (len(epoch_s) - 1)
            add("model build, tracing/compile (first epoch - steady epoch)", epoch_s[0] - steady)
            add(f"fit, steady part ({len(epoch_s)} epochs x {steady:.2f} s)", fit_s - max(0.0, epoch_s[0] - steady))
        elif epoch_s:
            add("fit (1 epoch, tracing included)", fit_s)

    for e, end in zip(timed, ends):
        stage, s = e.get("stage", ""), end - e["t"]
        if stage == "training":
            if e["t"] == marks[0]:
                add_training()
        elif stage == "evaluating":
            add("evaluation (predict, metrics)", s)
        else:
            add(stage, s)
    add("result to the parent, process exit", t_end - stamps["trial_end"])
    wall = sum(p["s"] for p in parts)
    # Outside fit = everything but the training window (model build and tracing are inside it, listed above).
    return {"parts": parts, "wall_s": wall, "fit_s": fit_s, "train_time_s": train_time_s,
            "outside_fit_s": wall - fit_s, "epoch_s": epoch_s}


def breakdown_table(b: dict[str, Any]) -> str:
    total = b["wall_s"]
    lines = ["| part | s | share |", "|---|---|---|"]
    lines += [f"| {p['part']} | {p['s']:.2f} | {p['s'] / total:.1%} |" for p in b["parts"]]
    lines += [f"| **trial process wall** | {b['wall_s']:.2f} | |",
              f"| **fit** (model build, first epoch with tracing, steady epochs) | {b['fit_s']:.2f} | "
              f"{b['fit_s'] / total:.1%} |",
              f"| **outside fit** (everything else, pictures included) | {b['outside_fit_s']:.2f} | "
              f"{b['outside_fit_s'] / total:.1%} |"]
    return "\n".join(lines)


# ---------------------------------------------------------------- one trial

def run(spec: dict[str, Any], backend: str = "jax", env: dict[str, str] | None = None) -> dict[str, Any]:
    """One trial in a fresh child on ``backend``; its figures and the breakdown of its wall time."""
    load_before = loadavg()
    t0 = time.time()
    t = child("benchmarks.trial_child:timed_trial", {"trial": spec}, backend=backend, env=env)
    t_end = time.time()
    r, stamps = t.result["result"], t.result["stamps"]
    b = breakdown(t0, t_end, [e for _, e in t.events], stamps, r["train_time_s"])
    return {"backend": backend, "epochs": len(b["epoch_s"]), "n_train": r["n_train"], "wall_s": b["wall_s"],
            "train_time_s": r["train_time_s"], "peak_memory_mb": t.peak_memory_mb, "accuracy": r["test_accuracy"],
            "breakdown": b, "load_avg_before": load_before, "load_avg_after": loadavg()}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.trial [--epochs 3] [--split 0.8] [--subset 0] [--out FILE.json] BACKEND...``"""
    import argparse
    import sys

    from benchmarks.common import ensure_features, machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.trial", description=__doc__.splitlines()[0])
    p.add_argument("backends", nargs="+", choices=["tensorflow", "jax", "torch"])
    p.add_argument("--epochs", type=int, default=3, help="epochs of the trial (at least 2 to see a steady epoch)")
    p.add_argument("--split", type=float, default=0.8, help="train/test split ratio (0.8: 56,000 training rows)")
    p.add_argument("--subset", type=int, default=0, help="a stratified slice of Fashion-MNIST (0: all 70,000)")
    p.add_argument("--cache-dir", type=Path, default=feature_cache.default_cache_dir(),
                   help="feature cache (random-weight features are built there if missing)")
    p.add_argument("--out", type=Path, help="write every figure as JSON")
    a = p.parse_args(argv)
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, {m['date']}; load average {load_text(m['load_avg_at_start'])} at start",
          flush=True)
    if warn := load_warning(m["load_avg_at_start"]):
        print(warn, flush=True)
    cached = ensure_features(a.cache_dir, a.subset)
    runs = []
    for backend in a.backends:
        r = run(fmnist_reg_spec(cached.cache_dir, a.subset, a.epochs, a.split), backend)
        runs.append(r)
        print(f"\n{backend}: {r['n_train']:,} training rows, {r['epochs']} epochs, peak {r['peak_memory_mb']:.0f} MB, "
              f"accuracy {r['accuracy']:.4f}; load average {load_text(r['load_avg_before'])} before, "
              f"{load_text(r['load_avg_after'])} after\n", flush=True)
        print(breakdown_table(r["breakdown"]), flush=True)
    if a.out:
        command = f"python -m benchmarks.trial {' '.join(sys.argv[1:] if argv is None else argv)}"
        a.out.write_text(json.dumps({"machine": m, "command": command,
                                     "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
