"""``python -m benchmarks.snapshots``: what epoch snapshots and early stopping are worth (issue 13).

Four ways to spend the same wall time on ``fmnist_reg`` (Fashion-MNIST, ``--weights random``, batch 32,
TPE, epochs 5-25), each from a fresh study, one trial at a time on this machine's cores:

- ``plain``: the service as it is (no snapshots);
- ``snapshots``: ``run.epoch_snapshots = true``;
- ``moasha``: snapshots + ``run.early_stopping = "moasha"`` (rungs 5, 10, 20);
- ``topk``: the simple baseline "keep the top K after one epoch" (Egele et al. 2023): round after round,
  sample N configurations at random, train each for 1 epoch, keep the K best by the quality objectives
  (non-dominated sorting, search.trial.epochs.top_k), train those to their own sampled epochs (from scratch,
  with snapshots, as the ``snapshots`` variant).  The 1-epoch screening runs count as wall time but are not
  points: 1 epoch is outside the searched range the other variants are held to.

Each variant runs for ``--budget-min`` minutes per seed (the snapshot variants on to ``--target-min``, to
time the target below); a trial still running at the end is killed and left out.  Measured: the
**hypervolume of the 4-objective Pareto front** (accuracy, ROC AUC, train time, peak memory) of the
COMPLETE points (trials and snapshots) over wall time, with a FIXED reference point (``--ref``), reported
as the fraction of the box between the ideal point (accuracy 1, ROC AUC 1, 0 s, 0 MB) and the reference
point; and the same hypervolume of **30 plain fmnist_reg trials at batch 32** (``--plain-db``: a study
database of ``python -m benchmarks.study``; without it they are run here first, about an hour), and how
long each snapshot variant takes to reach it (issue 13's target: at most 20 minutes on 2 cores).

    python -m benchmarks.snapshots --plain-db /path/to/studies.db   # the real comparison (~2 h, idle machine)
    python -m benchmarks.snapshots --smoke                          # a few minutes: tiny slice, short budgets

The features are built first (one short ``search.run`` of a 1-2 epoch config: the service's own
extraction), outside every budget.  Hypervolume: ``moocore`` (the ``bench`` extra; Optuna's own is
private).  Trials draw no pictures here (none of the variants), so wall time is training and evaluation.
Output: ``--out`` (default ``benchmarks/out/snapshots``): ``results.json``, ``summary.md``, ``hv.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import require_bench

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("plain", "snapshots", "moasha", "topk")
SNAPSHOT_VARIANTS = ("snapshots", "moasha")
# Accuracy and ROC AUC below these add nothing; nor do trials slower or bigger than these.  Fixed, so that
# every variant, seed and the plain reference are measured in one box.
FULL_REF = (0.70, 0.90, 600.0, 4096.0)
SMOKE_REF = (0.0, 0.5, 120.0, 4096.0)
IDEAL = (1.0, 1.0, 0.0, 0.0)
QUALITY = ("accuracy", "roc_auc")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- plan

@dataclass
class Plan:
    budget_s: float
    target_s: float
    seeds: list[int]
    variants: list[str]
    subset: int
    epochs: tuple[int, int] | None       # None: fmnist_reg's own range
    rungs: tuple[int, ...]
    topk_n: int
    topk_k: int
    ref: tuple[float, float, float, float]
    plain_trials: int
    plain_db: str | None
    plain_study: str | None
    out: Path
    cache_dir: Path
    data_dir: Path | None
    backend: str = "jax"
    extra: dict[str, Any] = field(default_factory=dict)

    def run_seconds(self, variant: str) -> float:
        return max(self.budget_s, self.target_s) if variant in SNAPSHOT_VARIANTS else self.budget_s

    def expected_minutes(self, plain_trial_min: float) -> float:
        total = sum(self.run_seconds(v) for v in self.variants) * len(self.seeds) / 60
        return total + 3 + (0 if self.plain_db else self.plain_trials * plain_trial_min)


def parse_args(argv: list[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m benchmarks.snapshots", description=__doc__.splitlines()[0])
    p.add_argument("--budget-min", type=float, help="wall minutes per variant and seed (default 10; smoke 0.75)")
    p.add_argument("--target-min", type=float,
                   help="the snapshot variants run this long, to time reaching the plain reference "
                        "(default 20; smoke 1)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--subset", type=int, help="Fashion-MNIST images (0: all 70,000, the default; smoke 2000)")
    p.add_argument("--epochs", help="searched epochs LOW-HIGH (default: fmnist_reg's 5-25; smoke 1-4)")
    p.add_argument("--rungs", help="MOASHA rungs (default 5,10,20; smoke 2,3)")
    p.add_argument("--topk", help="N,K of the top-K baseline: screen N, keep K per round (default 8,2; smoke 2,1)")
    p.add_argument("--ref", help="reference point ACCURACY,ROC_AUC,TRAIN_TIME_S,PEAK_MEMORY_MB "
                                 f"(default {','.join(map(str, FULL_REF))}; smoke {','.join(map(str, SMOKE_REF))})")
    p.add_argument("--plain-db", help="storage (a SQLite path or URL) holding the 30-trial plain fmnist_reg study, "
                                      "e.g. the studies.db of python -m benchmarks.study; default: run it here")
    p.add_argument("--plain-study", help="its study name (default: the only one, else fmnist_reg-random)")
    p.add_argument("--plain-trials", type=int, help="trials of the plain reference (default 30; smoke 3)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "snapshots")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: <out>/cache)")
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST files (default: the service's lookup)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny: 2,000 images, epochs 1-4, 45-60 s budgets, 3 reference trials")
    a = p.parse_args(argv)
    smoke = a.smoke

    def pick(value, full, small):
        return value if value is not None else (small if smoke else full)

    epochs = pick(a.epochs, None, "1-4")
    ref = tuple(float(x) for x in a.ref.split(",")) if a.ref else (SMOKE_REF if smoke else FULL_REF)
    if len(ref) != 4:
        p.error("--ref: four numbers")
    variants = [v for v in a.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {bad}; valid: {', '.join(VARIANTS)}")
    topk = [int(x) for x in pick(a.topk, "8,2", "2,1").split(",")]
    if len(topk) != 2 or not 0 < topk[1] <= topk[0]:
        p.error("--topk: N,K with 0 < K <= N")
    return Plan(budget_s=60 * pick(a.budget_min, 10.0, 0.75), target_s=60 * pick(a.target_min, 20.0, 1.0),
                seeds=[int(s) for s in a.seeds.split(",")], variants=variants, subset=pick(a.subset, 0, 2000),
                epochs=tuple(int(x) for x in epochs.split("-")) if epochs else None,
                rungs=tuple(int(x) for x in pick(a.rungs, "5,10,20", "2,3").split(",")),
                topk_n=topk[0], topk_k=topk[1], ref=ref, plain_trials=pick(a.plain_trials, 30, 3),
                plain_db=a.plain_db, plain_study=a.plain_study, out=a.out,
                cache_dir=(a.cache_dir or a.out / "cache").resolve(), data_dir=a.data_dir)


# ---------------------------------------------------------------- configs

def base_config(plan: Plan):
    """fmnist_reg with random weights, the plan's slice and epochs range."""
    from search.config import load_config

    config = load_config(str(ROOT / "study_configs" / "fmnist_reg.toml")).with_weights("random")
    d = config.as_json()
    d["dataset"]["subset"] = plan.subset
    if plan.epochs:
        d["search_space"]["epochs"] = {"type": "int", "low": plan.epochs[0], "high": plan.epochs[1]}
    return type(config).model_validate(d)


