"""Command line: ``python -m search.run --study NAME`` creates or resumes a study and runs it to its target.

This module only wires the stages together: config -> data -> features ->
storage/study -> optimize -> summary.  Every failure a user can cause ends in
one line on stderr and a non-zero exit (2: usage/config, 1: runtime,
130/143: SIGINT/SIGTERM); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

from search import config as cfg
from search import signals
from search import data, features
from search.errors import Interrupted, SearchError, StorageError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        # One line, like every other error; the full usage is one --help away.
        self.exit(UsageError.exit_code, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="config name in study_configs/ (or a path to a .toml file)")
    p.add_argument("--study-name", help="Optuna study name (default: the config name)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///studies.db)")
    p.add_argument("--n-trials", type=int, help="target number of COMPLETE trials (default: the config's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--weights", help="backbone weights: imagenet, random, or a local file (default: the config's)")
    p.add_argument("--data-dir", type=Path, help="directory holding the dataset files")
    p.add_argument("--cache-dir", type=Path, help="feature cache directory (default: ~/.cache/optuna-tl-search/features)")
    p.add_argument("--seed", type=int, help="seed of the data split, initialisation and sampler")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between trial heartbeats; a trial silent for 3x this is retried (default 10)")
    p.add_argument("--artifact-dir", type=Path,
                   help="where trial pictures are stored (default: <db name>-artifacts/ beside a SQLite file)")
    p.add_argument("--backend", help="Keras backend the trials train on: jax, tensorflow or torch "
                                      "(default: $KERAS_BACKEND, else jax)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine, sharing the study and its target (default 1)")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # internal: worker I of --workers N
    p.add_argument("--debug", action="store_true", help="show tracebacks and the trial processes' output")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # a worker runs the same command (search.workers)
    return a


def _check_flags(a: argparse.Namespace) -> None:
    if a.n_trials is not None and a.n_trials <= 0:
        raise UsageError(f"--n-trials: must be positive, got {a.n_trials}")
    if a.timeout is not None and not (math.isfinite(a.timeout) and a.timeout > 0):
        raise UsageError(f"--timeout: must be a positive number of seconds, got {a.timeout}")
    if a.workers <= 0:
        raise UsageError(f"--workers: must be positive, got {a.workers}")
    if a.heartbeat <= 0:
        raise UsageError(f"--heartbeat: must be positive, got {a.heartbeat}")
    if a.data_dir is not None and not a.data_dir.is_dir():
        raise UsageError(f"--data-dir: {a.data_dir} is not a directory")
    from search.head import resolve_backend

    a.backend = resolve_backend(a.backend)


def default_study_name(config_name: str, weights: str | None) -> str:
    """The config name; with --weights, a suffix, so results of other weights never share a study."""
    if weights is None:
        return config_name
    if weights in ("imagenet", "random"):
        return f"{config_name}-{weights}"
    return f"{config_name}-{Path(weights).stem}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except SearchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except AssertionError as e:
        # Optuna hides a failed final write of a trial behind AssertionError('Should not reach.').
        real = e.__context__
        if args.debug or real is None:
            raise
        print(f"error: storage write failed: {type(real).__name__}: {str(real).splitlines()[0]}", file=sys.stderr)
        return StorageError.exit_code


def _run(args: argparse.Namespace) -> int:
    from search.progress import Display

    signals.install()

    # 1. Validate everything that needs no storage: a bad input must leave no database behind.
    _check_flags(args)
    config = cfg.load_config(args.study)
    if args.weights:
        config = config.with_weights(args.weights)
    if args.seed is not None:
        config = config.with_seed(args.seed)
    if args.n_trials is not None:
        config = config.with_run(n_trials=args.n_trials)
    if args.timeout is not None:
        config = config.with_run(timeout=args.timeout)
    study_name = cfg.check_study_name(args.study_name if args.study_name is not None
                                      else default_study_name(config.name, args.weights))

    from search.study import DEFAULT_STORAGE, check_storage_url

    storage_url = check_storage_url(args.storage or DEFAULT_STORAGE)
    weights = features.resolve_weights(config.backbone.weights)
    display = Display(_quiet_console()) if args.worker else Display()  # a worker's parent shows progress

    # 2. Data and the one-time feature extraction (in its own process).
    pooled = data.load_pooled(config.dataset.name, args.data_dir, config.dataset.subset)
    n_classes = len(data.CLASS_NAMES[config.dataset.name])
    fingerprint = pooled.fingerprint()
    cache_dir = (args.cache_dir or features.default_cache_dir()).resolve()
    key = features.cache_key(config.dataset.name, config.dataset.subset, config.preprocessing.name,
                             config.preprocessing.resize, weights, fingerprint)
    display.message(f"data: {config.dataset.name} from {pooled.source}, {len(pooled.labels)} images, "
                    f"classes {data.class_counts(pooled.labels, n_classes)}; weights {weights.identity}")
    from search import study as st

    # A resume with other settings is refused before the (possibly long) feature extraction.
    if not args.worker:  # a worker's parent has checked; create_or_resume checks again below
        st.check_resume(storage_url, study_name, st.identity(config, weights.identity, fingerprint))
    _ensure_features(args, config, pooled, weights, cache_dir, key, display)

    # 3. Storage and study.
    import optuna

    from search import objective as obj
    from search.samplers import make_sampler
    from search.workers import worker_sampler_config

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = st.open_storage(storage_url, heartbeat_interval=args.heartbeat)
    ident = st.identity(config, weights.identity, fingerprint)
    sampler = make_sampler(worker_sampler_config(config, args.worker))
    study, created = st.create_or_resume(storage, study_name, config, ident, sampler)
    if created:
        study.set_user_attr("search:data", {"source": pooled.source, "n_images": int(len(pooled.labels)),
                                            "class_names": list(data.CLASS_NAMES[config.dataset.name]),
                                            "class_counts": data.class_counts(pooled.labels, n_classes)})
    display.message(f"study {study_name!r} ({'new' if created else 'resumed'}) in {st._masked(storage_url)}; "
                    f"trials train on Keras/{args.backend}")

    # 4. Optimize until the target of COMPLETE trials is reached.
    from search import artifacts

    ctx = obj.Context(config=config, cache_dir=cache_dir, cache_key=key, n_classes=n_classes,
                      target=config.run.n_trials, debug=args.debug,
                      artifact_dir=artifacts.prepare(study, storage_url, args.artifact_dir),
                      backend=args.backend)
    if args.workers > 1 and not args.worker:
        from search.workers import run_workers

        return run_workers(args, study, display, config)
    display.start(study, config.run.n_trials, config.metric_names)
    try:
        summary = st.optimize(study, obj.make_objective(ctx, display.on_event), config.run.n_trials,
                              config.run.timeout, config.run.max_consecutive_failures,
                              callbacks=[display.on_trial_end])
    except Interrupted as e:
        display.stop()
        retried = st.fail_own_trials(study, str(e))
        done = st.counts(study)[optuna.trial.TrialState.COMPLETE]
        what = f"trial(s) {', '.join(map(str, retried))} recorded as failed and queued for retry; " if retried else ""
        print(f"{e}: {what}{done}/{config.run.n_trials} COMPLETE; run the same command to resume",
              file=sys.stderr)
        return e.exit_code
    display.stop()
    if study.best_trials and not args.worker:
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 200).print(_pareto(study, config.metric_names))
    display.message(f"{summary.complete_after}/{config.run.n_trials} COMPLETE trials "
                    f"({summary.complete_after - summary.complete_before} this run; stopped by {summary.stopped_by})"
                    + (f"; retried lost trials {summary.retried}" if summary.retried else ""))
    return 0


def _quiet_console():
    import os

    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def _pareto(study, metric_names):
    from search.progress import pareto_table

    return pareto_table(study, metric_names)


def _ensure_features(args, config, pooled, weights, cache_dir, key, display) -> None:
    from search.isolate import run_isolated

    def build(tmp: Path) -> None:
        spec = {"dataset": config.dataset.name, "data_dir": str(args.data_dir) if args.data_dir else None,
                "subset": config.dataset.subset, "subset_seed": 0,
                "preprocessing": config.preprocessing.name, "resize": config.preprocessing.resize,
                "weights": vars(weights), "out_dir": str(tmp)}
        start = time.perf_counter()
        outcome = run_isolated("search.features:extract_job", spec, display.on_event, echo_stderr=args.debug)
        display.message(f"features cached in {cache_dir / key} (extraction {time.perf_counter() - start:.1f} s, "
                        f"peak memory {outcome.peak_memory_mb:.0f} MB)")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features.ensure_cached(cache_dir, key, build)
    for w in caught:
        display.message(f"warning: {w.message}")


if __name__ == "__main__":
    sys.exit(main())
