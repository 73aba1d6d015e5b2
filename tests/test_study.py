"""search.study.lifecycle: create or resume a study with its identity (never one without), recover lost trials, retry grid
points and killed trials, stop on repeated failures, and run to exactly the target.

The objective is the real one (search.study.objective.make_objective); its trial process is replaced through
``Context(runner=...)``: by a function returning known measures, or by the real trial in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search import signals
from search.config import load_config, study_identity
from search.errors import DriftError, Interrupted, TooManyFailures, TrialFailed
from search.isolate import Outcome
from search.study import lifecycle as st, objective as obj, optuna_compat as compat, storage as sto
from search.study.samplers import make_sampler, target
from search.study.trials import OWNER_ATTR

from .conftest import TINY_CONFIG, copy_shared_cache
from .stand_ins import measures

RUNTIME = {"trial_backend": "jax", "extraction_backend": "tensorflow", "keras": "3", "jax": "0.1", "tensorflow": "2"}
GRID = TINY_CONFIG.format(n_trials=2).replace('name = "random"', 'name = "grid"').replace(
    'dropout = {{ type = "float", low = 0.1, high = 0.7 }}'.replace("{{", "{").replace("}}", "}"), "").replace(
    "choices = [0.0, 1e-4]", "choices = [0.0, 0.5]").replace("[run]", "[run]\nmax_retries = 1")


def _config(tmp_path: Path, text: str | None = None):
    path = tmp_path / "tiny.toml"
    path.write_text(text or TINY_CONFIG.format(n_trials=5))
    return load_config(str(path))


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 's.db'}"


@pytest.fixture
def storage(url):
    s = sto.open_storage(url, heartbeat_interval=1)
    yield s
    sto.dispose(s)


@pytest.fixture
def handlers():
    """search.run installs its signal handlers; put pytest's back afterwards."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    yield
    signals.install()  # forget a pending signal
    for s, h in old.items():
        signal.signal(s, h)


def stand_in_runner(fail=None):
    """The trial process, replaced: the stand-in's measures for the spec; ``fail(spec)`` may raise instead."""
    def run(spec, on_event, timeout):
        if fail is not None:
            fail(spec)
        return Outcome(measures(spec, 0.1), peak_memory_mb=900.0, start_memory_mb=50.0, cpu_time_s=1.0)
    return run


def _run(study, config, runner, n: int | None = None, max_failures: int | None = None):
    n = n or target(config)
    ctx = obj.Context(config=config, cache_dir=Path("/nonexistent"), cache_key="k", n_classes=10, target=n,
                      runner=runner)
    policy = st.RetryPolicy(grid=config.sampler.name == "grid", max_retries=config.run.max_retries,
                            max_failures=max_failures or config.run.max_consecutive_failures)
    return st.optimize(study, obj.make_objective(ctx, lambda e: None), n, None, policy)


def _new(storage, config, name="s"):
    ident = study_identity(config, "random(seed=0)", "fp", RUNTIME)
    return st.create_or_resume(storage, name, config, ident, make_sampler(config))[0]


# ---------------------------------------------------------------- create / resume

def test_a_new_study_records_its_identity_objectives_and_split(storage, tmp_path):
    config = _config(tmp_path)
    ident = study_identity(config, "random(seed=0)", "fp", RUNTIME)
    study, created = st.create_or_resume(storage, "s", config, ident, make_sampler(config),
                                         extra_attrs={"search:data": {"n_images": 250}})
    assert created
    assert study.user_attrs[st.IDENTITY_ATTR]["runtime"] == RUNTIME  # the backend and versions are recorded
    assert study.user_attrs[st.CONFIG_ATTR] == config.as_json()
    assert study.user_attrs[st.SPLIT_ATTR] == "test" and study.user_attrs["search:data"] == {"n_images": 250}
    assert study.metric_names == ["test_accuracy", "test_roc_auc", "train_time_s", "peak_memory_mb"]
    again, created = st.create_or_resume(storage, "s", config, ident, make_sampler(config))
    assert not created and compat.study_id(again) == compat.study_id(study)


