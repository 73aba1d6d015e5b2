"""Study lifecycle: create or resume a study, recover lost trials, retry failed ones, optimize to the target.

Guarantees (see docs/reliability.md):
- A study records its identity (search.config.identity) when it is created,
  under deferred signals, so no study exists without one; resuming with
  another identity is refused with the list of differences, before any work.
- The target is a number of COMPLETE trials shared by every worker; epoch
  snapshots do not count.  A grid study runs every point exactly once: a
  failed point is retried with the same parameters up to ``run.max_retries``
  times, then the run stops naming the point; a point is never COMPLETE twice.
  A trial killed by the kernel or its time limit is retried the same way in
  any sampler.
- A trial whose process died is failed and retried with the same parameters:
  at once when its owner on this host is gone, else by Optuna's heartbeat.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import signals
from search.config import StudyConfig, differences
from search.errors import DriftError, SearchError, TooManyFailures, TrialFailed
from search.study import optuna_compat as compat
from search.study.storage import check_url, dispose, open_storage
from search.study.trials import OWNER_ATTR, attempts, counted, fail_and_retry, n_counted, owner_alive, retry

IDENTITY_ATTR = "search:identity"
CONFIG_ATTR = "search:config"
SPLIT_ATTR = "search:objective_split"
POLL_S = 1.0
OWNERLESS_AFTER_S = 120
# Failure kinds (search.errors.TrialFailed.kind) retried with the same parameters in any sampler:
# the parameters were not at fault.  A grid retries every kind: each point must be measured.
RETRIED_KINDS = ("killed", "timeout", "lost")


class GridPointFailed(SearchError):
    """A grid point failed on every allowed attempt."""


# ---------------------------------------------------------------- create / resume

def check_resume(url: str, study_name: str, ident: dict[str, Any]) -> None:
    """Refuse a resume with other settings before any expensive work; creates nothing."""
    from sqlalchemy.engine import make_url

    u = make_url(check_url(url))
    if u.get_backend_name() == "sqlite" and not Path(u.database).exists():
        return  # no file, no study: nothing to compare with, and nothing may be created yet
    storage = open_storage(url)
    try:
        try:
            storage.get_study_id_from_name(study_name)
        except KeyError:
            return
        _compare(optuna.load_study(study_name=study_name, storage=storage), study_name, ident, write=False)
    finally:
        dispose(storage)


def _compare(study: optuna.Study, study_name: str, ident: dict[str, Any], write: bool = True) -> None:
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        if not study.user_attrs and not study.get_trials(deepcopy=False):
            # Created by this service, which then died before writing the identity (kill -9): adopt it.
            if write:
                study.set_user_attr(IDENTITY_ATTR, ident)
            return
        raise DriftError(f"study {study_name!r} in this storage was not created by this service; "
                         f"use --study-name to start a new one")
    if "runtime" not in stored:
        stored = _adopt_runtime(study, stored, ident, write)
    diffs = differences(stored, ident)
    if diffs:
        raise DriftError(f"study {study_name!r} was created with other settings ({'; '.join(diffs)}); "
                         f"resume it with its own settings, or start a new study with --study-name NEW_NAME")


def _adopt_runtime(study: optuna.Study, stored: dict[str, Any], ident: dict[str, Any], write: bool) -> dict:
    """A study from before runtimes were recorded: it takes this runtime if its trials trained on this backend."""
    backends = {t.user_attrs.get("keras_backend") for t in study.get_trials(deepcopy=False)
                if t.state == TrialState.COMPLETE}
    backends.discard(None)
    if backends and backends != {ident["runtime"]["trial_backend"]}:
        return {**stored, "runtime": {"trial_backend": "/".join(sorted(backends))}}
    adopted = {**stored, "runtime": ident["runtime"]}
    if write:
        study.set_user_attr(IDENTITY_ATTR, adopted)
    return adopted


def _load_and_compare(storage: optuna.storages.BaseStorage, study_name: str,
                      sampler: optuna.samplers.BaseSampler, ident: dict[str, Any]) -> optuna.Study:
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    # A study created this instant by another process gets its identity a moment after its name.
    deadline = time.monotonic() + 10
    while IDENTITY_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)
    _compare(study, study_name, ident)
    return study


def create_or_resume(storage: optuna.storages.BaseStorage, study_name: str, config: StudyConfig,
                     ident: dict[str, Any], sampler: optuna.samplers.BaseSampler,
                     extra_attrs: dict[str, Any] | None = None) -> tuple[optuna.Study, bool]:
    """Return (study, created).  A stored study must have the same identity."""
    try:
        storage.get_study_id_from_name(study_name)
        exists = True
    except KeyError:
        exists = False
    if exists:
        return _load_and_compare(storage, study_name, sampler, ident), False
    with signals.deferred():  # a Ctrl-C here must not leave a study without its identity
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                        directions=config.directions)
        except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago
            return _load_and_compare(storage, study_name, sampler, ident), False
        study.set_user_attr(IDENTITY_ATTR, ident)
        study.set_metric_names(config.metric_names)
        study.set_user_attr(CONFIG_ATTR, config.as_json())
        study.set_user_attr(SPLIT_ATTR, config.objective_split)
        for k, v in (extra_attrs or {}).items():
            study.set_user_attr(k, v)
    return study, True


# ---------------------------------------------------------------- lost trials

def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Retry at once the RUNNING trials whose owner process on this host is gone."""
    host = socket.gethostname()
    recovered = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER_ATTR)
        if owner and owner.get("host") == host and not owner_alive(owner):
            reason = f"owner process {owner.get('pid')} died"
        elif (owner is None and t.datetime_start is not None
              and (now - t.datetime_start).total_seconds() > OWNERLESS_AFTER_S):
            # A worker records its owner milliseconds after Optuna creates the trial; one still
            # without an owner much later lost its process in that gap (kill -9) and has no heartbeat.
            reason = "its process died before the trial started"
        else:
            continue
        with signals.deferred():  # the failure and its retry belong together
            if fail_and_retry(study, t, reason):
                recovered.append(t.number)
    return recovered + requeue_unretried(study)