def variant_config(base, variant: str, seed: int, plan: Plan, n_trials: int = 100_000):
    snapshots = variant != "plain"
    return base.with_seed(seed).with_run(n_trials=n_trials, epoch_snapshots=snapshots,
                                         early_stopping="moasha" if variant == "moasha" else "none",
                                         rungs=plan.rungs, max_consecutive_failures=10)


def to_toml(config) -> str:
    """A config as a study TOML file (search.run reads files): the sections of ``as_json`` minus unset values."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        assert isinstance(v, dict)
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + " }"

    d = config.as_json()
    lines = [f"description = {value(d.get('description', ''))}"]
    for section, body in d.items():
        if section in ("name", "description") or not body:
            continue
        if section == "objectives":
            for o in body:
                lines += ["", "[[objectives]]", *(f"{k} = {value(x)}" for k, x in o.items() if x is not None)]
        elif section == "arms":
            for arm, fields in body.items():
                lines += ["", f"[arms.{arm}]", *(f"{k} = {value(x)}" for k, x in fields.items())]
        else:
            lines += ["", f"[{section}]", *(f"{k} = {value(x)}" for k, x in body.items() if x is not None)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the shared set-up

@dataclass
class Setup:
    storage: Any
    cache_dir: Path
    key: str
    weights: str
    fingerprint: str
    runtime: dict[str, Any]
    class_names: tuple[str, ...]


def prepare(plan: Plan, base) -> Setup:
    """Build the features with the service's own command (a 1-trial study of 1-2 epochs), then read what a
    study's identity says about them (as search.confirm does)."""
    from search.config.choices import DATASETS
    from search.features import backbones, feature_cache
    from search.study import storage
    from search.study.lifecycle import IDENTITY_ATTR

    plan.out.mkdir(parents=True, exist_ok=True)
    d = base.as_json()
    d["search_space"]["epochs"] = {"type": "int", "low": 1, "high": 2}
    prep = type(base).model_validate({**d, "run": {**d["run"], "n_trials": 1}})
    path = plan.out / "prepare.toml"
    path.write_text(to_toml(prep))
    url = f"sqlite:///{plan.out / 'bench.db'}"
    cmd = [sys.executable, "-m", "search.run", "--study", str(path), "--study-name", "prepare", "--storage", url,
           "--cache-dir", str(plan.cache_dir), "--backend", plan.backend]
    if plan.data_dir:
        cmd += ["--data-dir", str(plan.data_dir)]
    log("prepare: features and one short trial through search.run")
    env = {**{k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run(cmd, cwd=plan.out, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"prepare failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    st = storage.open_storage(url)
    ident = storage.load_study(st, "prepare").user_attrs[IDENTITY_ATTR]
    weights = backbones.Weights("recorded", None, ident["backbone"]["weights"])
    key = feature_cache.cache_key(base.dataset.name, base.dataset.subset, base.preprocessing.name,
                             base.preprocessing.resize, weights, ident["data_fingerprint"], ident["runtime"])
    feature_cache.FeatureStore(plan.cache_dir, key).verify_all()
    return Setup(st, plan.cache_dir, key, ident["backbone"]["weights"], ident["data_fingerprint"], ident["runtime"],
                 tuple(DATASETS[base.dataset.name].class_names))


# ---------------------------------------------------------------- one run of one variant

def fresh_study(setup: Setup, name: str, config):
    import optuna

    from search.config import study_identity
    from search.study import lifecycle as st, samplers

    try:
        optuna.delete_study(study_name=name, storage=setup.storage)  # a benchmark run starts from nothing
    except KeyError:
        pass
    ident = study_identity(config, setup.weights, setup.fingerprint, setup.runtime)
    study, _ = st.create_or_resume(setup.storage, name, config, ident, samplers.make_sampler(config))
    return study


def context(setup: Setup, config, deadline: float, backend: str):
    """The objective's context: trials in fresh processes as in the service, killed at the deadline."""
    from search.errors import TrialFailed
    from search.isolate import run_isolated
    from search.study import objective as obj

    def runner(spec, on_event, timeout):
        left = deadline - time.monotonic()
        if left < 1:
            raise TrialFailed("benchmark budget spent", kind="error")
        limit = min(left, timeout or math.inf)
        return run_isolated(obj.TRIAL_TARGET, spec, on_event, env={"KERAS_BACKEND": backend},
                            timeout=None if math.isinf(limit) else limit)

    return obj.Context(config=config, cache_dir=setup.cache_dir, cache_key=setup.key, n_classes=10,
                       class_names=setup.class_names, target=config.run.n_trials, backend=backend, runner=runner)


def optimize(study, ctx, target: int, seconds: float | None) -> None:
    from search.errors import TooManyFailures
    from search.study import lifecycle as st, objective as obj

    policy = st.RetryPolicy(grid=False, max_retries=0, max_failures=ctx.config.run.max_consecutive_failures)
    try:
        st.optimize(study, obj.make_objective(ctx, lambda e: None), target, seconds, policy)
    except TooManyFailures as e:
        log(f"  {study.study_name}: {e}")


def run_variant(setup: Setup, base, variant: str, seed: int, plan: Plan) -> dict[str, Any]:
    seconds = plan.run_seconds(variant)
    config = variant_config(base, variant, seed, plan)
    name = f"{variant}-s{seed}"
    log(f"{name}: {seconds / 60:.1f} min")
    started = dt.datetime.now()
    deadline = time.monotonic() + seconds
    study = fresh_study(setup, name, config)
    screened: list[dict[str, Any]] = []
    if variant == "topk":
        screened = top_k_rounds(setup, study, config, seed, deadline, plan)
    else:
        optimize(study, context(setup, config, deadline, plan.backend), config.run.n_trials,
                 deadline - time.monotonic())
    out = {"variant": variant, "seed": seed, "seconds": seconds, "study": name,
           "points": points_of(study, started), **trial_counts(study)}
    if screened:
        out["screened"] = screened
    log(f"  {name}: {out['counted']} trials, {out['snapshot_points']} snapshot points, {out['pruned']} stopped early")
    return out


def top_k_rounds(setup: Setup, study, config, seed: int, deadline: float, plan: Plan) -> list[dict[str, Any]]:
    """Rounds of: N random configurations x 1 epoch, then the best K trained to their own epochs."""
    import optuna

    from search.errors import TrialFailed
    from search.study import objective as obj, snapshots
    from search.study.trials import n_counted
    from search.trial import epochs

    ctx = context(setup, config, deadline, plan.backend)
    shadow = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))  # draws only, in memory
    quality = snapshots.quality_objectives(config)
    screened: list[dict[str, Any]] = []
    while time.monotonic() < deadline - 1:
        batch = []
        for _ in range(plan.topk_n):
            suggested = obj.suggest(shadow.ask(), config)
            spec = obj.trial_spec(ctx, {**obj.resolve_params(config, suggested), "epochs": 1})
            try:
                result = ctx.run(spec, lambda e: None, None).result
            except TrialFailed as e:
                if time.monotonic() >= deadline - 1:
                    break
                log(f"  screening failed: {e}")
                continue
            batch.append((suggested, [float(result[name]) for _, name, _ in quality]))
            screened.append({"params": suggested, "quality": batch[-1][1]})
        if len(batch) < plan.topk_n:
            break  # the budget ended during screening
        keep = epochs.top_k([v for _, v in batch], [d for _, _, d in quality], plan.topk_k)
        for i in keep:
            study.enqueue_trial(batch[i][0])
        optimize(study, ctx, n_counted(study) + len(keep), deadline - time.monotonic())
    return screened


def trial_counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    from search.study.snapshots import STOPPED_AT, is_snapshot

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"counted": sum(not is_snapshot(t) for t in complete), "snapshot_points": sum(map(is_snapshot, complete)),
            "pruned": sum(t.state == TrialState.PRUNED and STOPPED_AT in t.user_attrs for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials)}


