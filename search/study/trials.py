"""Bookkeeping of trials in the storage: who runs a trial, retries, takeovers, what counts toward the target.

Used by the objective (a trial's own process side) and by search.study.lifecycle (the
run's lifecycle): a trial records its owner (host, pid, process start time);
a failed trial is retried as a WAITING copy with the same parameters
(Optuna's ``RetryHeartbeatStaleTrialCallback``, minus the failed attempt's
owner, measures and pictures); a trial that another process failed while it
ran keeps its result on that retry (``record_taken_over``); epoch snapshots
are COMPLETE trials that do not count toward the target.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
from typing import Any, Callable

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from search.study import optuna_compat as compat

OWNER_ATTR = "search:owner"
# User attributes a retry keeps: what the trial is, not what an attempt measured.
_RETRY_KEEPS = ("resolved_params",)


def mark_owner(trial: optuna.Trial) -> None:
    """Record who runs the trial, so a resume can tell a dead owner from a live one."""
    me = psutil.Process()
    trial.storage.set_trial_system_attr(compat.trial_id(trial), OWNER_ATTR, {
        "host": socket.gethostname(), "pid": os.getpid(), "started": me.create_time()})


def owner_alive(owner: dict[str, Any]) -> bool:
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) < 0.01
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def counted(t: FrozenTrial) -> bool:
    """Whether a COMPLETE trial counts toward the target (epoch snapshots do not)."""
    return "snapshot_of" not in t.user_attrs


def n_counted(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class RetryCallback(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING copy with the same params), as a fresh attempt.

    The copy keeps the parameters and Optuna's retry history, and drops the failed attempt's
    owner, measures, failure reason and pictures (Optuna records artifacts as system attributes).
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items()
                              if k != OWNER_ATTR and not k.startswith(compat.ARTIFACT_PREFIX)}
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in _RETRY_KEEPS}
        super().__call__(study, trial)


def attempts(trial: FrozenTrial) -> int:
    """How many times these parameters have been tried, this attempt included."""
    return len(trial.system_attrs.get("retry_history", ())) + 1


def retry(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = None) -> bool:
    """Queue ``trial``'s parameters again (unless already queued or past ``max_retry``); True if queued."""
    queued = {n for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING,
                                                                   TrialState.COMPLETE))
              for n in t.system_attrs.get("retry_history", ())}
    if trial.number in queued:
        return False
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    RetryCallback(max_retry=max_retry)(study, trial)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, kind: str = "lost") -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and queue its parameters again; False if it already ended.

    The failure is written first and the retry second; a resume finds a FAIL trial
    whose retry was never queued and queues it (search.study.lifecycle.requeue_unretried).
    """
    storage = compat.storage_of(study)
    try:
        # The reason first: Optuna refuses attributes on a finished trial.
        storage.set_trial_user_attr(compat.trial_id(trial), "fail_reason", reason)
        storage.set_trial_user_attr(compat.trial_id(trial), "fail_kind", kind)
        if not storage.set_trial_state_values(compat.trial_id(trial), TrialState.FAIL):
            return False
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    retry(study, storage.get_trial(compat.trial_id(trial)))
    return True


# ---------------------------------------------------------------- a trial failed by another process

class TakenOver(Exception):
    """The trial was failed by another process while it ran; its result went to another trial."""

    def __init__(self, number: int, recorded_on: int | None = None):
        self.number, self.recorded_on = number, recorded_on
        super().__init__(f"trial {number} was failed by another process while it ran; "
                         f"its result is recorded on trial {recorded_on}")


def taken_over(trial: optuna.Trial) -> bool:
    """True when the storage no longer holds ``trial`` as RUNNING (another process failed it)."""
    return trial.storage.get_trial(compat.trial_id(trial)).state != TrialState.RUNNING


def record_taken_over(trial: optuna.Trial, values: list[float], result: dict[str, Any],
                      constraints: dict[str, float] | None = None) -> int:
    """Keep a finished trial's result although another process failed it meanwhile.

    The result goes onto the WAITING retry that the other process queued (claimed atomically,
    so no one trains those parameters again); if there is none to claim, onto a new COMPLETE
    trial with the same parameters.  Returns the number of the trial that holds the result.
    """
    study, storage = trial.study, trial.storage
    frozen = storage.get_trial(compat.trial_id(trial))
    attrs = {**result, "resolved_params": frozen.user_attrs.get("resolved_params"), "recovered_from": frozen.number}
    system = {f"constraints:{k}": v for k, v in (constraints or {}).items()}
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if frozen.number in t.system_attrs.get("retry_history", ()) and \
                storage.set_trial_state_values(compat.trial_id(t), TrialState.RUNNING):
            for k, v in attrs.items():
                storage.set_trial_user_attr(compat.trial_id(t), k, v)
            for k, v in system.items():
                storage.set_trial_system_attr(compat.trial_id(t), k, v)
            storage.set_trial_state_values(compat.trial_id(t), TrialState.COMPLETE, values)
            return t.number
    new_id = storage.create_new_trial(
        storage.get_study_id_from_name(study.study_name),
        template_trial=optuna.trial.create_trial(params=frozen.params, distributions=frozen.distributions,
                                                 values=values, user_attrs=attrs, system_attrs=system))
    return storage.get_trial_number_from_id(new_id)


class Heartbeat:
    """A heartbeat beside Optuna's that survives failed writes.

    Optuna's heartbeat thread ends on the first failed write (optuna/storages/_heartbeat.py), after
    which another process's stale-trial sweep fails a live trial.  This one retries every interval.
    """

    def __init__(self, storage: Any, trial_id: int, interval: float,
                 on_error: Callable[[Exception], None] = lambda e: None):
        self.storage, self.trial_id, self.interval, self.on_error = storage, trial_id, interval, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"search-heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a failed write is tried again at the next interval
                self.on_error(e)

    def __enter__(self) -> "Heartbeat":
        # A study's storage is Optuna's _CachedStorage around the RDBStorage: ask the storage, not its type.
        interval = getattr(self.storage, "get_heartbeat_interval", None)
        if callable(interval) and interval():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