def requeue_unretried(study: optuna.Study) -> list[int]:
    """Queue the retry of FAIL trials that were lost or interrupted but never queued (a crash in between)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if (t.user_attrs.get("fail_kind") in ("lost", "interrupted") or t.user_attrs.get("interrupted")) \
                and retry(study, t):
            out.append(t.number)
    return out


def fail_own_trials(study: optuna.Study, reason: str) -> list[int]:
    """On interruption: this process's trials are failed-and-retriable, never left RUNNING."""
    me, host = os.getpid(), socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False):
        owner = t.system_attrs.get(OWNER_ATTR) or {}
        if owner.get("pid") != me or owner.get("host") != host:
            continue
        if t.state == TrialState.RUNNING:
            if fail_and_retry(study, t, reason, kind="interrupted"):
                out.append(t.number)
        elif t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and retry(study, t):
            # Optuna already failed it when the signal's exception left the objective, which had
            # stored the reason (a finished trial takes no more attributes).
            out.append(t.number)
    return out


# ---------------------------------------------------------------- grids

def queue_grid_points(study: optuna.Study, config: StudyConfig, target: int) -> int:
    """Queue (in the config's order) the grid points not yet COMPLETE, RUNNING or queued, up to the target.

    A run works through this queue, so every point is tried once per run with a fresh
    retry budget, whatever Optuna's GridSampler thinks it has visited (it counts a FAIL
    as done and then re-samples done points).  Returns how many were queued.
    """
    import itertools

    from search.study.samplers import grid_space

    space = grid_space(config)
    taken = [t.params or t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)
             if (t.state == TrialState.COMPLETE and counted(t)) or t.state in (TrialState.RUNNING, TrialState.WAITING)]
    room = target - len(taken)
    queued = 0
    for values in itertools.product(*space.values()):
        if queued >= room:
            break
        point = dict(zip(space, values))
        if not any(all(p.get(k) == v for k, v in point.items()) for p in taken):
            study.enqueue_trial(point)
            queued += 1
    return queued