def points_of(study, started: dt.datetime | None) -> list[dict[str, Any]]:
    """Every COMPLETE trial as (seconds since ``started``, accuracy, ROC AUC, train time, peak memory)."""
    from optuna.trial import TrialState

    from search.study.snapshots import is_snapshot

    names = study.metric_names or []
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        v = objective_vector(t, names)
        if v is None:
            continue
        at = (t.datetime_complete - started).total_seconds() if started else None
        out.append({"number": t.number, "t": at, "v": v, "snapshot": is_snapshot(t),
                    "epochs": t.params.get("epochs")})
    return sorted(out, key=lambda p: (p["t"] if p["t"] is not None else 0, p["number"]))


def objective_vector(t, names: list[str]) -> list[float] | None:
    """(accuracy, ROC AUC, train time, peak memory) of a trial, on its study's objective split."""
    out = []
    for metric in ("accuracy", "roc_auc", "train_time_s", "peak_memory_mb"):
        name = next((n for n in names if n in (metric, f"val_{metric}", f"test_{metric}")), None)
        if name is not None:
            out.append(float(t.values[names.index(name)]))
            continue
        split = t.user_attrs.get("objective_split", "test")
        key = f"{'val' if split == 'validation' else 'test'}_{metric}" if metric in QUALITY else metric
        value = t.user_attrs.get(key, t.user_attrs.get(metric))  # studies from before the split prefixes
        if value is None:
            return None
        out.append(float(value))
    return out


