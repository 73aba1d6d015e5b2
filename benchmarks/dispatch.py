"""``python -m benchmarks.dispatch``: the fmnist_reg head trained with one step per call of Keras' compiled train
function vs ``search.runtime.STEPS_PER_CALL`` steps per call (Keras' ``steps_per_execution``), on Keras/JAX.

Both arms train the production head (1024 units, dropout 0.5, Adam 1e-3, batch 32) through ``search.head.fit``
with the same seed on the same rows (the cached random-weight features of Fashion-MNIST, split 0.8: 56,000
training rows), each in a fresh child process; the arms alternate, round after round, so that a change of
machine load hits both.  Reported per run: every epoch's time, the whole fit, the final loss; overall: the
median steady epoch of each arm (every epoch but the first, all rounds), the speed-up, and whether both arms
trained the same head (equal losses and test accuracy: the same steps in the same order).

    python -m benchmarks.dispatch                                   # 3 rounds x 2 arms x 5 epochs, 56,000 rows
    python -m benchmarks.dispatch --subset 2000 --epochs 2 --rounds 1   # a smoke test on a slice
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load_text, load_warning, loadavg


def train(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target.  spec: cache_dir, key, steps_per_call, seed, epochs, split_ratio."""
    import keras
    import numpy as np

    from search import data, features, head, metrics, runtime

    runtime.STEPS_PER_CALL = spec["steps_per_call"]  # this child's arm; fit compiles with it
    seed = spec["seed"]
    xf, y = features.load_verified(spec["cache_dir"], spec["key"])
    tr, te = data.split_indices(y, spec["split_ratio"], seed)
    x_tr, x_te = np.asarray(xf[tr], np.float32), np.asarray(xf[te], np.float32)
    del xf
    p = head.HeadParams(units=1024, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3, batch_size=32,
                        epochs=spec["epochs"])
    model = head.build_head(x_tr.shape[1], 10, p, seed)
    report(stage="training", steps_per_call=spec["steps_per_call"])
    start = time.perf_counter()
    fit = head.fit(model, x_tr, y[tr], p, seed)
    fit_s = time.perf_counter() - start
    proba, _ = head.predict(model, x_te)
    return {"backend": keras.backend.backend(), "steps_per_call": model.steps_per_execution, "seed": seed,
            "n_train": int(len(tr)), "epoch_s": fit.history["epoch_time_s"], "fit_s": fit_s,
            "train_time_s": fit.train_time_s, "compile_time_s": fit.compile_time_s, "loss": fit.history["loss"],
            "accuracy": metrics.evaluate(y[te], proba, 10)["accuracy"]}


# ---------------------------------------------------------------- arithmetic (pure)

def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: median steady epoch (epochs 2.., all rounds) and mean fit; the speed-up; whether heads agree."""
    arms: dict[int, dict[str, Any]] = {}
    for n in sorted({r["steps_per_call"] for r in runs}):
        rs = [r for r in runs if r["steps_per_call"] == n]
        steady = [e for r in rs for e in r["epoch_s"][1:]]
        arms[n] = {"runs": len(rs), "median_steady_epoch_s": statistics.median(steady),
                   "min_steady_epoch_s": min(steady), "mean_fit_s": statistics.fmean(r["fit_s"] for r in rs),
                   "mean_compile_s": statistics.fmean(r["compile_time_s"] for r in rs)}
    out: dict[str, Any] = {"arms": arms}
    if len(arms) == 2:
        one, many = (arms[n] for n in sorted(arms))
        out["speedup"] = one["median_steady_epoch_s"] / many["median_steady_epoch_s"]
        out["fit_speedup"] = one["mean_fit_s"] / many["mean_fit_s"]
        by_seed: dict[int, set[tuple]] = {}
        for r in runs:
            by_seed.setdefault(r["seed"], set()).add((tuple(r["loss"]), r["accuracy"]))
        out["same_head"] = all(len(v) == 1 for v in by_seed.values())
    return out


def table(runs: list[dict[str, Any]], s: dict[str, Any]) -> str:
    lines = ["| steps per call | round | epochs (s) | fit s | final loss | test accuracy | load before |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['steps_per_call']} | {r['round']} | {', '.join(f'{e:.2f}' for e in r['epoch_s'])} | "
                     f"{r['fit_s']:.1f} | {r['loss'][-1]:.6f} | {r['accuracy']:.4f} | "
                     f"{load_text(r['load_avg_before'])} |")
    for n, a in s["arms"].items():
        lines.append(f"| **{n}, median steady epoch** | | {a['median_steady_epoch_s']:.2f} (min "
                     f"{a['min_steady_epoch_s']:.2f}) | {a['mean_fit_s']:.1f} | | | |")
    text = "\n".join(lines)
    if "speedup" in s:
        text += (f"\n\n{max(s['arms'])} steps per call vs 1: steady epoch {s['speedup']:.3f}x, whole fit "
                 f"{s['fit_speedup']:.3f}x; same head in both arms (equal losses and accuracy): "
                 f"{'yes' if s['same_head'] else 'NO'}")
    return text


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import child, ensure_features, machine
    from search.features import default_cache_dir
    from search.runtime import STEPS_PER_CALL

    p = argparse.ArgumentParser(prog="python -m benchmarks.dispatch", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of both arms, alternating (default 3)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per run, at least 2 (default 5)")
    p.add_argument("--subset", type=int, default=0, help="Fashion-MNIST slice for the cache (default 0: all 70,000)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="feature cache (built if missing)")
    p.add_argument("--out", type=Path, help="write every figure as JSON")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs: at least 2 (the first epoch is not a steady one)")
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, {m['date']}; load average {load_text(m['load_avg_at_start'])} at start",
          flush=True)
    if warn := load_warning(m["load_avg_at_start"]):
        print(warn, flush=True)
    cached = ensure_features(a.cache_dir, a.subset)
    runs = []
    for rnd in range(a.rounds):
        for n in ((1, STEPS_PER_CALL) if rnd % 2 == 0 else (STEPS_PER_CALL, 1)):
            before = loadavg()
            spec = {"cache_dir": cached.cache_dir, "key": cached.key, "steps_per_call": n, "seed": 0,
                    "epochs": a.epochs, "split_ratio": 0.8}
            t = child("benchmarks.dispatch:train", spec, backend="jax")
            r = {**t.result, "round": rnd + 1, "load_avg_before": before, "load_avg_after": loadavg()}
            runs.append(r)
            print(f"  round {rnd + 1}, {n:3d} steps per call: epochs {', '.join(f'{x:.2f}' for x in r['epoch_s'])} s, "
                  f"fit {r['fit_s']:.1f} s, loss {r['loss'][-1]:.6f}, accuracy {r['accuracy']:.4f} "
                  f"[load {load_text(before)} -> {load_text(r['load_avg_after'])}]", flush=True)
    s = summarize(runs)
    print("\n" + table(runs, s), flush=True)
    if a.out:
        command = f"python -m benchmarks.dispatch {' '.join(sys.argv[1:] if argv is None else argv)}"
        a.out.write_text(json.dumps({"machine": m, "command": command, "runs": runs, "summary": s,
                                     "load_avg_at_end": loadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
