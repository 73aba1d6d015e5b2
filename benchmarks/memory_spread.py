"""Which memory measure should fmnist_reg minimize?  The spread of each over repeated identical trials.

``python -m benchmarks.memory_spread [--repeats 5] [--epochs 2] [--subset 0]`` runs the same fmnist_reg trial
(same parameters, same seed) several times through the production path (search.trial.child.run_trial, each in a
fresh process, as a study runs it) and prints mean, standard deviation and range of ``peak_memory_mb`` (the
process's high-water mark) and ``trial_memory_mb`` (the peak above the process's baseline once Keras and its
backend are loaded).  Identical trials should use identical memory: whatever spread a measure shows is noise
that would put trials on the Pareto front at random.  Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from search import config as cfg
from search.config.choices import DATASETS
from search.data import datasets
from search.features import backbones, feature_cache
from search.isolate import run_isolated
from search.runtime import extraction_backend, runtime_identity
from search.study import objective as obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_spread", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=0, help="images of Fashion-MNIST (0: all 70,000)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--backend", default="jax")
    a = p.parse_args(argv)

    config = cfg.load_config("fmnist_reg").with_weights("random")
    cache_dir = a.cache_dir or Path(tempfile.mkdtemp(prefix="memspread-"))
    pooled = datasets.load_pooled("fashion_mnist", None, a.subset)
    weights = backbones.resolve_weights("random")
    runtime = runtime_identity(a.backend)
    key = feature_cache.cache_key("fashion_mnist", a.subset, "unit", "bilinear", weights, pooled.fingerprint(), runtime)

    def build(tmp: Path) -> None:
        run_isolated("search.features.feature_cache:extract_job", {
            "dataset": "fashion_mnist", "data_dir": None, "subset": a.subset, "subset_seed": 0,
            "preprocessing": "unit", "resize": "bilinear", "weights": vars(weights), "out_dir": str(tmp)},
            env={"KERAS_BACKEND": extraction_backend()})

    feature_cache.ensure_cached(cache_dir, key, build)
    ctx = obj.Context(config=config, cache_dir=cache_dir, cache_key=key, n_classes=10, target=0,
                      class_names=DATASETS["fashion_mnist"].class_names)
    params = obj.resolve_params(config, {"split_ratio": 0.8, "epochs": a.epochs, "l1": 0.0, "l2": 1e-4,
                                         "dropout": 0.5})
    peaks, trial_mem = [], []
    for i in range(a.repeats):
        out = run_isolated(obj.TRIAL_TARGET, obj.trial_spec(ctx, params).as_dict(), env={"KERAS_BACKEND": a.backend})
        peaks.append(out.peak_memory_mb)
        trial_mem.append(out.trial_memory_mb)
        print(f"repeat {i + 1}: peak_memory_mb {out.peak_memory_mb:.1f}, trial_memory_mb {out.trial_memory_mb:.1f}, "
              f"baseline {out.baseline_memory_mb:.1f}; load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print(f"| measure | mean (MB) | std (MB) | range (MB) | repeats |\n|---|---|---|---|---|")
    for name, vals in (("peak_memory_mb", peaks), ("trial_memory_mb", trial_mem)):
        print(f"| {name} | {statistics.fmean(vals):.1f} | {statistics.stdev(vals):.1f} | "
              f"{min(vals):.1f}-{max(vals):.1f} | {len(vals)} |")
    print(f"\nfmnist_reg trial, {a.epochs} epochs, split 0.8, Keras/{a.backend}, random weights, "
          f"subset {a.subset or 'all'}; load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
