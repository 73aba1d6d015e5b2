"""``python -m benchmarks.bf16``: the fmnist_reg head trained in float32 vs Keras mixed precision
``mixed_bfloat16``, on JAX, over 3 seeds (issue 12 part 3: "bfloat16 matmuls where the CPU has them, kept only if
accuracy holds within 0.005 over 3 seeds").

Each (seed, policy) trains in a fresh child process on Keras/JAX (the trials' backend): the production head
(``search.head.build_head``, 1024 units, dropout 0.5, Adam 1e-3, batch 32) under the global dtype policy, on
the cached random-weight features of Fashion-MNIST, split 0.8 by the seed (split, initialization and
shuffling change with the seed, as in ``search.confirm``); both policies of a seed share them, and run back to
back so that a change of machine load hits both.  Reported per run: steady epoch time (every epoch but the
first) and test accuracy; overall: the mean of each, the speed-up, and whether accuracy holds (mean bfloat16
accuracy at most 0.005 below mean float32).

    python -m benchmarks.bf16                                    # 3 seeds x 2 policies x 5 epochs, 56,000 rows
    python -m benchmarks.bf16 --subset 2000 --rows 1000 --epochs 2 --seeds 1   # a smoke test on a slice
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load_text, load_warning, loadavg

POLICIES = ("float32", "mixed_bfloat16")
TOLERANCE = 0.005


def train(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target.  spec: cache_dir, key, policy, seed, epochs, split_ratio, rows (0: the whole training part)."""
    import keras
    import numpy as np

    from search import data, features, head, metrics

    keras.config.set_dtype_policy(spec["policy"])  # before the head is built: every layer takes the policy
    seed = spec["seed"]
    xf, y = features.load_verified(spec["cache_dir"], spec["key"])
    tr, te = data.split_indices(y, spec["split_ratio"], seed)
    if spec.get("rows") and spec["rows"] < len(tr):  # a stratified slice of the training part (smoke tests)
        tr = tr[data.split_indices(y[tr], spec["rows"] / len(tr), seed)[0]]
    x_tr, x_te = np.asarray(xf[tr], np.float32), np.asarray(xf[te], np.float32)
    del xf
    p = head.HeadParams(units=1024, dropout=0.5, l1=0.0, l2=0.0, learning_rate=1e-3, batch_size=32,
                        epochs=spec["epochs"])
    model = head.build_head(x_tr.shape[1], 10, p, seed)
    marks = [time.perf_counter()]
    report(stage="training", policy=spec["policy"], seed=seed)
    head.fit(model, x_tr, y[tr], p, seed, on_epoch=lambda e, loss: marks.append(time.perf_counter()))
    proba, _ = head.predict(model, x_te)
    return {"backend": keras.backend.backend(), "policy": model.dtype_policy.name,
            "compute_dtype": model.layers[0].compute_dtype, "seed": seed, "n_train": int(len(tr)),
            "n_test": int(len(te)), "epoch_s": [b - a for a, b in zip(marks, marks[1:])],
            "accuracy": metrics.evaluate(y[te], proba, 10)["accuracy"]}


# ---------------------------------------------------------------- arithmetic (pure)