def test_resuming_with_another_backend_or_settings_is_refused_listing_the_differences(storage, tmp_path):
    config = _config(tmp_path)
    _new(storage, config)
    other = study_identity(config, "random(seed=0)", "fp", {**RUNTIME, "trial_backend": "tensorflow"})
    with pytest.raises(DriftError, match=r"^study 's' was created with other settings \(runtime.trial_backend: "
                                         r"\"jax\" -> \"tensorflow\"\); resume it with its own settings"):
        st.create_or_resume(storage, "s", config, other, make_sampler(config))
    with pytest.raises(DriftError, match="data_fingerprint: \"fp\" -> \"fp2\""):
        st.create_or_resume(storage, "s", config, study_identity(config, "random(seed=0)", "fp2", RUNTIME),
                            make_sampler(config))


def test_a_study_timed_with_another_number_of_steps_per_call_is_not_resumed(storage, tmp_path):
    """Trials timed one step per call (before search.runtime.STEPS_PER_CALL was recorded) and trials timed 32 steps
    per call would share one train_time_s front: refused, naming the field."""
    config = _config(tmp_path)
    _new(storage, config)  # recorded without train_steps_per_call, as studies were before it existed
    now = study_identity(config, "random(seed=0)", "fp", {**RUNTIME, "train_steps_per_call": "32"})
    with pytest.raises(DriftError, match=r'runtime.train_steps_per_call: "\(absent\)" -> "32"'):
        st.create_or_resume(storage, "s", config, now, make_sampler(config))


def test_check_resume_refuses_before_any_work_and_creates_nothing(tmp_path, url, storage):
    config = _config(tmp_path)
    missing = tmp_path / "none.db"
    st.check_resume(f"sqlite:///{missing}", "s", study_identity(config, "w", "fp", RUNTIME))
    assert not missing.exists()
    _new(storage, config)
    with pytest.raises(DriftError, match="runtime.keras"):
        st.check_resume(url, "s", study_identity(config, "random(seed=0)", "fp", {**RUNTIME, "keras": "4"}))


