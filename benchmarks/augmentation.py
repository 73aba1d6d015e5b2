"""``python -m benchmarks.augmentation``: does training on cached augmented views match online augmentation?

Runs the service's own trials (search.trial.child.run_trial, each in its own process,
as search.run runs them) under fmnist_balance's balanced arm (the paper's
Table 5: rotation 20 degrees, shifts 0.2, horizontal flip, batch 32, Dense
1024 without dropout; held-out test split) on a stratified Fashion-MNIST
slice, for every seed:

- ``views`` with V = 1, 4, 8 cached augmented views per image (one view drawn per row and epoch),
- ``online``: the frozen backbone in the loop, augmentation per batch (the paper's way),
- ``none``: no augmentation (the reference: does augmentation matter here at all?).

Reports test accuracy per arm (mean, 95% t-interval over the seeds), the
difference to ``online`` paired by seed (same split), trial time and peak
memory; and what the view caches cost to extract (V passes of the backbone
over the slice) next to the plain cache.  Prints a Markdown table for
docs/guide.md, headed by the command that produced it.  Backbone weights default to
``random`` (ImageNet's cannot be downloaded here): the comparison is of the
augmentation pipelines, not of ImageNet transfer.

    python -m benchmarks.augmentation                       # 5,000 images, 3 seeds, 5 epochs, V = 1, 4, 8
    python -m benchmarks.augmentation --subset 300 --seeds 1 --views 1,2 --epochs 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import search
from benchmarks.common import extraction_timing, load_text, loadavg, machine, timed_search
from search.config import SEARCHABLE, StudyConfig, load_config
from search.study.repeats import summarize

BASE_STUDY = "fmnist_balance"   # its balanced arm is the paper's augmented setting (Table 5)
BASE_ARM = "balanced"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.augmentation", description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=5000, help="stratified Fashion-MNIST slice (default 5000)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1: split, view draws, initialisation (default 3)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5, the paper's Table 5)")
    p.add_argument("--views", default="1,4,8", help="comma-separated view counts V (default 1,4,8)")
    p.add_argument("--no-online", action="store_true", help="skip the online arm (the slow one)")
    p.add_argument("--weights", default="random", help="backbone weights: random (default), imagenet or a file")
    p.add_argument("--data-dir", type=Path, help="directory holding the Fashion-MNIST files")
    p.add_argument("--cache-dir", type=Path,
                   help="feature cache directory (default: a fresh temporary one, removed at the end); an existing "
                        "entry is reused and its extraction is then not measured")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    a = p.parse_args(argv)
    a.view_counts = sorted({int(v) for v in a.views.split(",") if v.strip()})
    if not a.view_counts or min(a.view_counts) < 1:
        p.error("--views: give one or more positive integers")
    if a.seeds < 1 or a.epochs < 1 or a.subset < 100:
        p.error("--seeds and --epochs must be >= 1, --subset >= 100")
    return a


def arm_config(base: StudyConfig, mode: str, views: int, epochs: int, subset: int, weights: str) -> StudyConfig:
    """The base study's balanced arm as a plain config with one augmentation mode and V."""
    d = base.as_json()
    arm = d.pop("arms")[BASE_ARM]
    d["search_space"] = {}
    for name, value in arm.items():  # the arm's fixed values become the config's
        section, field = SEARCHABLE[name]
        d[section][field] = value
    d["dataset"]["subset"] = subset
    d["backbone"]["weights"] = weights
    d["augmentation"].update(mode=mode, views=views)
    d["training"]["epochs"] = epochs
    d["sampler"] = {"name": "random", "seed": 0}
    d["run"] = {**d["run"], "n_trials": 1}
    return StudyConfig.model_validate(d)


