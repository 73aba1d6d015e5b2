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

import search
from benchmarks.common import unstored_search


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_spread", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=0, help="images of Fashion-MNIST (0: all 70,000)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--backend", default="jax")
    a = p.parse_args(argv)

    cache_dir = a.cache_dir or Path(tempfile.mkdtemp(prefix="memspread-"))
    s = unstored_search(search.load_config("fmnist_reg", weights="random", subset=a.subset), cache_dir,
                        backend=a.backend)
    spec = s.trial_spec({"split_ratio": 0.8, "epochs": a.epochs, "l1": 0.0, "l2": 1e-4, "dropout": 0.5})
    peaks, trial_mem = [], []
    for i in range(a.repeats):
        m = search.run_trial(spec, backend=a.backend)
        peaks.append(m["peak_memory_mb"])
        trial_mem.append(m["trial_memory_mb"])
        print(f"repeat {i + 1}: peak_memory_mb {m['peak_memory_mb']:.1f}, trial_memory_mb {m['trial_memory_mb']:.1f}"
              f"; load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print("| measure | mean (MB) | std (MB) | range (MB) | repeats |\n|---|---|---|---|---|")
    for name, vals in (("peak_memory_mb", peaks), ("trial_memory_mb", trial_mem)):
        print(f"| {name} | {statistics.fmean(vals):.1f} | {statistics.stdev(vals):.1f} | "
              f"{min(vals):.1f}-{max(vals):.1f} | {len(vals)} |")
    print(f"\nfmnist_reg trial, {a.epochs} epochs, split 0.8, Keras/{a.backend}, random weights, "
          f"subset {a.subset or 'all'}; load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
