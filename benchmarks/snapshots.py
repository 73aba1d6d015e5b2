"""``python -m benchmarks.snapshots``: what multi-fidelity is worth on ``fmnist_reg`` (issue 24's decision benchmark).

Each variant runs ``fmnist_reg`` (random weights; all 70,000 images unless ``--subset``) from a fresh study, one
trial at a time, through ``search.Search`` as ``search.run`` does, for ``--minutes`` per seed (the config's
``run.timeout``: a trial running at the end finishes, and counts only at the time it completed):

- ``plain``: the service as it is;
- ``snapshots``: ``run.epoch_snapshots = true``, every epoch inside the searched range a COMPLETE point;
- ``moasha``: snapshots and ``run.early_stopping = "moasha"`` at ``--rungs``.

The features are extracted once, before any clock starts, and every variant's clock starts at its first trial.
Measured: the hypervolume of the COMPLETE points' objective values (what the sampler sees) that had completed by
each mark, against a fixed reference point, as the fraction of the box between it and the ideal point (``moocore``,
the ``bench`` extra); mean and spread over seeds; and the plain reference, the hypervolume of plain's first 30
trials (mean over seeds), with the time each run first reached it.

    python -m benchmarks.snapshots                # 3 seeds x 3 variants x 45 min: about 7 h on an idle machine
    python -m benchmarks.snapshots --smoke        # a few minutes: 2,000 images, epochs 1-4, 1.5-minute runs

Output (``--out``, default ``benchmarks/out/snapshots``): ``results.json``, ``summary.md``, ``studies.db``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import search
from benchmarks.common import machine, require_bench

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"plain": {}, "snapshots": {"epoch_snapshots": True},
            "moasha": {"epoch_snapshots": True, "early_stopping": "moasha"}}
# Worse than these adds nothing (fmnist_reg's objectives: accuracy, ROC AUC, train_time_s, trial_memory_mb).
# Fixed, so that every variant and seed is measured in one box.
REF = (0.70, 0.90, 600.0, 4096.0)
SMOKE_REF = (0.0, 0.5, 120.0, 4096.0)


@dataclass(frozen=True)
class Plan:
    minutes: float
    marks: tuple[float, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    subset: int
    epochs: tuple[int, int] | None
    rungs: tuple[int, ...]
    ref: tuple[float, ...]
    reference_trials: int
    out: Path
    cache_dir: Path
    data_dir: Path | None


def _numbers(text: str, kind=float) -> tuple:
    return tuple(kind(x) for x in text.replace("-", ",").split(",") if x)


def parse_args(argv: list[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m benchmarks.snapshots", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="2,000 images, epochs 1-4, 1.5-minute runs, seed 0")
    p.add_argument("--minutes", type=float, help="wall minutes per variant and seed (default 45)")
    p.add_argument("--marks", help="minutes at which the hypervolume is reported (default 5,10,15,20,30,45)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--subset", type=int, help="Fashion-MNIST images (default 0: all 70,000)")
    p.add_argument("--epochs", help="searched epochs LOW-HIGH (default fmnist_reg's 5-25)")
    p.add_argument("--rungs", help="MOASHA rungs (default 5,10,20)")
    p.add_argument("--ref", help=f"reference point, one number per objective (default {','.join(map(str, REF))})")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "snapshots")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: the service's)")
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST files (default: the service's lookup)")
    a = p.parse_args(argv)
    small = {"minutes": 1.5, "marks": "0.5,1,1.5", "seeds": "0", "subset": 2000, "epochs": "1-4", "rungs": "2,3",
             "ref": ",".join(map(str, SMOKE_REF)), "reference_trials": 3}
    full = {"minutes": 45.0, "marks": "5,10,15,20,30,45", "seeds": "0,1,2", "subset": 0, "epochs": None,
            "rungs": "5,10,20", "ref": ",".join(map(str, REF)), "reference_trials": 30}
    d = {k: v if getattr(a, k, None) is None else getattr(a, k) for k, v in (small if a.smoke else full).items()}
    variants = tuple(v for v in a.variants.split(",") if v)
    if bad := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {bad}; valid: {', '.join(VARIANTS)}")
    return Plan(minutes=float(d["minutes"]), marks=_numbers(d["marks"]), seeds=_numbers(d["seeds"], int),
                variants=variants, subset=d["subset"], epochs=_numbers(d["epochs"], int) if d["epochs"] else None,
                rungs=_numbers(d["rungs"], int), ref=_numbers(d["ref"]), reference_trials=d["reference_trials"],
                out=a.out, cache_dir=a.cache_dir, data_dir=a.data_dir)


def base_config(plan: Plan) -> search.StudyConfig:
    config = search.load_config("fmnist_reg", weights="random", subset=plan.subset)
    if len(plan.ref) != len(config.objectives):
        raise SystemExit(f"error: --ref: {len(config.objectives)} numbers, one per objective of fmnist_reg")
    if plan.epochs:
        d = config.as_json()
        d["search_space"]["epochs"] = {"type": "int", "low": plan.epochs[0], "high": plan.epochs[1]}
        config = type(config).model_validate(d)
    return config


def variant_search(plan: Plan, base: search.StudyConfig, variant: str, seed: int) -> search.Search:
    config = base.with_seed(seed).with_run(n_trials=100_000, timeout=60 * plan.minutes, rungs=plan.rungs,
                                           max_consecutive_failures=10, **VARIANTS[variant])
    return search.Search(config, storage=f"sqlite:///{plan.out / 'studies.db'}", study_name=f"{variant}-s{seed}",
                         cache_dir=plan.cache_dir, data_dir=plan.data_dir)


def run_variant(plan: Plan, base: search.StudyConfig, variant: str, seed: int) -> dict[str, Any]:
    """One fresh study of ``variant`` for ``plan.minutes``: its COMPLETE points, timed from its first trial."""
    import optuna

    s = variant_search(plan, base, variant, seed)
    try:
        optuna.delete_study(study_name=s.study_name, storage=s.url)  # a benchmark run starts from nothing
    except KeyError:
        pass
    s.open_study()  # the features are extracted here, before the clock
    started = dt.datetime.now()
    s.optimize()
    trials = s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    points = sorted(({"t": (t.datetime_complete - started).total_seconds(), "v": list(t.values),
                      "snapshot": "snapshot_of" in t.user_attrs} for t in trials), key=lambda p: p["t"])
    pruned = len(s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    print(f"{s.study_name}: {sum(not p['snapshot'] for p in points)} trials, "
          f"{sum(p['snapshot'] for p in points)} snapshot points, {pruned} stopped early", file=sys.stderr)
    return {"variant": variant, "seed": seed, "backend": s.backend, "points": points, "stopped_early": pruned,
            "extractions": s.extractions}


def hypervolume(vectors: list[list[float]], ref: tuple[float, ...], directions: list[str]) -> float:
    """The fraction of the box between the ideal point (1 for a maximized objective, 0 for a minimized one)
    and ``ref`` that the vectors dominate."""
    import moocore
    import numpy as np

    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])  # moocore minimizes
    ideal = np.array([1.0 if d == "maximize" else 0.0 for d in directions]) * sign
    r = np.asarray(ref) * sign
    pts = np.asarray(vectors, dtype=float).reshape(-1, len(ref)) * sign
    pts = pts[np.all(pts < r, axis=1)]
    return float(moocore.hypervolume(pts, ref=r)) / float(np.prod(np.abs(r - ideal))) if len(pts) else 0.0


def at(run: dict[str, Any], seconds: float, ref: tuple[float, ...], directions: list[str]) -> float:
    return hypervolume([p["v"] for p in run["points"] if p["t"] <= seconds], ref, directions)


def reached(run: dict[str, Any], level: float, ref: tuple[float, ...], directions: list[str]) -> float | None:
    """Seconds until the run's points first reach hypervolume ``level``."""
    return next((p["t"] for p in run["points"] if at(run, p["t"], ref, directions) >= level > 0), None)