# ---------------------------------------------------------------- hypervolume

def hypervolume(vectors: list[list[float]], ref: tuple[float, ...]) -> float:
    """The fraction of the box between IDEAL and ``ref`` that the vectors dominate (maximizing accuracy and
    ROC AUC, minimizing time and memory)."""
    import moocore
    import numpy as np

    sign = np.array([-1.0, -1.0, 1.0, 1.0])  # all minimized
    r = np.asarray(ref) * sign
    pts = np.asarray(vectors, dtype=float).reshape(-1, 4) * sign
    pts = pts[np.all(pts < r, axis=1)]
    box = float(np.prod(np.abs(r - np.asarray(IDEAL) * sign)))
    return float(moocore.hypervolume(pts, ref=r)) / box if len(pts) else 0.0


def curve(points: list[dict[str, Any]], ref: tuple[float, ...], until: float) -> list[tuple[float, float]]:
    """(seconds, hypervolume) after each point completed up to ``until``."""
    out, seen = [(0.0, 0.0)], []
    for p in points:
        if p["t"] is None or p["t"] > until:
            continue
        seen.append(p["v"])
        out.append((p["t"], hypervolume(seen, ref)))
    return out


def at(c: list[tuple[float, float]], t: float) -> float:
    return max((hv for s, hv in c if s <= t), default=0.0)


