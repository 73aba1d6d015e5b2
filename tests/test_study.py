"""Study lifecycle without Keras: target counting, failures, lost-trial recovery, interruption, storage URLs."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from search import study as st
from search.errors import StorageError, TooManyFailures, TrialFailed, UsageError
from search.objective import OWNER_ATTR, _slot_taken, mark_owner


@pytest.fixture
def study(tmp_path):
    storage = st.open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1)
    return optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=0))


def objective(fail_when=lambda n: False, target=5):
    def f(trial):
        if _slot_taken(trial, target):
            trial.study.stop()
            raise optuna.TrialPruned()
        mark_owner(trial)
        x = trial.suggest_float("x", 0, 1)
        if fail_when(trial.number):
            trial.set_user_attr("fail_reason", "loss became NaN at epoch 1")
            raise TrialFailed("loss became NaN at epoch 1")
        return x, 1 - x
    return f


def _states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_target_counts_complete_trials_and_a_resume_adds_none(study):
    s = st.optimize(study, objective(), target=5, timeout=None, max_failures=3)
    assert _states(study).count(TrialState.COMPLETE) == 5 and s.complete_after == 5
    st.optimize(study, objective(), target=5, timeout=None, max_failures=3)
    assert len(study.trials) == 5


def test_one_failed_trial_does_not_stop_the_study(study):
    st.optimize(study, objective(fail_when=lambda n: n in (1, 3)), target=5, timeout=None, max_failures=3)
    states = _states(study)
    assert states.count(TrialState.COMPLETE) == 5 and states.count(TrialState.FAIL) == 2
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"] == "loss became NaN at epoch 1" for t in failed)


def test_consecutive_failures_stop_the_run_with_the_last_reason(study):
    with pytest.raises(TooManyFailures, match="stopped after 3 consecutive failed trials; last: loss became NaN"):
        st.optimize(study, objective(fail_when=lambda n: True), target=5, timeout=None, max_failures=3)
    assert _states(study) == [TrialState.FAIL] * 3


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _running_trial(study, owner):
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner)
    return trial


def test_trial_of_a_dead_process_on_this_host_is_retried_at_once(study):
    import socket

    trial = _running_trial(study, {"host": socket.gethostname(), "pid": _dead_pid(), "started": 0.0})
    assert st.recover_dead_trials(study) == [trial.number]
    old, retry = study.get_trials()
    assert old.state == TrialState.FAIL and "died" in old.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.params == old.params
    assert OWNER_ATTR not in retry.system_attrs and "fail_reason" not in retry.user_attrs
    # The retry runs first and completes with the same parameters.
    st.optimize(study, objective(), target=1, timeout=None, max_failures=3)
    assert study.get_trials()[1].state == TrialState.COMPLETE and study.get_trials()[1].params == old.params


def test_live_or_foreign_owners_are_left_alone(study):
    import psutil

    me = psutil.Process()
    _running_trial(study, {"host": "another-host", "pid": _dead_pid(), "started": 0.0})
    _running_trial(study, {"host": __import__("socket").gethostname(), "pid": me.pid, "started": me.create_time()})
    assert st.recover_dead_trials(study) == []
    assert _states(study) == [TrialState.RUNNING, TrialState.RUNNING]


def test_interrupted_process_fails_only_its_own_trials_and_queues_them(study):
    import psutil
    import socket

    me = psutil.Process()
    mine = _running_trial(study, {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()})
    _running_trial(study, {"host": "another-host", "pid": 1, "started": 0.0})
    assert st.fail_own_trials(study, "interrupted by SIGTERM") == [mine.number]
    states = _states(study)
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert study.trials[0].user_attrs["fail_reason"] == "interrupted by SIGTERM"


def test_stale_heartbeat_trial_is_retried_by_optuna(tmp_path):
    """A trial on another host whose heartbeat stopped is failed after the grace period and re-run."""
    import time

    storage = st.open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="h", storage=storage, directions=["maximize", "minimize"])
    trial = _running_trial(study, {"host": "another-host", "pid": 1, "started": 0.0})
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3)
    st.optimize(study, objective(), target=2, timeout=None, max_failures=3)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert [t.params for t in trials if t.state == TrialState.COMPLETE].count(trials[0].params) == 1


@pytest.mark.parametrize("url,error,message", [
    ("sqlite://", UsageError, "in-memory SQLite"),
    ("mongodb://x/y", UsageError, "unsupported database 'mongodb'"),
    ("::", UsageError, "malformed storage URL"),
])
def test_storage_urls_are_checked_before_anything_is_created(url, error, message):
    with pytest.raises(error, match=message):
        st.check_storage_url(url)


def test_read_only_file_is_refused(tmp_path):
    db = tmp_path / "ro.db"
    db.write_bytes(b"")
    db.chmod(0o444)
    with pytest.raises(StorageError, match="is read-only"):
        st.check_storage_url(f"sqlite:///{db}")


def test_postgres_url_uses_the_installed_driver():
    import sqlalchemy

    engine = sqlalchemy.create_engine(st.check_storage_url("postgresql://u:p@h/db"))  # ImportError if not
    assert engine.dialect.driver == "psycopg"


def test_ownerless_running_trial_is_retried_only_when_old(study, monkeypatch):
    """A process killed between Optuna creating a trial and recording its owner leaves an ownerless trial."""
    trial = study.ask()
    assert st.recover_dead_trials(study) == []  # fresh: its owner may be about to record itself
    monkeypatch.setattr(st, "OWNERLESS_AFTER_S", 0)
    assert st.recover_dead_trials(study) == [trial.number]
    assert _states(study) == [TrialState.FAIL, TrialState.WAITING]
