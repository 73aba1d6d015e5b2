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
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from rich.console import Console

from search import api, signals
from search.errors import Interrupted, SearchError, StorageError, UsageError, cli_main
from search.progress import Display, PoolDisplay, interrupted_line, print_pareto
from search.runtime import resolve_backend
from search.study import snapshots, storage as sto
from search.study.lifecycle import counts
from search.workers import run_workers, worker_cpus

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


def main(argv: list[str] | None = None, *, trial_target: str | None = None) -> int:
    """``trial_target``: the "module:function" each trial process runs (default search.trial.child:run_trial)."""
    return cli_main(lambda args: _unmasked(args, trial_target), parse_args(argv))


def _unmasked(args: argparse.Namespace, trial_target: str | None) -> int:
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

    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if sto.out_of_space(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def make_search(args: argparse.Namespace, display: Any, trial_target: str | None) -> api.Search:
    """The flags as the API's Search (nothing read or created yet)."""
    config = api.load_config(args.study, weights=args.weights, seed=args.seed, n_trials=args.n_trials,
                             timeout=args.timeout, trial_timeout=args.trial_timeout)
    return api.Search(config, storage=args.storage, study_name=args.study_name, weights=args.weights,
                      data_dir=args.data_dir, cache_dir=args.cache_dir, backend=args.backend,
                      artifact_dir=args.artifact_dir, heartbeat=args.heartbeat, debug=args.debug,
                      on_message=display.message, on_event=display.on_event,
                      trial_target=trial_target, worker=args.worker,
                      workers=args.workers)


def _run(args: argparse.Namespace, trial_target: str | None) -> int:
    signals.install()
    check_flags(args)  # a bad input must leave no database behind
    display = _display(args)
    s = make_search(args, display, trial_target)
    s.prepare()      # the data, a resume with other settings refused, the one-time feature extraction
    study = s.open_study()
    if args.workers > 1 and not args.worker:
        return run_workers(args, study, display, s.config, s.target, s.url)
    display.start(study, s.target, s.config.metric_names)
    try:
        summary = s.optimize(cpus=worker_cpus(args.worker, args.workers), callbacks=[display.on_trial_end])
    except Interrupted as e:
        display.stop()
        print(interrupted_line(e, e.retried, counts(study)[TrialState.COMPLETE], s.target), file=sys.stderr)
        return e.exit_code
    display.stop()
    if not args.worker:
        print_pareto(study, s.config.metric_names)
    display.message(f"{summary.complete_after}/{s.target} COMPLETE trials "
                    f"({summary.ran} this run; stopped by {summary.stopped_by})"
                    + (f"; retried lost trials {summary.retried}" if summary.retried else "")
                    + snapshots.summary_text(study))
    return 0


def _display(args: argparse.Namespace) -> Display:
    if args.worker:  # a worker's parent shows the progress
        return Display(Console(file=open(os.devnull, "w")))
    return PoolDisplay(args.workers) if args.workers > 1 else Display()


if __name__ == "__main__":
    sys.exit(main())