class _FastClock:
    """search.study.lifecycle's clock, sped up: it waits up to 10 s for the identity of a study another process creates."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_study_this_service_did_not_create_is_not_taken_over(storage, tmp_path, monkeypatch):
    monkeypatch.setattr(st, "time", _FastClock())
    config = _config(tmp_path)
    foreign = optuna.create_study(study_name="s", storage=storage, directions=config.directions)
    foreign.set_user_attr("owner", "someone else")
    with pytest.raises(DriftError, match="was not created by this service; use --study-name"):
        _new(storage, config)


def test_a_study_from_before_runtimes_were_recorded_resumes_on_its_own_backend_only(storage, tmp_path):
    config = _config(tmp_path)
    old = optuna.create_study(study_name="s", storage=storage, directions=config.directions)
    ident = study_identity(config, "random(seed=0)", "fp", RUNTIME)
    old.set_user_attr(st.IDENTITY_ATTR, {k: v for k, v in ident.items() if k != "runtime"})
    dist = {"l2": optuna.distributions.CategoricalDistribution([0.0, 1e-4])}
    old.add_trial(optuna.trial.create_trial(params={"l2": 0.0}, distributions=dist, values=[0.5, 0.6, 1.0, 900.0],
                                            user_attrs={"keras_backend": "tensorflow"}))
    with pytest.raises(DriftError, match='runtime.trial_backend: "tensorflow" -> "jax"'):
        st.create_or_resume(storage, "s", config, ident, make_sampler(config))
    tf = study_identity(config, "random(seed=0)", "fp", {**RUNTIME, "trial_backend": "tensorflow"})
    study, _ = st.create_or_resume(storage, "s", config, tf, make_sampler(config))
    assert study.user_attrs[st.IDENTITY_ATTR]["runtime"]["trial_backend"] == "tensorflow"  # adopted, recorded


def test_ctrl_c_between_creating_a_study_and_recording_its_identity_cannot_leave_it_without(
        storage, tmp_path, monkeypatch, handlers):
    config = _config(tmp_path)
    real = optuna.create_study

    def create_then_ctrl_c(*a, **k):
        study = real(*a, **k)
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line of create_or_resume
        return study

    monkeypatch.setattr(optuna, "create_study", create_then_ctrl_c)
    with pytest.raises(Interrupted):
        _new(storage, config)
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.user_attrs[st.IDENTITY_ATTR]["runtime"] == RUNTIME and st.CONFIG_ATTR in study.user_attrs
    monkeypatch.setattr(optuna, "create_study", real)
    assert compat.study_id(_new(storage, config)) == compat.study_id(study)  # the name is not blocked


# ---------------------------------------------------------------- lost trials

def _running(study, owner, x=None):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    if owner is not None:
        compat.storage_of(study).set_trial_system_attr(compat.trial_id(trial), OWNER_ATTR, owner)
    return trial


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_trial_whose_owner_on_this_host_died_is_retried_at_once(storage):
    study = optuna.create_study(study_name="d", storage=storage, directions=["maximize"])
    trial = _running(study, {"host": socket.gethostname(), "pid": _dead_pid(), "started": 0.0})
    assert st.recover_dead_trials(study) == [trial.number]
    old, retry = study.get_trials()
    assert old.state == TrialState.FAIL and old.user_attrs["fail_reason"].endswith("died")
    assert retry.state == TrialState.WAITING and retry.params == old.params


def test_live_owners_and_other_hosts_are_left_to_the_heartbeat(storage):
    study = optuna.create_study(study_name="d", storage=storage, directions=["maximize"])
    me = psutil.Process()
    _running(study, {"host": "another-host", "pid": _dead_pid(), "started": 0.0})
    _running(study, {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()})
    fresh = _running(study, None)  # its owner may be about to record itself
    assert st.recover_dead_trials(study) == []
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 3
    assert fresh.number == 2


def test_an_ownerless_trial_is_retried_once_it_is_old(storage, monkeypatch):
    """A process killed between Optuna creating a trial and recording its owner leaves an ownerless trial."""
    study = optuna.create_study(study_name="d", storage=storage, directions=["maximize"])
    trial = _running(study, None)
    monkeypatch.setattr(st, "OWNERLESS_AFTER_S", 0)
    assert st.recover_dead_trials(study) == [trial.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_failure_whose_retry_was_never_queued_is_queued_on_resume(storage):
    """Ctrl-C between failing a dead peer's trial and queuing its retry: the next resume queues it."""
    study = optuna.create_study(study_name="d", storage=storage, directions=["maximize"])
    trial = _running(study, {"host": "h", "pid": 1, "started": 0.0})
    storage.set_trial_user_attr(compat.trial_id(trial), "fail_reason", "owner process 1 died")
    storage.set_trial_user_attr(compat.trial_id(trial), "fail_kind", "lost")
    storage.set_trial_state_values(compat.trial_id(trial), TrialState.FAIL)  # ... and the process stopped here
    assert st.recover_dead_trials(study) == [trial.number]
    assert study.get_trials()[1].state == TrialState.WAITING and study.get_trials()[1].params == trial.params
    assert st.recover_dead_trials(study) == []  # queued once