def summarize(plan: Plan, runs: list[dict[str, Any]], directions: list[str]) -> dict[str, Any]:
    """Mean, spread and per-seed hypervolume at every mark; plain's first trials as the reference."""
    firsts = [[p["v"] for p in r["points"] if not p["snapshot"]][:plan.reference_trials]
              for r in runs if r["variant"] == "plain"]
    reference = statistics.fmean(hypervolume(v, plan.ref, directions) for v in firsts) if firsts else None
    table = {}
    for v in plan.variants:
        mine = [r for r in runs if r["variant"] == v]
        per_mark = {m: [at(r, 60 * m, plan.ref, directions) for r in mine] for m in plan.marks}
        table[v] = {"mean": {m: statistics.fmean(hv) for m, hv in per_mark.items()},
                    "spread": {m: max(hv) - min(hv) for m, hv in per_mark.items()}, "per_seed": per_mark,
                    "trials": [sum(not p["snapshot"] for p in r["points"]) for r in mine],
                    "snapshot_points": [sum(p["snapshot"] for p in r["points"]) for r in mine],
                    "stopped_early": [r["stopped_early"] for r in mine],
                    "reached_reference_s": [reached(r, reference, plan.ref, directions) if reference else None
                                            for r in mine]}
    return {"reference": reference, "reference_trials": plan.reference_trials,
            "reference_seeds": [len(f) for f in firsts], "table": table}


