"""``python -m search.confirm --study NAME --seeds 5``: repeat the Pareto-optimal trials with other seeds.

A single trial is one draw: one data split, one imbalance subsample, one
initialization.  This re-runs each Pareto-optimal trial's parameters with
``--seeds`` other seeds (``study seed + 1 .. + N``: a new split, subsample and
initialization each), each in its own process like any trial, and stores per
trial and measure the mean, standard deviation (ddof=1), and the values in the
study's user attribute ``search:confirm``:

    {"seeds": [1, 2, ...], "trials": {"<number>": {"params": {...},
        "metrics": {"balanced_accuracy": {"mean": .., "std": .., "n": .., "values": [..]}, ...}}}}

The study itself (its trials and what the sampler saw) is not changed.  The
features must be in the cache that ``search.run`` filled (same ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from search.errors import DataError, SearchError, UsageError

CONFIRM_ATTR = "search:confirm"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.confirm", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="Optuna study name in --storage")
    p.add_argument("--storage", default="sqlite:///studies.db", help="Optuna storage URL (default: sqlite:///studies.db)")
    p.add_argument("--seeds", type=int, default=5, help="repeats per Pareto-optimal trial (default 5)")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: ~/.cache/optuna-tl-search/features)")
    p.add_argument("--debug", action="store_true", help="tracebacks and the trial processes' output")
    return p.parse_args(argv)


def summarize(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return {"mean": statistics.fmean(vals) if vals else float("nan"),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


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
    pareto = sorted(study.best_trials, key=lambda t: t.number)
    if not pareto:
        raise UsageError(f"--study: study {args.study!r} has no (feasible) COMPLETE trials to confirm")
    from search.data import CLASS_NAMES

    ctx = obj.Context(config=config, cache_dir=cache_dir, cache_key=key,
                      n_classes=len(CLASS_NAMES[config.dataset.name]), target=0, debug=args.debug)
    seeds = [config.training.seed + i for i in range(1, args.seeds + 1)]
    names = repeat_metrics(config.metric_names)
    out: dict[str, Any] = {"seeds": seeds, "evaluation": config.training.evaluation, "trials": {}}
    for t in pareto:
        params = t.user_attrs["resolved_params"]
        runs = []
        for seed in seeds:
            spec = {**obj.trial_spec(ctx, params), "seed": seed}
            outcome = run_isolated("search.trial:run_trial", spec, echo_stderr=args.debug)
            runs.append({**outcome.result, "peak_memory_mb": outcome.peak_memory_mb})
            print(f"trial {t.number} seed {seed}: " + ", ".join(
                f"{m}={runs[-1][m]:.4g}" for m in config.metric_names), file=sys.stderr)
        out["trials"][str(t.number)] = {
            "params": t.params,
            "metrics": {m: summarize([r.get(m) for r in runs]) for m in names if any(m in r for r in runs)}}
        study.set_user_attr(CONFIRM_ATTR, out)  # after each trial, so an interrupted run keeps what it did
    _print(study.study_name, out, config.metric_names)
    return 0


def _print(name: str, out: dict[str, Any], metric_names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: Pareto-optimal trials over seeds {out['seeds']} (mean ± std)")
    cols = list(dict.fromkeys([*metric_names, "test_balanced_accuracy", "test_reduced_recall", "test_accuracy"]))
    table.add_column("trial", justify="right")
    table.add_column("params")
    for c in cols:
        table.add_column(c, justify="right")
    for number, entry in out["trials"].items():
        m = entry["metrics"]
        table.add_row(number, ", ".join(f"{k}={v}" for k, v in entry["params"].items()),
                      *(f"{m[c]['mean']:.4g} ± {m[c]['std']:.2g}" if c in m else "-" for c in cols))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


if __name__ == "__main__":
    sys.exit(main())