def run(a: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    start_load = loadavg()
    base = load_config(BASE_STUDY)
    arms = [("none", arm_config(base, "none", 1, a.epochs, a.subset, a.weights))]
    arms += [(f"views V={v}", arm_config(base, "views", v, a.epochs, a.subset, a.weights)) for v in a.view_counts]
    if not a.no_online:
        arms.append(("online", arm_config(base, "online", 1, a.epochs, a.subset, a.weights)))
    extraction: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for seed in range(a.seeds):
        for name, cfg in arms:
            s, events = timed_search(cfg.with_seed(seed), cache_dir, a.data_dir)
            log(f"seed {seed} {name}: {s.load_data().n_images} images")
            s.prepare()  # the service's extractions, each once: the plain cache, then this arm's views
            for x in s.extractions:
                t = extraction_timing(x, events)
                t["size_mb"] = (cache_dir / x["entry"] / "features.npy").stat().st_size / 2**20
                extraction["plain" if x["what"] == "features" else name] = t
            extraction.setdefault("plain", None)  # None: cached before this run, its extraction not measured
            if cfg.augmentation.mode == "views":
                extraction.setdefault(name, None)
            start = time.perf_counter()
            r = search.run_trial(s.trial_spec())
            runs.append({"arm": name, "seed": seed, "wall_s": time.perf_counter() - start,
                         **{k: r[k] for k in ("test_accuracy", "test_roc_auc", "train_time_s", "peak_memory_mb",
                                              "keras_backend", "n_train", "n_test")}})
            log(f"seed {seed} {name}: test accuracy {r['test_accuracy']:.4f}, train {r['train_time_s']:.1f} s "
                f"({r['keras_backend']}), peak {r['peak_memory_mb']:.0f} MB")
    return {"settings": {"subset": a.subset, "n_images": s.load_data().n_images, "seeds": a.seeds,
                         "epochs": a.epochs, "views": a.view_counts, "weights": s.resolved_weights.identity,
                         "base": f"{BASE_STUDY}:{BASE_ARM}"},
            "machine": {**machine(), "load_avg_at_start": start_load, "load_avg_at_end": loadavg()}, "extraction": extraction, "runs": runs}


def _fmt_ci(s: dict[str, Any], digits: int = 3) -> str:
    if s["ci95"] is None:
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    lo, hi = s["ci95"] if s["std"] > 0 else (s["mean"], s["mean"])  # scipy gives NaN for a zero spread
    return f"{s['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(res: dict[str, Any], command: str) -> str:
    st, runs = res["settings"], res["runs"]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    by = {arm: {r["seed"]: r for r in runs if r["arm"] == arm} for arm in arms}
    online = by.get("online", {})
    lines = [f"`{command}`", "",
             f"{st['n_images']:,} Fashion-MNIST images ({st['base']} settings: rotation 20, shifts 0.2, flip; "
             f"split 0.8, batch 32, {st['epochs']} epochs), weights {st['weights']}, seeds 0-{st['seeds'] - 1}; "
             f"{res['machine']['cores']} cores ({res['machine']['cpu']}), {res['machine']['date']}; "
             f"load average {load_text(res['machine'].get('load_avg_at_start', []))} at start, "
             f"{load_text(res['machine'].get('load_avg_at_end', []))} at end. "
             f"Mean [95% t-interval over seeds]; differences paired by seed (same split).", "",
             "| arm | test accuracy | minus online | test ROC AUC | train time (s) | peak memory (MB) |",
             "|---|---|---|---|---|---|"]
    for arm in arms:
        rs = by[arm]
        acc = summarize({s: r["test_accuracy"] for s, r in rs.items()})
        auc = summarize({s: r["test_roc_auc"] for s, r in rs.items()})
        t = summarize({s: r["train_time_s"] for s, r in rs.items()})
        mem = summarize({s: r["peak_memory_mb"] for s, r in rs.items()})
        shared = sorted(set(rs) & set(online))
        diff = "" if arm == "online" or not shared else _fmt_ci(
            summarize({s: rs[s]["test_accuracy"] - online[s]["test_accuracy"] for s in shared}), 3)
        backend = next(iter(rs.values()))["keras_backend"]
        lines.append(f"| {arm} ({backend}) | {_fmt_ci(acc)} | {diff} | {_fmt_ci(auc)} | {t['mean']:.1f} | "
                     f"{mem['mean']:.0f} |")
    lines += ["", "| feature cache | images through the backbone | extraction (s) | images/s | "
                  "peak memory (MB) | size (MB) |", "|---|---|---|---|---|---|"]
    for name, e in res["extraction"].items():
        if e is None:
            lines.append(f"| {name} | cached before this run: not measured | | | | |")
            continue
        rate = f"{e['images_per_s']:.0f}" + ("" if e["steady"] else " (one chunk: start-up included)")
        lines.append(f"| {name} | {e['n']:,} | {e['wall_s']:.1f} | {rate} | "
                     f"{e['peak_memory_mb']:.0f} | {e['size_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    command = "python -m benchmarks.augmentation " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                          else sys.argv[1:]))
    start = time.perf_counter()
    tmp = None
    if a.cache_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-augmentation-"))
    try:
        res = run(a, a.cache_dir or tmp)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["total_s"] = time.perf_counter() - start
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    print(markdown(res, command.strip()))
    print(f"\n(total {res['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