def test_an_interrupted_process_fails_only_its_own_trials_and_queues_them(storage):
    study = optuna.create_study(study_name="d", storage=storage, directions=["maximize"])
    me = psutil.Process()
    mine = _running(study, {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()})
    _running(study, {"host": "another-host", "pid": me.pid, "started": 0.0})
    assert st.fail_own_trials(study, "interrupted by SIGTERM") == [mine.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert study.get_trials()[0].user_attrs["fail_reason"] == "interrupted by SIGTERM"


# ---------------------------------------------------------------- optimize: target, failures, retries

def test_the_target_counts_complete_trials_and_a_resume_adds_none(storage, tmp_path):
    config = _config(tmp_path)
    study = _new(storage, config)
    summary = _run(study, config, stand_in_runner())
    assert (summary.complete_before, summary.complete_after, summary.stopped_by) == (0, 5, "target")
    assert _run(study, config, stand_in_runner()).complete_after == 5
    assert len(study.get_trials()) == 5


def test_a_failed_trial_does_not_stop_the_study(storage, tmp_path):
    config = _config(tmp_path)
    study = _new(storage, config)
    calls = []

    def fail_second_and_fourth(spec):
        calls.append(spec)
        if len(calls) in (2, 4):
            raise TrialFailed("training loss became NaN/inf at epoch 1", kind="nan")

    _run(study, config, stand_in_runner(fail_second_and_fourth))
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 5 and states.count(TrialState.FAIL) == 2
    # A NaN is the parameters' fault: a random search moves on instead of retrying them.
    assert not [t for t in study.get_trials() if t.system_attrs.get("retry_history")]


def test_consecutive_failures_stop_the_run_with_the_last_reason(storage, tmp_path):
    config = _config(tmp_path)
    study = _new(storage, config)

    def always(spec):
        raise TrialFailed("training loss became NaN/inf at epoch 1", kind="nan")

    with pytest.raises(TooManyFailures, match="^stopped after 3 consecutive failed trials; last: training loss"):
        _run(study, config, stand_in_runner(always))
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 3


@pytest.mark.parametrize("kind", ["killed", "timeout"])
def test_a_killed_or_timed_out_trial_is_retried_with_the_same_parameters_in_any_sampler(storage, tmp_path, kind):
    config = _config(tmp_path)
    study = _new(storage, config)
    calls = []

    def first_attempt_dies(spec):
        calls.append(spec["params"])
        if len(calls) == 1:
            raise TrialFailed("trial process killed by SIGKILL (out of memory?)", kind=kind)

    _run(study, config, stand_in_runner(first_attempt_dies), n=2)
    assert calls[1] == calls[0]  # the next trial is the retry, same parameters
    failed, retry = study.get_trials()[:2]
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["retry_history"] == [failed.number]


def test_a_trial_of_another_host_with_a_silent_heartbeat_is_retried(tmp_path):
    storage = sto.open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
    config = _config(tmp_path)
    study = _new(storage, config)
    trial = _running(study, {"host": "another-host", "pid": 1, "started": 0.0})
    storage.record_heartbeat(compat.trial_id(trial))
    deadline = time.monotonic() + 60
    while not storage._get_stale_trial_ids(compat.study_id(study)):  # wait for the state, not for a fixed time
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _run(study, config, stand_in_runner(), n=2)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert [t.number for t in trials if t.system_attrs.get("retry_history") == [0]] != []
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2
    sto.dispose(storage)


# ---------------------------------------------------------------- grids

def test_grid_points_are_queued_in_config_order_skipping_what_is_done_or_queued(storage, tmp_path):
    config = _config(tmp_path, TINY_CONFIG.format(n_trials=4).replace('name = "random"', 'name = "grid"').replace(
        '{ type = "float", low = 0.1, high = 0.7 }', '{ type = "categorical", choices = [0.1, 0.5] }'))
    study = _new(storage, config)
    assert st.queue_grid_points(study, config, 3) == 3
    assert [t.system_attrs["fixed_params"] for t in study.get_trials()] == [
        {"dropout": 0.1, "l2": 0.0}, {"dropout": 0.1, "l2": 1e-4}, {"dropout": 0.5, "l2": 0.0}]
    assert st.queue_grid_points(study, config, 4) == 1  # only the missing point
    assert study.get_trials()[-1].system_attrs["fixed_params"] == {"dropout": 0.5, "l2": 1e-4}


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> tuple[Path, str]:
    entry = copy_shared_cache(tmp_path_factory.mktemp("cache"))
    return entry.parent, entry.name


def real_runner(spec, on_event, timeout) -> Outcome:
    """The real trial (search.trial.child.run_trial) in this process: real Keras, real loss."""
    from search.trial.child import run_trial

    return Outcome(run_trial(spec, lambda **kw: None), peak_memory_mb=1.0, start_memory_mb=0.0)


def overflowing_runner(spec: dict, on_event, timeout):
    """The real trial, with grid point l2 = 0.5 handed over as 1e38 (which the config now refuses at load): its
    real loss becomes non-finite."""
    if spec["params"]["l2"] == 0.5:
        spec = {**spec, "params": {**spec["params"], "l2": 1e38}}
    return real_runner(spec, on_event, timeout)


def test_a_grid_point_with_a_non_finite_loss_is_retried_then_stops_the_run_naming_it(storage, tmp_path, real_cache):
    """Issue 10: grid over l2 = [0.0, 0.5], 2 trials; the real loss of the second point is non-finite."""
    config = _config(tmp_path, GRID)
    study = _new(storage, config)
    st.queue_grid_points(study, config, target(config))
    ctx = obj.Context(config=config, cache_dir=real_cache[0], cache_key=real_cache[1], n_classes=10, target=2,
                      runner=overflowing_runner)
    policy = st.RetryPolicy(grid=True, max_retries=1, max_failures=config.run.max_consecutive_failures)
    with pytest.raises(st.GridPointFailed,
                       match=r"^grid point l2=0.5 failed 2 times; last: training loss became NaN/inf at epoch 1$"):
        st.optimize(study, obj.make_objective(ctx, lambda e: None), 2, None, policy)
    trials = study.get_trials()
    assert [(t.params["l2"], t.state) for t in trials] == [
        (0.0, TrialState.COMPLETE), (0.5, TrialState.FAIL), (0.5, TrialState.FAIL)]
    assert trials[2].system_attrs["retry_history"] == [1]  # the same point, retried

    # Run again later (the cause gone, e.g. memory freed): the point is queued afresh and completes once.
    st.queue_grid_points(study, config, 2)
    _run(study, config, stand_in_runner())
    complete = [t.params["l2"] for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [0.0, 0.5]  # every point exactly once, never a duplicate


def test_a_grid_is_never_completed_by_a_duplicate(storage, tmp_path):
    """Optuna's GridSampler counts a FAIL as visited and re-samples a done point; the run must not."""
    config = _config(tmp_path, GRID.replace("max_retries = 1", "max_retries = 0"))
    study = _new(storage, config)
    st.queue_grid_points(study, config, 2)

    def big_l2_fails(spec):
        if spec["params"]["l2"] == 0.5:
            raise TrialFailed("trial process killed by SIGKILL (out of memory?)", kind="killed")

    with pytest.raises(st.GridPointFailed, match="grid point l2=0.5 failed 1 times"):
        _run(study, config, stand_in_runner(big_l2_fails))
    complete = [t.params["l2"] for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert complete == [0.0]


# ---------------------------------------------------------------- a lost trial is retried once, whoever recovers it

RECOVER = """
import sys, time
sys.path.insert(0, {root!r})
import optuna
from search.study import lifecycle, storage
s = optuna.load_study(study_name="s", storage=storage.open_storage({url!r}, heartbeat_interval=1))
while time.time() < {go}:
    pass
lifecycle.recover_dead_trials(s)
"""


def _lost_trial(study) -> optuna.trial.FrozenTrial:
    study.enqueue_trial({"dropout": 0.3, "l2": 0.0})
    trial = study.ask()
    trial.suggest_float("dropout", 0.1, 0.7)
    trial.suggest_categorical("l2", [0.0, 1e-4])
    compat.storage_of(study).set_trial_system_attr(compat.trial_id(trial), OWNER_ATTR,
                                         {"host": socket.gethostname(), "pid": _dead_pid(), "started": 0.0})
    return study.get_trials()[-1]


def _count_runs():
    seen = []
    return seen, stand_in_runner(lambda spec: seen.append(spec["params"]["dropout"]))


def test_a_lost_trial_queued_twice_is_still_trained_once(storage, tmp_path):
    """The state concurrent recoveries leave (several WAITING copies of one lost trial): one copy trains."""
    config = _config(tmp_path)
    study = _new(storage, config)
    lost = _lost_trial(study)
    from search.study.trials import RetryCallback, fail_and_retry

    fail_and_retry(study, lost, "owner process died")
    RetryCallback()(study, study.get_trials()[0])  # a second process queued it too
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    seen, runner = _count_runs()
    _run(study, config, runner, n=3)
    assert seen.count(0.3) == 1
    assert [t.params["dropout"] for t in study.get_trials(states=(TrialState.COMPLETE,))].count(0.3) == 1


def test_processes_recovering_a_lost_trial_at_once_get_it_trained_once(storage, url, tmp_path):
    """--workers N: the parent and every worker recover dead trials; together they must not multiply them."""
    from .conftest import ROOT

    config = _config(tmp_path)
    study = _new(storage, config)
    _lost_trial(study)
    go = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", RECOVER.format(root=str(ROOT), url=url, go=go)])
             for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    seen, runner = _count_runs()
    _run(study, config, runner, n=3)
    assert seen.count(0.3) == 1
    assert [t.params["dropout"] for t in study.get_trials(states=(TrialState.COMPLETE,))].count(0.3) == 1