# ---------------------------------------------------------------- optimize

def counts(study: optuna.Study) -> dict[TrialState, int]:
    """Trials per state; COMPLETE counts only trials that count toward the target (no snapshots)."""
    out = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE or counted(t):
            out[t.state] += 1
    return out


@dataclass
class RetryPolicy:
    """Optuna callback: retry failed trials whose parameters were not at fault; stop on repeated failures.

    - a grid trial that failed for any reason, and a trial of any sampler killed by the kernel or its
      time limit, is queued again with the same parameters until it has had ``1 + max_retries`` attempts;
      a grid point that fails on its last attempt stops the run (``error``);
    - ``max_failures`` failed trials in a row stop the run with the last reason.
    """

    grid: bool
    max_retries: int
    max_failures: int
    streak: int = 0
    last_reason: str = ""
    error: SearchError | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.streak = 0
            return
        if trial.state != TrialState.FAIL:
            return
        kind = trial.user_attrs.get("fail_kind", "error")
        reason = trial.user_attrs.get("fail_reason", "unknown reason")
        if kind == "interrupted":
            return  # the user stopped it; fail_own_trials queues it again
        self.streak += 1
        self.last_reason = reason
        if self.grid or kind in RETRIED_KINDS:
            if attempts(trial) <= self.max_retries:
                retry(study, trial)
            elif self.grid:
                point = ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items()))
                self.error = GridPointFailed(f"grid point {point} failed {attempts(trial)} times; last: {reason}")
        if self.error is None and self.streak >= self.max_failures:
            self.error = TooManyFailures(f"stopped after {self.streak} consecutive failed trials; last: {reason}")
        if self.error is not None:
            study.stop()


@dataclass
class RunSummary:
    """What one ``optimize`` call did: COMPLETE trials before and after, how many it ran, why it stopped."""

    complete_before: int
    complete_after: int = 0
    stopped_by: str = "target"
    retried: list[int] = field(default_factory=list)
    ran: int = 0  # COMPLETE trials this process ran (others may complete trials of the study meanwhile)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An optimize callback: Optuna calls it for this process's trials only."""
        if trial.state == TrialState.COMPLETE and counted(trial):
            self.ran += 1


def optimize(study: optuna.Study, objective: Callable, target: int, timeout: float | None,
             policy: RetryPolicy, callbacks: list[Callable] = ()) -> RunSummary:
    """Run trials until the study holds ``target`` COMPLETE trials (across all workers)."""
    start = time.monotonic()
    summary = RunSummary(complete_before=n_counted(study))
    summary.retried = recover_dead_trials(study)
    while True:
        c = counts(study)
        done, running = c[TrialState.COMPLETE], c[TrialState.RUNNING]
        if done >= target:
            break
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if left is not None and left <= 0:
            summary.stopped_by = "timeout"
            break
        if done + running >= target:
            # Other workers hold the remaining slots; wait, failing their trials if they died.
            optuna.storages.fail_stale_trials(study)
            recover_dead_trials(study)
            time.sleep(POLL_S)
            continue
        n_before = len(study.get_trials(deepcopy=False))
        try:
            with signals.deferred():  # see search/signals.py: no ownerless RUNNING trial on Ctrl-C
                study.optimize(objective, n_trials=target - done - running, timeout=left,
                               catch=(TrialFailed,), callbacks=[policy, summary, *callbacks])
        except ValueError as e:
            # Another process failed our running trial (a stale-heartbeat sweep) and Optuna refuses to
            # tell it; the objective already recorded its result on the retry (search.study.trials).
            if not compat.is_cannot_tell(e):
                raise
        if policy.error is not None:
            raise policy.error
        if len(study.get_trials(deepcopy=False)) == n_before:
            summary.stopped_by = "sampler has nothing left to try"
            break
    summary.complete_after = n_counted(study)
    return summary