def reached(c: list[tuple[float, float]], level: float) -> float | None:
    return next((s for s, hv in c if hv >= level > 0), None)


# ---------------------------------------------------------------- the plain reference

def plain_reference(plan: Plan, setup: Setup, base) -> dict[str, Any]:
    """The hypervolume of ``plan.plain_trials`` plain trials: from --plain-db, or run here (seed of the first)."""
    from optuna.trial import TrialState

    from search.study import storage
    from search.study.snapshots import is_snapshot

    if plan.plain_db:
        from benchmarks.common import kept_study

        study, url = kept_study(plan.plain_db, plan.plain_study)
        source = f"{storage.mask(url)} study {study.study_name}"
    else:
        config = variant_config(base, "plain", plan.seeds[0], plan, n_trials=plan.plain_trials)
        name = f"plain{plan.plain_trials}-s{plan.seeds[0]}"
        log(f"{name}: the plain reference, {plan.plain_trials} trials")
        study = fresh_study(setup, name, config)
        optimize(study, context(setup, config, math.inf, plan.backend), plan.plain_trials, None)
        source = f"run here: study {name}"
    trials = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if not is_snapshot(t)), key=lambda t: t.number)[:plan.plain_trials]
    names = study.metric_names or []
    vectors = [v for t in trials if (v := objective_vector(t, names)) is not None]
    stored = study.user_attrs.get("search:config") or {}
    checks = {"batch_size": (stored.get("training") or {}).get("batch_size"),
              "subset": (stored.get("dataset") or {}).get("subset"),
              "weights": ((study.user_attrs.get("search:identity") or {}).get("backbone") or {}).get("weights")}
    if checks["batch_size"] not in (None, 32) or checks["subset"] not in (None, plan.subset):
        log(f"warning: the plain reference differs from this comparison: {checks}")
    wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_start]
    return {"source": source, "trials": len(vectors), "hypervolume": hypervolume(vectors, plan.ref),
            "trial_wall_s": sum(wall), "config": checks}


# ---------------------------------------------------------------- report

