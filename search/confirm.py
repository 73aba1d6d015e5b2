"""Command line: ``python -m search.confirm --study NAME --seeds 5`` repeats chosen trials with other seeds.

Re-runs each Pareto-optimal trial's parameters (or the trials named with
``--trials``, or ``--all`` COMPLETE trials; an epoch snapshot re-trains with its
own ``epochs``) with seeds ``study seed + 1 .. + N``, each in its own process
like any trial, stores every run (search.repeats), and prints per trial and
measure the mean, standard deviation and 95% t-interval, then the differences
between confirmed trials one parameter apart, paired by seed.  The study's
trials (what the sampler saw) are not changed.  The features must be in the
cache that ``search.run`` filled (same ``--cache-dir``); they are verified
before use.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from search.errors import DataError, SearchError, TrialFailed, UsageError, cli_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.confirm", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="Optuna study name in --storage")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: $SEARCH_STORAGE, else sqlite:///studies.db)")
    p.add_argument("--seeds", type=int, default=5, help="repeats per trial (default 5)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trials", help="comma-separated trial numbers to confirm (default: the Pareto set)")
    which.add_argument("--all", action="store_true", help="confirm every COMPLETE trial")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: ~/.cache/optuna-tl-search/features)")
    p.add_argument("--debug", action="store_true", help="tracebacks and the trial processes' output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli_main(_run, parse_args(argv))


# What of a study's recorded runtime its repeats' times depend on (the extraction's backend matters only for the
# cache, which is verified apart).
TIMED_RUNTIME = ("keras", "train_steps_per_call")


def _check_runtime(study_name: str, runtime: dict[str, str]) -> None:
    """Refuse repeats timed on another runtime than the study's trials: they would sit next to them as equals."""
    from search.config import differences
    from search.errors import DriftError
    from search.features import runtime_identity

    backend = runtime.get("trial_backend", "tensorflow")
    fields = (*TIMED_RUNTIME, backend)
    now = runtime_identity(backend)
    diffs = differences({"runtime": {k: runtime[k] for k in fields if k in runtime}},
                        {"runtime": {k: now[k] for k in fields if k in now}})
    if diffs:
        raise DriftError(f"study {study_name!r} was measured on another runtime ({'; '.join(diffs)}): repeats "
                         f"timed here would not compare with its trials; confirm it where it was run")


def _run(args: argparse.Namespace) -> int:
    import optuna

    from search import augment, features, repeats, storage
    from search import objective as obj
    from search.config import StudyConfig, check_study_name
    from search.data import DATASETS
    from search.isolate import run_isolated
    from search.study import CONFIG_ATTR, IDENTITY_ATTR

    check_study_name(args.study, "--study")
    if not 0 < args.seeds <= 100:
        raise UsageError(f"--seeds: must be 1-100, got {args.seeds}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = storage.load_study(storage.open_existing(storage.storage_url(args.storage)), args.study)
    stored, ident = study.user_attrs.get(CONFIG_ATTR), study.user_attrs.get(IDENTITY_ATTR)
    if not stored or not ident:
        raise UsageError(f"--study: study {args.study!r} was not created by search.run")
    config = StudyConfig.model_validate(stored)
    runtime = ident.get("runtime") or features.runtime_identity("tensorflow")
    _check_runtime(args.study, runtime)
    weights = features.Weights("recorded", None, ident["backbone"]["weights"])
    cache_dir = (args.cache_dir or features.default_cache_dir()).resolve()
    key = features.cache_key(config.dataset.name, config.dataset.subset, config.preprocessing.name,
                             config.preprocessing.resize, weights, ident["data_fingerprint"], runtime)
    # Augmented trials also need the view cache (views) or the images and the real weights (online).
    modes = augment.modes_used(config)
    views_key = augment.view_key(config, weights, ident["data_fingerprint"], runtime) if "views" in modes else None
    for entry in filter(None, (key, views_key)):
        try:
            features.FeatureStore(cache_dir, entry).verify_all()
        except SearchError as e:
            raise DataError(f"features of study {args.study!r} are not usable in {cache_dir} ({entry}): {e}; "
                            f"run search.run for it with the same --cache-dir first") from None
    online_weights = features.resolve_weights(config.backbone.weights) if "online" in modes else weights
    extra = augment.extra_spec(config, views_key=views_key, weights=online_weights,
                               fingerprint=ident["data_fingerprint"], data_dir=None)
    chosen = _choose(study, args)
    info = DATASETS[config.dataset.name]
    ctx = obj.Context(config=config, cache_dir=cache_dir, cache_key=key, n_classes=info.n_classes,
                      class_names=info.class_names, target=0, debug=args.debug, extra_spec=extra)
    seeds = [config.training.seed + i for i in range(1, args.seeds + 1)]
    for t in chosen:
        params = t.user_attrs["resolved_params"]
        backend = t.user_attrs.get("keras_backend") or runtime["trial_backend"]
        for seed in seeds:
            spec = {**obj.trial_spec(ctx, params), "seed": seed}
            try:
                outcome = run_isolated(obj.TRIAL_TARGET, spec, env={"KERAS_BACKEND": backend}, echo_stderr=args.debug)
            except TrialFailed as e:
                repeats.store_run(study, t.number, seed, t.params, None, error=str(e))
                print(f"trial {t.number} seed {seed}: FAILED: {e}", file=sys.stderr)
                continue
            result = obj.measures(outcome)
            repeats.store_run(study, t.number, seed, t.params, result)
            print(f"trial {t.number} seed {seed}: " + ", ".join(
                f"{m}={result[m]:.4g}" for m in config.metric_names), file=sys.stderr)
    summary = repeats.confirmed(study.user_attrs)
    _print(study.study_name, summary, config.metric_names)
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


def _print(name: str, summary: dict[str, Any], metric_names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from search.repeats import differences

    table = Table(title=f"{name}: confirmed trials (mean ± std [95% interval] over the seeds run)")
    cols = list(dict.fromkeys([*metric_names, "test_balanced_accuracy", "test_reduced_recall", "test_accuracy"]))
    for c in ("trial", "params", "seeds", *cols):
        table.add_column(c, justify="right" if c != "params" else "left")
    for number, entry in summary["trials"].items():
        m = entry["metrics"]
        failed = f" (failed: {', '.join(entry['failed'])})" if entry["failed"] else ""
        table.add_row(number, ", ".join(f"{k}={v}" for k, v in entry["params"].items()),
                      f"{len(entry['seeds']) - len(entry['failed'])}{failed}",
                      *(interval(m[c]) if c in m else "-" for c in cols))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    diffs = differences(summary, cols)
    if diffs:
        t = Table(title="Trials one parameter apart: difference of means (b - a), 95% interval, paired by seed")
        for c in ("metric", "parameter", "a", "b", "difference", "95% interval", "test", "verdict"):
            t.add_column(c)
        for d in diffs:
            note = f"; seeds in one arm only: {', '.join(d.missing)}" if d.missing else ""
            t.add_row(d.metric, d.param, f"{d.a_value} (trial {d.a})", f"{d.b_value} (trial {d.b})",
                      f"{d.diff:+.4g}", f"[{d.low:+.4g}, {d.high:+.4g}]", f"{d.test}, n={d.n}{note}", d.verdict)
        console.print(t)


if __name__ == "__main__":
    sys.exit(main())
