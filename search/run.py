"""Command line: ``python -m search.run --study NAME`` creates or resumes a study and runs it to its target.

This module only wires the stages together: config -> data -> features ->
storage/study -> optimize -> summary.  Every failure a user can cause ends in
one line on stderr and a non-zero exit (2: usage/config, 1: runtime,
130/143: SIGINT/SIGTERM); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

from search import config as cfg
from search import data, features, isolate, signals, snapshots
from search.errors import Interrupted, SearchError, StorageError, UsageError, cli_main

MAX_WORKERS_PER_CORE = 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        # One line, like every other error; the full usage is one --help away.
        self.exit(UsageError.exit_code, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="config name in study_configs/ (or a path to a .toml file)")
    p.add_argument("--study-name", help="Optuna study name (default: the config name)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: $SEARCH_STORAGE, else sqlite:///studies.db)")
    p.add_argument("--n-trials", type=int, help="target number of COMPLETE trials (default: the config's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--trial-timeout", type=float,
                   help="kill a trial after this many seconds (default: the config's, else 10x the slowest trial)")
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


def check_flags(a: argparse.Namespace) -> None:
    """Every flag checked before anything is read or created."""
    from search.head import resolve_backend

    cores = len(os.sched_getaffinity(0))
    if a.n_trials is not None and not 0 < a.n_trials <= 100_000:
        raise UsageError(f"--n-trials: must be 1-100000, got {a.n_trials}")
    for flag, value in (("--timeout", a.timeout), ("--trial-timeout", a.trial_timeout)):
        if value is not None and not (math.isfinite(value) and 0 < value <= 30 * 86400):
            raise UsageError(f"{flag}: must be a positive number of seconds up to 30 days, got {value}")
    if not 0 < a.workers <= MAX_WORKERS_PER_CORE * cores:
        raise UsageError(f"--workers: must be 1-{MAX_WORKERS_PER_CORE * cores} on this machine's {cores} cores "
                         f"(each worker holds its trial's training rows in memory), got {a.workers}")
    if not 0 < a.heartbeat <= 3600:
        raise UsageError(f"--heartbeat: must be 1-3600 seconds, got {a.heartbeat}")
    if a.seed is not None and not 0 <= a.seed < 2 ** 32:
        raise UsageError(f"--seed: must be 0-{2 ** 32 - 1}, got {a.seed}")
    if a.data_dir is not None and not a.data_dir.is_dir():
        raise UsageError(f"--data-dir: {a.data_dir} is not a directory")
    try:
        a.backend = resolve_backend(a.backend)
    except UsageError as e:
        raise UsageError(f"--backend: {e}") from None


def default_study_name(config_name: str, weights: str | None) -> str:
    """The config name; with --weights, a suffix, so results of other weights never share a study."""
    if weights is None:
        return config_name
    if weights in ("imagenet", "random"):
        return f"{config_name}-{weights}"
    return f"{config_name}-{cfg.safe_name(Path(weights).stem)}"


def main(argv: list[str] | None = None, *, trial_target: str | None = None) -> int:
    """``trial_target``: the "module:function" each trial process runs (default search.trial:run_trial)."""
    return cli_main(lambda args: _unmasked(args, trial_target), parse_args(argv))


def _unmasked(args: argparse.Namespace, trial_target: str | None) -> int:
    from search import storage as sto

    _quiet_full_disk_in_threads()
    try:
        return _run(args, trial_target)
    except SearchError:
        raise
    except Exception as e:
        if (where := sto.out_of_space(e)) is not None:
            raise sto.no_space(where or sto.mask(sto.storage_url(args.storage))) from e
        if not isinstance(e, AssertionError) or e.__context__ is None:
            raise
        # Optuna hides a failed final write of a trial behind AssertionError('Should not reach.').
        real = e.__context__
        raise StorageError(f"storage write failed: {type(real).__name__}: {str(real).splitlines()[0]}") from e


def _quiet_full_disk_in_threads() -> None:
    """Optuna's heartbeat thread prints a traceback when a write fails; a full disk is said once, by the run."""
    import threading

    from search.storage import out_of_space

    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if out_of_space(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def load_settings(args: argparse.Namespace) -> cfg.StudyConfig:
    config = cfg.load_config(args.study)
    if args.weights:
        config = config.with_weights(args.weights)
    if args.seed is not None:
        config = config.with_seed(args.seed)
    if args.n_trials is not None:
        config = config.with_run(n_trials=args.n_trials)
    if args.timeout is not None:
        config = config.with_run(timeout=args.timeout)
    if args.trial_timeout is not None:
        config = config.with_run(trial_timeout=args.trial_timeout)
    return config


def _run(args: argparse.Namespace, trial_target: str | None) -> int:
    from search import storage as sto
    from search.progress import Display

    signals.install()

    # 1. Validate everything that needs no storage: a bad input must leave no database behind.
    check_flags(args)
    config = load_settings(args)
    study_name = cfg.check_study_name(args.study_name if args.study_name is not None
                                      else default_study_name(config.name, args.weights))
    url = sto.check_url(sto.storage_url(args.storage))
    sto.check_sqlite(url)  # before the data are read: a damaged file is the one thing said
    if "trial_memory_mb" in config.metric_names and not isolate.can_reset_peak():
        raise UsageError(f"study {config.name}: objective trial_memory_mb needs /proc/self/clear_refs (Linux >= 4.0), "
                         "which this system does not allow; use peak_memory_mb instead")
    weights = features.resolve_weights(config.backbone.weights)
    runtime = features.runtime_identity(args.backend)
    display = Display(_quiet_console()) if args.worker else Display()  # a worker's parent shows progress

    # 2. Data and the one-time feature extraction (in its own process).
    pooled = data.load_pooled(config.dataset.name, args.data_dir, config.dataset.subset)
    info = data.DATASETS[config.dataset.name]
    fingerprint = pooled.fingerprint()
    cache_dir = (args.cache_dir or features.default_cache_dir()).resolve()
    key = features.cache_key(config.dataset.name, config.dataset.subset, config.preprocessing.name,
                             config.preprocessing.resize, weights, fingerprint, runtime)
    display.message(f"data: {config.dataset.name} from {pooled.source}, {len(pooled.labels)} images, "
                    f"classes {data.class_counts(pooled.labels, info.n_classes)}; weights {weights.identity}")
    from search import study as st
    from search.config import study_identity

    ident = study_identity(config, weights.identity, fingerprint, runtime)
    # A resume with other settings is refused before the (possibly long) feature extraction.
    if not args.worker:  # a worker's parent has checked; create_or_resume checks again below
        st.check_resume(url, study_name, ident)
    extra_spec = _ensure_features(args, config, weights, cache_dir, key, display, fingerprint, runtime)

    # 3. Storage and study.
    import optuna

    from search import objective as obj
    from search import samplers
    from search.workers import worker_cpus

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = sto.open_storage(url, heartbeat_interval=args.heartbeat, max_retry=config.run.max_retries)
    sampler = samplers.ProcessSeeded(config)
    study, created = st.create_or_resume(storage, study_name, config, ident, sampler, extra_attrs={
        "search:data": {"source": pooled.source, "n_images": int(len(pooled.labels)),
                        "class_names": list(info.class_names),
                        "class_counts": data.class_counts(pooled.labels, info.n_classes)}})
    target = samplers.target(config)
    display.message(f"study {study_name!r} ({'new' if created else 'resumed'}) in {sto.mask(url)}; "
                    f"objectives on the {config.objective_split} split; trials train on Keras/{args.backend}")

    # 4. Optimize until the target of COMPLETE trials is reached.
    from search import artifacts

    ctx = obj.Context(config=config, cache_dir=cache_dir, cache_key=key, n_classes=info.n_classes,
                      class_names=info.class_names, target=target, debug=args.debug,
                      artifact_dir=artifacts.prepare(study, url, args.artifact_dir), backend=args.backend,
                      weights=weights.identity, cpus=worker_cpus(args.worker, args.workers),
                      heartbeat_s=args.heartbeat, trial_target=trial_target or obj.TRIAL_TARGET,
                      extra_spec=extra_spec)
    if config.sampler.name == "grid" and not args.worker:
        st.queue_grid_points(study, config, target)
    if args.workers > 1 and not args.worker:
        from search.workers import run_workers

        return run_workers(args, study, display, config, target, url)
    display.start(study, target, config.metric_names)
    policy = st.RetryPolicy(grid=config.sampler.name == "grid", max_retries=config.run.max_retries,
                            max_failures=config.run.max_consecutive_failures)
    try:
        summary = st.optimize(study, obj.make_objective(ctx, display.on_event), target, config.run.timeout,
                              policy, callbacks=[display.on_trial_end])
    except Interrupted as e:
        display.stop()
        retried = st.fail_own_trials(study, str(e))
        done = st.counts(study)[optuna.trial.TrialState.COMPLETE]
        what = f"trial(s) {', '.join(map(str, retried))} recorded as failed and queued for retry; " if retried else ""
        print(f"{e}: {what}{done}/{target} COMPLETE; run the same command to resume", file=sys.stderr)
        return e.exit_code
    display.stop()
    if study.best_trials and not args.worker:
        from rich.console import Console

        from search.progress import pareto_table

        Console(width=None if sys.stdout.isatty() else 200).print(pareto_table(study, config.metric_names))
    display.message(f"{summary.complete_after}/{target} COMPLETE trials "
                    f"({summary.ran} this run; stopped by {summary.stopped_by})"
                    + (f"; retried lost trials {summary.retried}" if summary.retried else "")
                    + snapshots.summary_text(study))
    return 0


def _quiet_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def _ensure_features(args, config, weights, cache_dir, key, display, fingerprint, runtime) -> dict:
    """The plain feature cache, and the augmented-view cache when a trial can use views; returns what trials
    need beyond the plain cache (search.augment.extra_spec)."""
    from search import augment
    from search.isolate import run_isolated

    def builder(target: str, spec: dict, what: str, entry: str):
        def build(tmp: Path) -> None:
            start = time.perf_counter()
            outcome = run_isolated(target, {**spec, "out_dir": str(tmp)}, display.on_event, echo_stderr=args.debug,
                                   env={"KERAS_BACKEND": features.extraction_backend()})
            display.message(f"{what} cached in {cache_dir / entry} (extraction {time.perf_counter() - start:.1f} s, "
                            f"peak memory {outcome.peak_memory_mb:.0f} MB)")
        return build

    plain = {"dataset": config.dataset.name, "data_dir": str(args.data_dir) if args.data_dir else None,
             "subset": config.dataset.subset, "subset_seed": 0,
             "preprocessing": config.preprocessing.name, "resize": config.preprocessing.resize,
             "weights": vars(weights)}
    entries = [(key, builder("search.features:extract_job", plain, "features", key))]
    views_key = None
    if "views" in augment.modes_used(config):
        views_key = augment.view_key(config, weights, fingerprint, runtime)
        entries.append((views_key, builder("search.features:extract_views_job",
                                           augment.views_job_spec(config, weights, args.data_dir),
                                           f"{config.augmentation.views} augmented views", views_key)))
    for entry, build in entries:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            features.ensure_cached(cache_dir, entry, build)
        for w in caught:
            display.message(f"warning: {w.message}")
    return augment.extra_spec(config, views_key=views_key, weights=weights, fingerprint=fingerprint,
                              data_dir=args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
