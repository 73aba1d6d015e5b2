"""search.study.trials: owners, retries as fresh attempts (no measures, no pictures), a result kept when another
process failed its trial, and a heartbeat that survives failed writes."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search.study import optuna_compat as compat, storage as sto, trials as tr

from .stand_ins import PNG


@pytest.fixture
def study(tmp_path):
    storage = sto.open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1)
    s = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"],
                            sampler=optuna.samplers.RandomSampler(seed=0))
    yield s
    sto.dispose(storage)


def running(study, x: float | None = None) -> optuna.Trial:
    """A RUNNING trial owned by this process, with parameter x, as the objective leaves it mid-run."""
    if x is not None:
        study.enqueue_trial({"x": x})
    trial = study.ask()
    tr.mark_owner(trial)
    trial.set_user_attr("resolved_params", {"x": trial.suggest_float("x", 0, 1), "units": 32})
    return trial


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_owner_is_alive_only_while_the_same_process_runs():
    me = psutil.Process()
    assert tr.owner_alive({"host": "h", "pid": me.pid, "started": me.create_time()})
    assert not tr.owner_alive({"host": "h", "pid": dead_pid(), "started": 0.0})
    # The pid exists but belongs to a process started at another time: a reused pid, not the owner.
    assert not tr.owner_alive({"host": "h", "pid": me.pid, "started": me.create_time() - 100})
    assert not tr.owner_alive({})


def test_epoch_snapshots_do_not_count_toward_the_target(study):
    dists = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for attrs in ({}, {}, {"snapshot_of": 0}):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dists, values=[1.0, 2.0],
                                                  user_attrs=attrs))
    assert tr.n_counted(study) == 2
    assert [tr.counted(t) for t in study.get_trials()] == [True, True, False]


def test_a_retry_is_a_fresh_attempt_with_the_same_parameters_and_no_pictures(study, tmp_path):
    trial = running(study)
    pic = tmp_path / "test_confusion_matrix.png"
    pic.write_bytes(PNG)
    optuna.artifacts.upload_artifact(artifact_store=optuna.artifacts.FileSystemArtifactStore(str(tmp_path)),
                                     file_path=str(pic), study_or_trial=trial, mimetype="image/png")
    trial.set_user_attr("test_accuracy", 0.9)  # a measure of the failed attempt
    assert optuna.artifacts.get_all_artifact_meta(study.get_trials()[0], storage=compat.storage_of(study))

    assert tr.fail_and_retry(study, study.get_trials()[0], "owner process 1 died")
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "owner process 1 died"
    assert failed.user_attrs["fail_kind"] == "lost"
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert retry.user_attrs == {"resolved_params": failed.user_attrs["resolved_params"]}
    assert tr.OWNER_ATTR not in retry.system_attrs
    assert optuna.artifacts.get_all_artifact_meta(retry, storage=compat.storage_of(study)) == []  # no inherited pictures
    assert tr.attempts(failed) == 1 and tr.attempts(retry) == 2


def test_a_trial_is_queued_again_once_and_only_up_to_the_limit(study):
    first = running(study, x=0.25)
    assert tr.fail_and_retry(study, study.get_trials()[0], "lost")
    assert not tr.retry(study, study.get_trials()[0])  # already queued: no second copy
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    # The retry runs and fails too: with max_retry=1 it is not queued a third time.
    second = study.ask()
    assert second.params == {"x": 0.25} and second.number != first.number
    study.tell(second, state=TrialState.FAIL)
    assert not tr.retry(study, study.get_trials()[1], max_retry=1)
    assert tr.retry(study, study.get_trials()[1], max_retry=2)


def test_fail_and_retry_leaves_a_finished_trial_alone(study):
    trial = running(study)
    study.tell(trial, [0.5, 1.0])
    assert not tr.fail_and_retry(study, study.get_trials()[0], "owner died")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def test_a_result_finished_after_another_process_failed_the_trial_goes_to_its_retry(study):
    trial = running(study, x=0.75)
    tr.fail_and_retry(study, study.get_trials()[0], "heartbeat silent")  # what a peer's stale sweep does
    assert tr.taken_over(trial)
    holder = tr.record_taken_over(trial, [0.8, 12.0], {"test_accuracy": 0.8, "train_time_s": 12.0},
                                  {"train_time_s": 2.0})
    failed, kept = study.get_trials()
    assert holder == kept.number == 1
    assert kept.state == TrialState.COMPLETE and kept.values == [0.8, 12.0] and kept.params == {"x": 0.75}
    assert kept.user_attrs["test_accuracy"] == 0.8 and kept.user_attrs["recovered_from"] == failed.number
    assert kept.user_attrs["resolved_params"] == failed.user_attrs["resolved_params"]
    assert kept.constraints == {"train_time_s": 2.0}
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))  # nobody trains it again


def test_without_a_retry_to_claim_the_result_becomes_a_new_complete_trial(study):
    trial = running(study, x=0.5)
    compat.storage_of(study).set_trial_state_values(compat.trial_id(trial), TrialState.FAIL)  # failed, nothing queued
    holder = tr.record_taken_over(trial, [0.7, 3.0], {"test_accuracy": 0.7})
    kept = study.get_trials()[holder]
    assert kept.state == TrialState.COMPLETE and kept.values == [0.7, 3.0] and kept.params == {"x": 0.5}
    assert tr.n_counted(study) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_our_heartbeat_survives_a_failed_write_where_optunas_thread_dies(study):
    trial = running(study)
    storage = compat.storage_of(study)
    failures: list[Exception] = []
    real = storage.record_heartbeat
    calls = {"n": 0}

    def flaky(trial_id):
        calls["n"] += 1
        if calls["n"] == 1:
            raise optuna.exceptions.StorageInternalError("database is locked")
        real(trial_id)

    storage.record_heartbeat = flaky
    # Optuna's thread: its first write fails and the thread is gone.
    optunas = optuna.storages._heartbeat.HeartbeatThread(compat.trial_id(trial), storage)
    optunas.start()
    optunas._thread.join(timeout=5)
    assert not optunas._thread.is_alive()
    # Ours: the failure is reported and the next beats are written.
    calls["n"] = 0
    beat = tr.Heartbeat(storage, compat.trial_id(trial), interval=0.2, on_error=failures.append)
    with beat:
        deadline = time.monotonic() + 20
        while calls["n"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert calls["n"] >= 3 and len(failures) == 1
    assert storage._get_stale_trial_ids(compat.study_id(study)) == []  # its beats are recent: not stale


def test_optuna_fails_a_trial_whose_heartbeat_went_silent(tmp_path):
    """What the Heartbeat above prevents: with no beat for the grace period, a peer fails the trial."""
    storage = sto.open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="h", storage=storage, directions=["maximize", "minimize"])
    trial = running(study)
    storage.record_heartbeat(compat.trial_id(trial))
    failed = []
    deadline = time.monotonic() + 30
    while not failed and time.monotonic() < deadline:
        time.sleep(0.3)
        failed = optuna.storages.fail_stale_trials(study) or \
            [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert study.get_trials()[0].state == TrialState.FAIL
    assert study.get_trials()[1].state == TrialState.WAITING  # retried by the stale-trial callback
    sto.dispose(storage)
