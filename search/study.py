"""Storage and study lifecycle: open the storage, create or resume the study, recover lost trials, optimize.

Guarantees (see README, "Reliability"):
- Storage is an Optuna RDB storage (SQLite by default, PostgreSQL/MySQL by URL)
  with Optuna's heartbeat, so a trial whose process died is failed and retried
  with the same parameters; on this host a dead owner is detected at once.
- A study records its identity (config, weights, data fingerprint) at creation;
  resuming with anything else is refused with the list of differences.
- The target is a number of COMPLETE trials shared by every worker.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from search import signals
from search.config import StudyConfig
from search.errors import DriftError, StorageError, TooManyFailures, TrialFailed, UsageError
from search.objective import OWNER_ATTR

DEFAULT_STORAGE = "sqlite:///studies.db"
IDENTITY_ATTR = "search:identity"
CONFIG_ATTR = "search:config"
MAX_RETRY = 3
POLL_S = 1.0
OWNERLESS_AFTER_S = 120
# Connections per process on a database server: the main thread and Optuna's heartbeat thread each
# hold one (pool_size 2); a third concurrent use gets a short-lived extra one (max_overflow).  So a
# worker keeps 2 connections open; PostgreSQL's default max_connections=100 serves ~45 workers.
PG_POOL = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 3600}


# ---------------------------------------------------------------- storage

def check_storage_url(url: str) -> str:
    """Validate ``url`` without touching anything; return the URL SQLAlchemy should get."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise UsageError(f"--storage: malformed storage URL {url!r} (e.g. sqlite:///studies.db, "
                         "postgresql://user:pass@host/db)") from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"--storage: unsupported database {backend!r}; use sqlite, postgresql or mysql")
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise UsageError("--storage: an in-memory SQLite database would lose the study; name a file")
        path = Path(u.database)
        if not path.parent.is_dir():
            raise UsageError(f"--storage: directory {path.parent} does not exist")
        if path.exists() and not (path.stat().st_mode & 0o222):
            raise StorageError(f"--storage: database file {path} is read-only")
        if not path.exists() and not os.access(path.parent, os.W_OK):
            raise StorageError(f"--storage: cannot create {path}: directory is not writable")
    if backend == "postgresql" and u.get_driver_name() == "psycopg2":
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int | None = None) -> optuna.storages.RDBStorage:
    url = check_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes write this file: wait for locks instead of failing fast,
        # and let readers (the dashboard) proceed during writes (WAL).
        engine_kwargs = {"connect_args": {"timeout": 300}}
        from sqlalchemy.engine import make_url

        try:
            with sqlite3.connect(make_url(url).database, timeout=300) as con:
                con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise StorageError(f"--storage: cannot open {url}: {e}") from None
    else:
        engine_kwargs = dict(PG_POOL)
    # Heartbeat and its retry callback are "experimental" (since v2.8): not news for a user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 3 * heartbeat_interval,
                heartbeat_stale_trial_callback=RetryCallback(max_retry=MAX_RETRY))
        except Exception as e:  # SQLAlchemy's errors differ per driver; all mean "cannot open"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # Processes starting at once on a new database race to create Optuna's tables;
            # the loser sees them half-made: once they exist, opening works.
            if attempt < 4 and any(m in first for m in ("already exists", "UniqueViolation", "UNIQUE constraint",
                                                         "duplicate key")):
                time.sleep(0.2 + 0.3 * attempt)
                continue
            raise StorageError(f"--storage: cannot open {_masked(url)}: {first}") from None


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class RetryCallback(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING copy with the same params), minus the dead owner."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != OWNER_ATTR}
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("fail_reason", "interrupted")}
        super().__call__(study, trial)


# ---------------------------------------------------------------- create / resume