def summarize(runs: list[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Per policy: mean steady epoch and mean accuracy; the speed-up and whether accuracy holds."""
    out: dict[str, Any] = {"tolerance": tolerance, "policies": {}}
    for policy in POLICIES:
        rs = [r for r in runs if r["policy"] == policy]
        if not rs:
            continue
        steady = [sum(r["epoch_s"][1:]) / (len(r["epoch_s"]) - 1) if len(r["epoch_s"]) > 1 else r["epoch_s"][0]
                  for r in rs]
        out["policies"][policy] = {"seeds": [r["seed"] for r in rs], "steady_epoch_s": steady,
                                   "mean_steady_epoch_s": sum(steady) / len(steady),
                                   "accuracy": [r["accuracy"] for r in rs],
                                   "mean_accuracy": sum(r["accuracy"] for r in rs) / len(rs)}
    f, b = out["policies"].get("float32"), out["policies"].get("mixed_bfloat16")
    if f and b:
        out["speedup"] = f["mean_steady_epoch_s"] / b["mean_steady_epoch_s"]
        out["accuracy_diff"] = b["mean_accuracy"] - f["mean_accuracy"]
        out["accuracy_holds"] = out["accuracy_diff"] >= -tolerance
    return out


def table(runs: list[dict[str, Any]], s: dict[str, Any]) -> str:
    lines = ["| policy | seed | training rows | first epoch s | steady epoch s | test accuracy | load before |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (POLICIES.index(r["policy"]), r["seed"])):
        steady = sum(r["epoch_s"][1:]) / max(1, len(r["epoch_s"]) - 1)
        lines.append(f"| {r['policy']} | {r['seed']} | {r['n_train']:,} | {r['epoch_s'][0]:.2f} | "
                     f"{steady:.2f} | {r['accuracy']:.4f} | {r['load_avg_before'][0]:.2f} |")
    for policy, p in s["policies"].items():
        lines.append(f"| **{policy}, mean** | | | | {p['mean_steady_epoch_s']:.2f} | {p['mean_accuracy']:.4f} | |")
    text = "\n".join(lines)
    if "speedup" in s:
        text += (f"\n\nmixed_bfloat16 vs float32: steady epoch {s['speedup']:.2f}x "
                 f"({'faster' if s['speedup'] > 1 else 'slower'}), mean accuracy {s['accuracy_diff']:+.4f}: "
                 f"accuracy {'holds' if s['accuracy_holds'] else 'does NOT hold'} within {s['tolerance']}")
    return text


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import child, ensure_features, machine
    from search.features import default_cache_dir

    p = argparse.ArgumentParser(prog="python -m benchmarks.bf16", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per run, at least 2 (default 5)")
    p.add_argument("--rows", type=int, default=0, help="training rows (a stratified slice; default 0: all, 56,000)")
    p.add_argument("--subset", type=int, default=0, help="Fashion-MNIST slice for the cache (default 0: all 70,000)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="feature cache (built if missing)")
    p.add_argument("--out", type=Path, help="write every figure as JSON")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs: at least 2 (the first epoch is not a steady one)")
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, avx512_bf16: {m['avx512_bf16']}, {m['date']}; "
          f"load average {load_text(m['load_avg_at_start'])} at start", flush=True)
    if warn := load_warning(m["load_avg_at_start"]):
        print(warn, flush=True)
    cached = ensure_features(a.cache_dir, a.subset)
    runs = []
    for seed in range(a.seeds):
        for policy in POLICIES:
            before = loadavg()
            spec = {"cache_dir": cached.cache_dir, "key": cached.key, "policy": policy, "seed": seed,
                    "epochs": a.epochs, "split_ratio": 0.8, "rows": a.rows}
            t = child("benchmarks.bf16:train", spec, backend="jax")
            r = {**t.result, "wall_s": t.wall_s, "peak_memory_mb": t.peak_memory_mb, "load_avg_before": before,
                 "load_avg_after": loadavg()}
            runs.append(r)
            print(f"  seed {seed} {policy:15s} epochs {', '.join(f'{x:.2f}' for x in r['epoch_s'])} s, "
                  f"accuracy {r['accuracy']:.4f} [load {load_text(before)} -> {load_text(r['load_avg_after'])}]",
                  flush=True)
    s = summarize(runs)
    print("\n" + table(runs, s), flush=True)
    if a.out:
        command = f"python -m benchmarks.bf16 {' '.join(sys.argv[1:] if argv is None else argv)}"
        a.out.write_text(json.dumps({"machine": m, "command": command,
                                     "runs": runs, "summary": s, "load_avg_at_end": loadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