def summarize(plan: Plan, runs: list[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, Any]:
    import statistics

    step = max(10.0, plan.budget_s / 10)
    marks = [step * i for i in range(1, int(max(plan.run_seconds(v) for v in plan.variants) / step + 1e-9) + 1)]
    table = {}
    for v in plan.variants:
        mine = [r for r in runs if r["variant"] == v]
        curves = [curve(r["points"], plan.ref, r["seconds"]) for r in mine]
        for r, c in zip(mine, curves):
            r["curve"] = c
            r["hv_at_budget"] = at(c, plan.budget_s)
            r["reached_reference_s"] = reached(c, reference["hypervolume"]) if reference else None
        if not mine:
            continue
        table[v] = {"hv_at_budget": [r["hv_at_budget"] for r in mine],
                    "mean_at_budget": statistics.fmean(r["hv_at_budget"] for r in mine),
                    "over_time": {m: statistics.fmean(at(c, m) for c in curves) for m in marks
                                  if m <= plan.run_seconds(v) + 1e-6},
                    "counted": [r["counted"] for r in mine], "snapshot_points": [r["snapshot_points"] for r in mine],
                    "pruned": [r["pruned"] for r in mine],
                    "reached_reference_s": [r["reached_reference_s"] for r in mine]}
    return {"marks": marks, "table": table}


def markdown(plan: Plan, summary: dict[str, Any], reference: dict[str, Any] | None, machine: dict[str, Any]) -> str:
    ref = ", ".join(f"{n} {v:g}" for n, v in zip(("accuracy", "ROC AUC", "train_time_s", "peak_memory_mb"), plan.ref))
    lines = [f"Fashion-MNIST {'all 70,000 images' if not plan.subset else f'{plan.subset} images'}, random-init "
             f"ResNet50 features, fmnist_reg (batch 32, TPE, epochs "
             f"{'-'.join(map(str, plan.epochs)) if plan.epochs else '5-25'}), seeds {plan.seeds}, budget "
             f"{plan.budget_s / 60:g} min per variant and seed (snapshot variants run on to "
             f"{max(plan.budget_s, plan.target_s) / 60:g} min for the target); MOASHA rungs {list(plan.rungs)}; "
             f"top-K: N={plan.topk_n}, K={plan.topk_k}. Reference point: {ref}; hypervolume as the fraction of the box "
             f"from the ideal point. {machine.get('cpu', '')}, {machine.get('cores')} cores, load at start "
             f"{machine.get('load_avg_at_start')}, {machine.get('date')}.", ""]
    marks = [m for m in summary["marks"]]
    head = ["variant", *(f"{m:.0f} s" if m < 60 else f"{m / 60:.3g} min" for m in marks), "trials",
            "snapshot points", "stopped early", "reaches plain reference at"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, row in summary["table"].items():
        reach = ", ".join("-" if s is None else f"{s / 60:.1f} min" for s in row["reached_reference_s"])
        lines.append("| " + " | ".join([v, *(f"{row['over_time'][m]:.4f}" if m in row["over_time"] else ""
                                            for m in marks),
                                        "/".join(map(str, row["counted"])), "/".join(map(str, row["snapshot_points"])),
                                        "/".join(map(str, row["pruned"])), reach]) + " |")
    if reference:
        lines += ["", f"Plain reference: {reference['trials']} trials ({reference['source']}), hypervolume "
                      f"{reference['hypervolume']:.4f}, {reference['trial_wall_s'] / 60:.1f} min of trial wall time."]
    lines += ["", "Hypervolume: mean over seeds at each time (per-seed values in results.json); "
                  "trials / snapshot points / stopped early: per seed."]
    return "\n".join(lines) + "\n"


def plot(path: Path, plan: Plan, runs: list[dict[str, Any]], reference: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = dict(zip(VARIANTS, ("tab:gray", "tab:blue", "tab:red", "tab:green")))
    for r in runs:
        c = r["curve"] + [(r["seconds"], r["curve"][-1][1])]
        ax.step([s / 60 for s, _ in c], [hv for _, hv in c], where="post", color=colors[r["variant"]],
                alpha=0.8, label=r["variant"] if r["seed"] == plan.seeds[0] else None)
    if reference:
        ax.axhline(reference["hypervolume"], color="black", ls="--", lw=1,
                   label=f"{reference['trials']} plain trials")
    ax.axvline(plan.budget_s / 60, color="black", ls=":", lw=1)
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("hypervolume (fraction of the reference box)")
    ax.set_title("fmnist_reg, 4 objectives: hypervolume over wall time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    require_bench("python -m benchmarks.snapshots", "moocore")
    import optuna

    from benchmarks.common import machine
    from search import signals

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    signals.install()
    info = {**machine(), "load_avg_at_start": list(os.getloadavg()),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    base = base_config(plan)
    log(f"plan: {'all 70,000' if not plan.subset else plan.subset} Fashion-MNIST images, epochs "
        f"{plan.epochs or '5-25'}, seeds {plan.seeds}, variants {plan.variants}, budget {plan.budget_s / 60:g} min "
        f"(snapshot variants {max(plan.budget_s, plan.target_s) / 60:g} min), reference point {plan.ref}; "
        f"expected about {plan.expected_minutes(2.0 if not plan.subset else 0.3):.0f} min"
        + ("" if plan.plain_db or not plan.plain_trials
           else f" including {plan.plain_trials} plain reference trials run here"))
    if info["load_avg_at_start"][0] > 0.5:
        log(f"warning: load average {info['load_avg_at_start'][0]:.2f} at start: "
            f"times are valid only on an idle machine")
    setup = prepare(plan, base)
    reference = plain_reference(plan, setup, base) if plan.plain_db or plan.plain_trials else None
    if reference:
        log(f"plain reference: {reference['trials']} trials, hypervolume {reference['hypervolume']:.4f}")
    runs = []
    for seed in plan.seeds:
        for v in plan.variants:
            runs.append(run_variant(setup, base, v, seed, plan))
    summary = summarize(plan, runs, reference)
    text = markdown(plan, summary, reference, info)
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "summary.md").write_text(text)
    plot(plan.out / "hv.png", plan, runs, reference)
    (plan.out / "results.json").write_text(json.dumps(
        {"plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in plan.__dict__.items()}, "machine": info,
         "reference": reference, "summary": summary, "runs": runs}, indent=1, default=str))
    print(text)
    log(f"written: {plan.out / 'results.json'}, {plan.out / 'summary.md'}, {plan.out / 'hv.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