def markdown(plan: Plan, summary: dict[str, Any], info: dict[str, Any], backend: str) -> str:
    head = ["variant", *(f"{m:g} min" for m in plan.marks), "trials", "snapshot points", "stopped early",
            "reaches the plain reference at"]
    lines = [f"Fashion-MNIST, {plan.subset or 'all 70,000'} images, fmnist_reg with random-init ResNet50 features "
             f"(Keras/{backend}), epochs "
             f"{'-'.join(map(str, plan.epochs)) if plan.epochs else '5-25'}, MOASHA rungs {list(plan.rungs)}, "
             f"seeds {list(plan.seeds)}, {plan.minutes:g} min per variant and seed, extraction before every clock. "
             f"Reference point {list(plan.ref)}. {info['cpu']}, {info['cores']} cores, load "
             f"{info['load_avg_at_start']} at start, {info['date']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, row in summary["table"].items():
        reach = ", ".join("-" if s is None else f"{s / 60:.1f} min" for s in row["reached_reference_s"])
        cells = [f"{row['mean'][m]:.4f} ± {row['spread'][m] / 2:.4f}" for m in plan.marks]
        lines.append("| " + " | ".join([v, *cells, *("/".join(map(str, row[k])) for k in
                                                      ("trials", "snapshot_points", "stopped_early")), reach]) + " |")
    ref = summary["reference"]
    lines += ["", "Hypervolume: mean ± half the range over seeds; trials, snapshot points, stopped early and the "
                  "time to the reference: per seed.",
              f"Plain reference: the first {summary['reference_trials']} plain trials of each seed (had: "
              f"{summary['reference_seeds']}), mean hypervolume " + (f"{ref:.4f}." if ref is not None else "none.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    require_bench("python -m benchmarks.snapshots", "moocore")
    info, base = machine(), base_config(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    runs = [run_variant(plan, base, v, seed) for seed in plan.seeds for v in plan.variants]
    summary = summarize(plan, runs, base.directions)
    text = markdown(plan, summary, info, runs[0]["backend"])
    (plan.out / "summary.md").write_text(text)
    plan_json = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()}
    (plan.out / "results.json").write_text(json.dumps({"plan": plan_json, "machine": info, "summary": summary,
                                                       "runs": runs}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
