"""``python -m search.confirm --study NAME --seeds 5``: repeat the Pareto-optimal trials with other seeds.

A single trial is one draw: one data split, one imbalance subsample, one
initialization.  This re-runs each Pareto-optimal trial's parameters (or the
trials named with ``--trials``, or ``--all`` COMPLETE trials) with ``--seeds``
other seeds (``study seed + 1 .. + N``: a new split, subsample and
initialization each), each in its own process like any trial, and stores per
trial and measure the mean, standard deviation (ddof=1), the 95% t-interval of
the mean and the values in the study's user attribute ``search:confirm``:

    {"seeds": [1, 2, ...], "trials": {"<number>": {"params": {...},
        "metrics": {"balanced_accuracy": {"mean": .., "std": .., "n": .., "ci95": [lo, hi],
                                          "values": [..]}, ...}}}}

Trials confirmed by an earlier run with the same seeds are kept, so arms can be
added one command at a time.  Two confirmed trials whose parameters differ in
one parameter only make a claim ("imbalanced beats balanced"): ``differences``
gives the difference of the means with its 95% interval (paired over the
shared seeds, which give both arms the same split), printed here and in
``search.report``.

The study itself (its trials and what the sampler saw) is not changed.  The
features must be in the cache that ``search.run`` filled (same ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from search.errors import DataError, SearchError, UsageError

CONFIRM_ATTR = "search:confirm"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.confirm", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="Optuna study name in --storage")
    p.add_argument("--storage", default="sqlite:///studies.db", help="Optuna storage URL (default: sqlite:///studies.db)")
    p.add_argument("--seeds", type=int, default=5, help="repeats per trial (default 5)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trials", help="comma-separated trial numbers to confirm (default: the Pareto set)")
    which.add_argument("--all", action="store_true", help="confirm every COMPLETE trial")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: ~/.cache/optuna-tl-search/features)")
    p.add_argument("--debug", action="store_true", help="tracebacks and the trial processes' output")
    return p.parse_args(argv)


def summarize(values: list[float]) -> dict[str, Any]:
    from scipy import stats

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean = statistics.fmean(vals) if vals else float("nan")
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    ci = None
    if len(vals) > 1:
        half = float(stats.t.ppf(0.975, len(vals) - 1)) * std / math.sqrt(len(vals))
        ci = [mean - half, mean + half]
    return {"mean": mean, "std": std, "n": len(vals), "ci95": ci, "values": vals}


@dataclass(frozen=True)
class Difference:
    """Trial ``b`` minus trial ``a`` on ``metric``; the two differ only in parameter ``param``."""

    param: str
    a: str
    b: str
    a_value: Any
    b_value: Any
    metric: str
    diff: float
    low: float
    high: float
    n: int
    test: str  # "paired" (same seeds, same splits) or "welch"

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return f"{self.param}={self.b_value} higher"
        if self.high < 0:
            return f"{self.param}={self.b_value} lower"
        return "no difference shown"


def differences(confirmed: dict[str, Any], metrics: list[str]) -> list[Difference]:
    """Every pair of confirmed trials one parameter apart, per metric: difference of means, 95% interval."""
    from scipy import stats

    out = []
    entries = sorted(confirmed.get("trials", {}).items(), key=lambda kv: int(kv[0]))
    for (na, ea), (nb, eb) in itertools.combinations(entries, 2):
        pa, pb = ea["params"], eb["params"]
        changed = [k for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
        if len(changed) != 1:
            continue
        for m in metrics:
            ma, mb = ea["metrics"].get(m), eb["metrics"].get(m)
            if not ma or not mb or ma["n"] < 2 or mb["n"] < 2:
                continue
            va, vb = ma["values"], mb["values"]
            if len(va) == len(vb):  # the same seeds gave both arms the same split: pair them
                r, test = stats.ttest_rel(vb, va), "paired"
            else:
                r, test = stats.ttest_ind(vb, va, equal_var=False), "welch"
            ci = r.confidence_interval(0.95)
            diff = statistics.fmean(vb) - statistics.fmean(va)
            low, high = (float(ci.low), float(ci.high)) if math.isfinite(ci.low) else (diff, diff)
            out.append(Difference(changed[0], na, nb, pa.get(changed[0]), pb.get(changed[0]), m, diff,
                                  low, high, min(len(va), len(vb)), test))
    return out


def repeat_metrics(metric_names: list[str]) -> list[str]:
    """What is summarized per repeat: the objectives, every quality metric, and its held-out test_* twin."""
    from search.metrics import QUALITY_METRICS

    names = list(dict.fromkeys([*metric_names, *QUALITY_METRICS, "train_time_s", "peak_memory_mb"]))
    return names + [f"test_{m}" for m in QUALITY_METRICS]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except SearchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def _run(args: argparse.Namespace) -> int:
    import optuna

    from search import features
    from search import objective as obj
    from search.config import StudyConfig
    from search.isolate import run_isolated
    from search.study import CONFIG_ATTR, IDENTITY_ATTR, open_storage

    if args.seeds < 1:
        raise UsageError(f"--seeds: must be positive, got {args.seeds}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_storage(args.storage)
    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in storage.get_all_studies()) or "(none)"
        raise UsageError(f"--study: no study {args.study!r} in this storage; studies: {names}") from None
    stored, ident = study.user_attrs.get(CONFIG_ATTR), study.user_attrs.get(IDENTITY_ATTR)
    if not stored or not ident:
        raise UsageError(f"--study: study {args.study!r} was not created by search.run")
    config = StudyConfig.model_validate(stored)
    weights = SimpleNamespace(identity=ident["backbone"]["weights"])
    cache_dir = (args.cache_dir or features.default_cache_dir()).resolve()
    key = features.cache_key(config.dataset.name, config.dataset.subset, config.preprocessing.name,
                             config.preprocessing.resize, weights, ident["data_fingerprint"])
    if not (cache_dir / key / "features.npy").is_file():
        raise DataError(f"features of study {args.study!r} are not in {cache_dir} ({key}); "
                        f"run search.run for it with the same --cache-dir first")
    chosen = _choose(study, args)
    from search.data import CLASS_NAMES

    ctx = obj.Context(config=config, cache_dir=cache_dir, cache_key=key,
                      n_classes=len(CLASS_NAMES[config.dataset.name]), target=0, debug=args.debug)
    seeds = [config.training.seed + i for i in range(1, args.seeds + 1)]
    names = repeat_metrics(config.metric_names)
    out: dict[str, Any] = {"seeds": seeds, "evaluation": config.training.evaluation, "trials": {}}
    earlier = study.user_attrs.get(CONFIRM_ATTR) or {}
    if earlier.get("seeds") == seeds:  # same seeds: comparable, keep what was confirmed before
        out["trials"].update(earlier.get("trials", {}))
    elif earlier:
        print(f"note: replacing the earlier confirmation (seeds {earlier.get('seeds')})", file=sys.stderr)
    for t in chosen:
        params = t.user_attrs["resolved_params"]
        runs = []
        for seed in seeds:
            spec = {**obj.trial_spec(ctx, params), "seed": seed}
            # The trial's own backend: its repeats must measure time and memory the way it did.
            env = {"KERAS_BACKEND": t.user_attrs.get("keras_backend", "tensorflow")}
            outcome = run_isolated("search.trial:run_trial", spec, env=env, echo_stderr=args.debug)
            runs.append({**outcome.result, "peak_memory_mb": outcome.peak_memory_mb})
            print(f"trial {t.number} seed {seed}: " + ", ".join(
                f"{m}={runs[-1][m]:.4g}" for m in config.metric_names), file=sys.stderr)
        out["trials"][str(t.number)] = {
            "params": t.params,
            "metrics": {m: summarize([r.get(m) for r in runs]) for m in names if any(m in r for r in runs)}}
        study.set_user_attr(CONFIRM_ATTR, out)  # after each trial, so an interrupted run keeps what it did
    _print(study.study_name, out, config.metric_names)
    return 0


def _choose(study: Any, args: argparse.Namespace) -> list[Any]:
    from optuna.trial import TrialState

    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if args.trials:
        try:
            numbers = [int(x) for x in args.trials.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--trials: expected comma-separated trial numbers, got {args.trials!r}") from None
        missing = [n for n in numbers if n not in complete]
        if missing or not numbers:
            raise UsageError(f"--trials: not COMPLETE trials of {args.study!r}: {missing or args.trials!r}; "
                             f"COMPLETE: {sorted(complete) or '(none)'}")
        return [complete[n] for n in numbers]
    chosen = sorted(complete.values() if args.all else study.best_trials, key=lambda t: t.number)
    if not chosen:
        raise UsageError(f"--study: study {args.study!r} has no (feasible) COMPLETE trials to confirm")
    return chosen


def interval(s: dict[str, Any]) -> str:
    """``mean ± std [lo, hi]`` of a summarize() entry."""
    text = f"{s['mean']:.4g} ± {s['std']:.2g}"
    return text + (f" [{s['ci95'][0]:.4g}, {s['ci95'][1]:.4g}]" if s.get("ci95") else "")


def _print(name: str, out: dict[str, Any], metric_names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: confirmed trials over seeds {out['seeds']} (mean ± std [95% interval])")
    cols = list(dict.fromkeys([*metric_names, "test_balanced_accuracy", "test_reduced_recall", "test_accuracy"]))
    table.add_column("trial", justify="right")
    table.add_column("params")
    for c in cols:
        table.add_column(c, justify="right")
    for number, entry in out["trials"].items():
        m = entry["metrics"]
        table.add_row(number, ", ".join(f"{k}={v}" for k, v in entry["params"].items()),
                      *(interval(m[c]) if c in m else "-" for c in cols))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    diffs = differences(out, cols)
    if diffs:
        t = Table(title="Trials one parameter apart: difference of means (b - a), 95% interval")
        for c in ("metric", "parameter", "a", "b", "difference", "95% interval", "test", "verdict"):
            t.add_column(c)
        for d in diffs:
            t.add_row(d.metric, d.param, f"{d.a_value} (trial {d.a})", f"{d.b_value} (trial {d.b})",
                      f"{d.diff:+.4g}", f"[{d.low:+.4g}, {d.high:+.4g}]", f"{d.test}, n={d.n}", d.verdict)
        console.print(t)


if __name__ == "__main__":
    sys.exit(main())