def identity(config: StudyConfig, weights_identity: str, data_fingerprint: str) -> dict[str, Any]:
    ident = config.identity()
    ident["backbone"] = {**ident["backbone"], "weights": weights_identity}
    ident["data_fingerprint"] = data_fingerprint
    return ident


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = _flatten(stored), _flatten(current)
    return [f"{k}: {json.dumps(a.get(k, '(absent)'))} -> {json.dumps(b.get(k, '(absent)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]


def check_resume(url: str, study_name: str, ident: dict[str, Any]) -> None:
    """Refuse a resume with other settings before any expensive work; creates nothing."""
    from sqlalchemy.engine import make_url

    u = make_url(check_storage_url(url))
    if u.get_backend_name() == "sqlite" and not Path(u.database).exists():
        return  # no file, no study: nothing to compare with, and nothing may be created yet
    storage = open_storage(url)
    try:
        try:
            storage.get_study_id_from_name(study_name)
        except KeyError:
            return
        _compare(optuna.load_study(study_name=study_name, storage=storage), study_name, ident)
    finally:
        storage.engine.dispose()  # its connections would stay open on a database server until GC


def _compare(study: optuna.Study, study_name: str, ident: dict[str, Any]) -> None:
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        raise DriftError(f"study {study_name!r} in this storage was not created by this service; "
                         f"use --study-name to start a new one")
    diffs = differences(json.loads(json.dumps(stored)), json.loads(json.dumps(ident)))
    if diffs:
        raise DriftError(f"study {study_name!r} was created with other settings ({'; '.join(diffs)}); "
                         f"resume it with its own settings, or start a new study with --study-name NEW_NAME")


def _load_and_compare(storage: optuna.storages.BaseStorage, study_name: str,
                      sampler: optuna.samplers.BaseSampler, ident: dict[str, Any]) -> optuna.Study:
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    # A study created this instant by another process gets its identity a moment after its name.
    deadline = time.monotonic() + 10
    while (IDENTITY_ATTR not in study.user_attrs and time.monotonic() < deadline
           and not study.get_trials(deepcopy=False)):
        time.sleep(0.2)
    _compare(study, study_name, ident)
    return study


def create_or_resume(storage: optuna.storages.BaseStorage, study_name: str, config: StudyConfig,
                     ident: dict[str, Any], sampler: optuna.samplers.BaseSampler) -> tuple[optuna.Study, bool]:
    """Return (study, created).  A stored study must have the same identity."""
    try:
        storage.get_study_id_from_name(study_name)
        exists = True
    except KeyError:
        exists = False
    if exists:
        return _load_and_compare(storage, study_name, sampler, ident), False
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                    directions=config.directions)
    except optuna.exceptions.DuplicatedStudyError:  # another process created it a moment ago
        return _load_and_compare(storage, study_name, sampler, ident), False
    study.set_metric_names(config.metric_names)
    study.set_user_attr(IDENTITY_ATTR, ident)
    study.set_user_attr(CONFIG_ATTR, config.as_json())
    study.set_user_attr("search:config_hash", config.identity_hash())
    return study, True


# ---------------------------------------------------------------- lost trials

def _owner_alive(owner: dict[str, Any]) -> bool:
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) < 0.01
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and queue its parameters again; False if it already ended."""
    storage = study._storage
    try:
        # The reason first: Optuna refuses attributes on a finished trial.
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    RetryCallback(max_retry=MAX_RETRY)(study, storage.get_trial(trial._trial_id))
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Retry at once the RUNNING trials whose owner process on this host is gone."""
    host = socket.gethostname()
    recovered = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER_ATTR)
        if owner and owner.get("host") == host and not _owner_alive(owner):
            if fail_and_retry(study, t, f"owner process {owner.get('pid')} died"):
                recovered.append(t.number)
        elif (owner is None and t.datetime_start is not None
              and (now - t.datetime_start).total_seconds() > OWNERLESS_AFTER_S):
            # A worker records its owner milliseconds after Optuna creates the trial; one still
            # without an owner much later lost its process in that gap (kill -9) and has no heartbeat.
            if fail_and_retry(study, t, "its process died before the trial started"):
                recovered.append(t.number)
    return recovered


def fail_own_trials(study: optuna.Study, reason: str) -> list[int]:
    """On interruption: this process's trials are failed-and-retriable, never left RUNNING."""
    me, host = os.getpid(), socket.gethostname()
    out = []
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    for t in trials:
        owner = t.system_attrs.get(OWNER_ATTR) or {}
        if owner.get("pid") != me or owner.get("host") != host:
            continue
        if t.state == TrialState.RUNNING:
            if fail_and_retry(study, t, reason):
                out.append(t.number)
        elif t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            # Optuna already failed it when the signal's exception left the objective, which had
            # stored the reason (a finished trial takes no more attributes).
            RetryCallback(max_retry=MAX_RETRY)(study, t)
            out.append(t.number)
    return out


# ---------------------------------------------------------------- optimize

def counts(study: optuna.Study) -> dict[TrialState, int]:
    out = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


@dataclass
class FailureGuard:
    """Optuna callback: stop the study after ``limit`` consecutive failed trials."""

    limit: int
    streak: int = 0
    last_reason: str = ""
    tripped: bool = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.streak += 1
            self.last_reason = trial.user_attrs.get("fail_reason", "unknown reason")
            if self.streak >= self.limit:
                self.tripped = True
                study.stop()
        elif trial.state == TrialState.COMPLETE:
            self.streak = 0


@dataclass
class RunSummary:
    complete_before: int
    complete_after: int = 0
    failed_here: int = 0
    stopped_by: str = "target"
    retried: list[int] = field(default_factory=list)


def optimize(study: optuna.Study, objective: Callable, target: int, timeout: float | None,
             max_failures: int, callbacks: list[Callable] = ()) -> RunSummary:
    """Run trials until the study holds ``target`` COMPLETE trials (across all workers)."""
    start = time.monotonic()
    guard = FailureGuard(max_failures)
    summary = RunSummary(complete_before=counts(study)[TrialState.COMPLETE])
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
        n_before = len(study.trials)
        with signals.deferred():  # see search/signals.py: no ownerless RUNNING trial on Ctrl-C
            study.optimize(objective, n_trials=target - done - running, timeout=left,
                           catch=(TrialFailed,), callbacks=[guard, *callbacks])
        if guard.tripped:
            raise TooManyFailures(f"stopped after {guard.streak} consecutive failed trials; "
                                  f"last: {guard.last_reason}")
        if len(study.trials) == n_before:
            summary.stopped_by = "sampler has nothing left to try"
            break
    summary.complete_after = counts(study)[TrialState.COMPLETE]
    return summary
