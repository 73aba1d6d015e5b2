"""``python -m benchmarks.run [--quick]``: the machine's limit, extraction, cache vs loop and head sweeps.

Writes the raw figures as JSON and a Markdown table (printed, and written next to the JSON).  ``--quick`` uses
slices of Fashion-MNIST for everything but the cache-vs-loop comparison, which is measured at scale in both
plans (it prints the share of the timed part that is first-epoch tracing, which must stay under 10%) and needs
the features of all 70,000 images (built once in ``--cache-dir``, ~100 s on an idle machine).  The full run
extracts all 70,000 images itself.  Trials are measured by ``benchmarks.trial`` (one, broken down) and
``benchmarks.study`` (the 30-trial study, end to end).  Backbone weights are random: same FLOPs as ImageNet's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import cache_vs_full
from benchmarks.common import (child, ensure_features, gemm_gflops, load_text, load_warning, loadavg, machine,
                               matmul_gflops)
from benchmarks.report import markdown, targets

BATCHES = [32, 64, 128, 256, 512, 1024]

# "rates": the cache-vs-loop comparison at scale (issue 12 part 1).  Sizes keep the first epoch's tracing under
# 10% of the timed part on 2 idle cores (12.7% at 42,000 x 3 on an idle machine, 2026-11-29); the run prints the
# fraction it actually saw.
PLANS: dict[str, dict[str, Any]] = {
    "quick": {"extraction_subset": 2000, "sweep_rows": 8192,
              "rates": {"subset": 0, "cached_rows": 56000, "cached_epochs": 4, "loop_images": 6000, "loop_epochs": 4}},
    "full": {"extraction_subset": 0, "sweep_rows": 42000,
             "rates": {"subset": 0, "cached_rows": 56000, "cached_epochs": 4, "loop_images": 8000, "loop_epochs": 4}},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sweep(cached, rows: int, backend: str) -> dict[str, Any]:
    spec = {"cache_dir": cached.cache_dir, "key": cached.key, "n_rows": rows, "units": 1024,
            "batch_sizes": BATCHES, "epochs": 2}
    t = child("benchmarks.head_speed:sweep", spec, backend=backend)
    log(f"  head sweep {backend}: " + ", ".join(f"b{r['batch_size']} {r['gflops']:.0f} GF/s" for r in t.result["rows"])
        + f" [load {load_text(loadavg())}]")
    return {"name": backend, **t.result, "wall_s": t.wall_s, "peak_memory_mb": t.peak_memory_mb}


def _extraction(cache_dir: Path, subset: int) -> tuple[Any, dict[str, Any]]:
    """The features of ``subset`` images extracted into an empty ``cache_dir``, and the extraction's timing."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    cached = ensure_features(cache_dir, subset)
    t = cached.extraction
    return cached, {"n_images": cached.n, "wall_s": t["wall_s"], "images_per_s": t["images_per_s"],
                    "steady": t["steady"], "peak_memory_mb": t["peak_memory_mb"], "key": cached.key}


def run(plan_name: str, workdir: Path, full_cache_dir: Path) -> dict[str, Any]:
    plan = PLANS[plan_name]
    workdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"plan": plan_name, "plan_settings": plan, "machine": machine(),
                           "weights": "random (same FLOPs as imagenet; imagenet cannot be downloaded here)"}
    start = time.perf_counter()
    log(f"load average {load_text(res['machine']['load_avg_at_start'])} at start")
    if warn := load_warning(res["machine"]["load_avg_at_start"]):
        log(warn)
    res["limit"] = {"matmul_4096_gflops_start": matmul_gflops(4096),
                    "gemm_head_shape_gflops": {b: gemm_gflops(b, 2048, 1024) for b in (32, 256)}}

    log("feature extraction (one-time cost) from an empty cache")
    main_cached, res["extraction"] = _extraction(workdir / "cache", plan["extraction_subset"])
    log(f"  {res['extraction']['n_images']} images in {res['extraction']['wall_s']:.1f} s")

    rp = plan["rates"]  # at scale: all of Fashion-MNIST's features, built once in full_cache_dir if missing
    full_cached = (main_cached if rp["subset"] == plan["extraction_subset"]
                   else ensure_features(full_cache_dir, rp["subset"]))
    log(f"cache vs backbone in the loop, at scale: {rp['cached_rows']:,} cached rows x {rp['cached_epochs']} epochs "
        f"(jax), {rp['loop_images']:,} images x {rp['loop_epochs']} epochs in the loop (tensorflow)")
    res["cache_vs_full"] = rates = cache_vs_full.measure_rates(
        full_cached.cache_dir, full_cached.key, rp["cached_rows"], rp["cached_epochs"], rp["loop_images"],
        rp["loop_epochs"])
    log("  " + cache_vs_full.rates_line(rates) + f" [load {load_text(loadavg())}]")

    log("head training sweeps")
    res["limit"]["matmul_4096_gflops_before_sweeps"] = matmul_gflops(4096)
    res["head_sweeps"] = [_sweep(main_cached, plan["sweep_rows"], b) for b in ("tensorflow", "jax")]
    res["limit"]["matmul_4096_gflops_end"] = matmul_gflops(4096)
    lim = res["limit"]["matmul_gflops"] = max(v for k, v in res["limit"].items() if k.startswith("matmul_4096"))
    flops, fwd = rates["loop"]["resnet50_flops_per_image"], rates["loop"]["forward_images_per_s"]
    e = res["extraction"]
    e.update(flops_per_image=flops, forward_images_per_s=fwd, forward_gflops=fwd * flops / 1e9,
             gflops=e["images_per_s"] * flops / 1e9, share_of_matmul=e["images_per_s"] * flops / 1e9 / lim)
    res["machine"]["load_avg_at_end"] = loadavg()
    res["wall_s"] = time.perf_counter() - start
    res["targets"] = targets(res)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="slices and fewer trials: a few minutes on 2 cores")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/out/{quick,full}.json)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: beside --out)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache holding (or receiving, once) the random-weight features of all of "
                        "Fashion-MNIST for the quick run's comparison at scale (default: the service's cache)")
    a = p.parse_args(argv)
    plan = "quick" if a.quick else "full"
    out = a.out or Path("benchmarks/out") / f"{plan}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = a.workdir or out.parent / f"work-{plan}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from search.features.feature_cache import default_cache_dir

    res = run(plan, workdir, a.cache_dir or default_cache_dir())
    res["command"] = "python -m benchmarks.run" + (" --quick" if a.quick else "") + (f" --out {a.out}" if a.out else "")
    out.write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"wrote {out} and {out.with_suffix('.md')} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
