"""Faults through the real command: a hung trial, a peer that fails a live trial, a dead heartbeat thread, grid
points that keep failing, kill -9, Ctrl-C and SIGTERM, a failing storage write, and bad configs on a stored study.

The trial is the stand-in (``python -m tests.stand_in_cli``) except where the real trial is the point (a real
non-finite loss); afterwards the SQLite file is checked the way a user would: with plain Optuna and
``PRAGMA integrity_check``.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search import run
from search.study import storage as sto

from .conftest import (ROOT, STAND_IN_CLI, TINY_CONFIG, Tiny, cli_env, copy_shared_cache, fill_disk, lines, run_cli,
                       stop, wait_for)
from .test_config import BAD, HUGE, SMOKE
from .test_workers import running_trials


def _trials(tiny: Tiny, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=tiny.storage).get_trials()
    except KeyError:
        return []


def _states(tiny: Tiny) -> list[TrialState]:
    return [t.state for t in _trials(tiny)]


def _integrity(db) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _running(tiny: Tiny) -> list[optuna.trial.FrozenTrial]:
    return [t for t in _trials(tiny) if t.state == TrialState.RUNNING and "resolved_params" in t.user_attrs]


def _assert_every_failure_retried(trials, target: int) -> list:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == target
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for f in failed:  # every interrupted trial ran again to completion, with its parameters
        retries = [c for c in complete if f.number in c.system_attrs.get("retry_history", ())]
        assert retries, f"trial {f.number} {f.params} was not retried"
        # A trial stopped before its first suggest has no parameters: its retry samples afresh.
        assert f.params == {} or any(c.params == f.params for c in retries), f"trial {f.number}"
    return failed


# ---------------------------------------------------------------- a trial that never ends

@pytest.mark.slow  # ~10 s: the fast suite stays under 5 minutes
def test_a_hung_trial_is_killed_at_its_time_limit_retried_then_the_run_stops(tiny):
    """Issue 15: --trial-timeout 5 on a trial that would sleep 60 s."""
    cfg = tiny.config(n_trials=2, **{"[run]": "[run]\nmax_retries = 1\nmax_consecutive_failures = 2"})
    start = time.monotonic()
    r = tiny.stand_in(*tiny.args(cfg, "--trial-timeout", "5"), seconds=60, timeout=300)
    assert time.monotonic() - start < 55  # never waited for the 60 s trial
    assert r.returncode == 1
    assert lines(r.stderr)[-1] == "error: stopped after 2 consecutive failed trials; last: timed out after 5 s"
    assert "Traceback" not in r.stderr
    first, retry = _trials(tiny)
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.FAIL)
    assert first.user_attrs["fail_reason"] == retry.user_attrs["fail_reason"] == "timed out after 5 s"
    assert first.user_attrs["fail_kind"] == "timeout"
    # Retried once with the same parameters (run.max_retries = 1), then not again: nothing is left queued.
    assert retry.params == first.params and retry.system_attrs["retry_history"] == [first.number]
    for run_ in tiny.stand_in_runs():  # the trial processes were killed, not left sleeping
        assert not psutil.pid_exists(run_["pid"]) or psutil.Process(run_["pid"]).status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------- another process fails a live trial

PEER = """
import sys, time
sys.path.insert(0, {root!r})
import optuna
from optuna.trial import TrialState
from search.study import storage, trials
optuna.logging.set_verbosity(optuna.logging.ERROR)
s = storage.open_storage({url!r})
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        study = optuna.load_study(study_name="tiny", storage=s)
    except KeyError:
        time.sleep(0.1)
        continue
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and "resolved_params" in t.user_attrs]
    if running:
        print(running[0].number, trials.fail_and_retry(study, running[0], "heartbeat silent for 3 s", kind="lost"))
        break
    time.sleep(0.1)
"""


@pytest.mark.slow  # ~10 s: the fast suite stays under 5 minutes
def test_a_live_trial_failed_by_another_process_keeps_its_result_and_the_run_goes_on(tiny):
    """Issue 15: what a peer's stale-trial sweep (or a hostname clash) does to a trial that is still running."""
    cfg = tiny.config(n_trials=2)
    # The peer is another process, started first, that fails the first trial it sees running.
    peer = subprocess.Popen([sys.executable, "-c", PEER.format(root=str(ROOT), url=tiny.storage)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = tiny.stand_in_popen(*tiny.args(cfg, "--heartbeat", "1"), seconds=4)
    try:
        peer_out, peer_err = peer.communicate(timeout=180)
        out, err = proc.communicate(timeout=300)
    finally:
        stop(peer)
        stop(proc)
    number, failed_it = peer_out.split()
    assert failed_it == "True", peer_err
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Cannot tell" not in err
    trials = _trials(tiny)
    victim = next(t for t in trials if t.number == int(number))
    assert victim.state == TrialState.FAIL and victim.user_attrs["fail_reason"] == "heartbeat silent for 3 s"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    (kept,) = [t for t in complete if t.user_attrs.get("recovered_from") == victim.number]
    assert kept.params == victim.params and kept.values[0] > 0
    # The finished result was kept, not trained again: those parameters ran in one trial process.
    assert [r["params"]["dropout"] for r in tiny.stand_in_runs()].count(victim.params["dropout"]) == 1


def test_a_dead_optuna_heartbeat_thread_does_not_get_a_live_trial_failed(tiny):
    """Issue 15: Optuna's heartbeat thread ends on its first failed write; the service's heartbeat keeps the
    trial alive while another process sweeps stale trials every half second."""
    marker = tiny.tmp / "optuna-heartbeat-broken"
    cfg = tiny.config(n_trials=1)
    env = tiny.stand_in_env(6, STAND_IN_BREAK_OPTUNA_HEARTBEAT=str(marker))
    proc = tiny.stand_in_popen(*tiny.args(cfg, "--heartbeat", "1"), env=env)
    storage = sto.open_storage(tiny.storage, heartbeat_interval=1)  # grace 3 s, as the run's
    sweeps = 0
    try:
        wait_for(lambda: _running(tiny), 120, "the trial running", proc)
        study = optuna.load_study(study_name="tiny", storage=storage)
        while proc.poll() is None:
            failed = optuna.storages.fail_stale_trials(study)
            sweeps += 1
            assert not failed, "a live trial was failed as stale"
            time.sleep(0.5)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
        sto.dispose(storage)
    assert marker.read_text().startswith("optuna heartbeat of trial id")  # the thread did die
    assert sweeps >= 8  # swept through the trial's 6 s, past the 3 s grace period
    assert proc.returncode == 0, err[-3000:]
    assert _states(tiny) == [TrialState.COMPLETE]


# ---------------------------------------------------------------- grids: every point once

GRID = TINY_CONFIG.format(n_trials=2).replace('name = "random"', 'name = "grid"').replace(
    'dropout = { type = "float", low = 0.1, high = 0.7 }', "").replace(
    "choices = [0.0, 1e-4]", "choices = [0.0, 0.5]").replace("[run]", "[run]\nmax_retries = 1")


def test_a_failing_grid_point_is_retried_then_named_and_completes_when_run_again(tiny):
    """A point that fails every attempt (here: while a file exists, e.g. memory pressure) stops the run naming it;
    the same command later completes it; no point is ever COMPLETE twice."""
    cfg = tiny.config(text=GRID)
    gate = tiny.tmp / "still-failing"
    gate.write_text("")
    env = tiny.stand_in_env(0.2, STAND_IN_FAIL=json.dumps({"l2": 0.5}), STAND_IN_FAIL_WHILE=str(gate))
    r = tiny.stand_in(*tiny.args(cfg), env=env)
    assert r.returncode == 1
    assert lines(r.stderr)[-1] == ("error: grid point l2=0.5 failed 2 times; "
                                   "last: training loss became NaN/inf at epoch 1")
    assert [(t.params["l2"], t.state) for t in _trials(tiny)] == [
        (0.0, TrialState.COMPLETE), (0.5, TrialState.FAIL), (0.5, TrialState.FAIL)]
    gate.unlink()
    r = tiny.stand_in(*tiny.args(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert "2/2 COMPLETE trials (1 this run" in r.stderr
    complete = [t.params["l2"] for t in _trials(tiny) if t.state == TrialState.COMPLETE]
    assert sorted(complete) == [0.0, 0.5]


def test_a_regularization_that_would_overflow_the_loss_is_refused_at_load(tiny):
    """Issue 10's grid point l2 = 1e38 (a real trial's loss overflowed) no longer reaches a trial."""
    cfg = tiny.config(text=GRID.replace("choices = [0.0, 0.5]", "choices = [0.0, 1e38]"))
    r = tiny.stand_in(*tiny.args(cfg))
    assert r.returncode == 2
    assert lines(r.stderr) == [f"error: {cfg}: search_space.l2.choices[1]: Input should be less than or equal to 1 "
                               f"(got 1e+38)"]
    assert not tiny.db.exists()


# ---------------------------------------------------------------- signals and kill -9

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_and_its_trial_is_retried_on_resume(tiny, sig):
    cfg = tiny.config(n_trials=3)
    proc = tiny.stand_in_popen(*tiny.args(cfg), seconds=60, merge=True)
    try:
        (running,) = wait_for(lambda: _running(tiny), 120, "a running trial", proc)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)  # the run ends on its own: no trial of 60 s is waited for
    finally:
        stop(proc)
    assert proc.returncode == 128 + sig, out
    assert lines(out)[-1] == (f"interrupted by {sig.name}: trial(s) {running.number} recorded as failed and queued "
                              f"for retry; 0/3 COMPLETE; run the same command to resume")
    assert "Traceback" not in out
    stopped = _trials(tiny)
    assert [t.state for t in stopped] == [TrialState.FAIL, TrialState.WAITING]
    assert stopped[0].user_attrs["fail_reason"] == f"interrupted by {sig.name}"
    assert stopped[1].params == stopped[0].params
    assert _integrity(tiny.db) == "ok"
    resumed = tiny.stand_in(*tiny.args(cfg))
    assert resumed.returncode == 0, resumed.stderr
    _assert_every_failure_retried(_trials(tiny), 3)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_trial(tiny):
    n, kills = 6, 3
    rng = random.Random(1)
    cfg = tiny.config(n_trials=n)
    for _ in range(kills):
        proc = tiny.stand_in_popen(*tiny.args(cfg), seconds=2)
        wait_for(lambda: TrialState.RUNNING in _states(tiny), 120, "a running trial", proc)
        time.sleep(rng.uniform(0.0, 2.5))  # somewhere in the trial: start-up, sleep, recording
        proc.kill()
        proc.communicate()
    final = tiny.stand_in(*tiny.args(cfg), seconds=0.2)
    assert final.returncode == 0, final.stderr
    failed = _assert_every_failure_retried(_trials(tiny), n)
    assert 1 <= len([t for t in failed if "died" in t.user_attrs.get("fail_reason", "")]) <= kills
    assert _integrity(tiny.db) == "ok"


@pytest.mark.slow
def test_stopped_at_17_of_40_a_resume_ends_with_exactly_40(tiny):
    cfg = tiny.config(n_trials=40)
    proc = tiny.stand_in_popen(*tiny.args(cfg), seconds=0.2)
    try:
        wait_for(lambda: _states(tiny).count(TrialState.COMPLETE) >= 17, 900, "17 COMPLETE trials", proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 143
    assert 17 <= _states(tiny).count(TrialState.COMPLETE) < 40
    r = tiny.stand_in(*tiny.args(cfg), seconds=0.2, timeout=1800)
    assert r.returncode == 0, r.stderr
    _assert_every_failure_retried(_trials(tiny), 40)
    assert _integrity(tiny.db) == "ok"


# ---------------------------------------------------------------- storage and config faults

def test_a_storage_write_failing_at_the_end_of_a_trial_is_reported(tiny, main_here, monkeypatch):
    """Optuna hides this behind AssertionError('Should not reach.'); the user sees the real error."""
    real = optuna.storages.RDBStorage.set_trial_state_values

    def failing(self, trial_id, state, values=None):
        if state == TrialState.COMPLETE:
            raise optuna.exceptions.StorageInternalError("disk I/O error")
        return real(self, trial_id, state, values)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", failing)
    code, err = main_here(lambda argv: run.main(argv, trial_target="tests.stand_ins:fast_trial"),
                          *tiny.args(tiny.config(n_trials=1)))
    assert code == 1
    assert lines(err)[-1] == "error: storage write failed: StorageInternalError: disk I/O error"
    assert "Should not reach" not in err
    assert _integrity(tiny.db) == "ok"


@pytest.fixture(scope="module")
def stored_study(tmp_path_factory) -> Tiny:
    """A database holding one finished study, to check that bad input leaves it byte-for-byte unchanged."""
    tiny = Tiny(tmp_path_factory.mktemp("stored"))
    r = tiny.stand_in(*tiny.args(tiny.config(n_trials=1)))
    assert r.returncode == 0, r.stderr
    return tiny


@pytest.mark.parametrize("old,new,message", BAD + HUGE, ids=[b[2][:40] for b in BAD + HUGE])
def test_a_bad_config_leaves_a_stored_study_unchanged(stored_study, main_here, old, new, message):
    tiny = stored_study
    before = hashlib.sha256(tiny.db.read_bytes()).hexdigest()
    bad = main_here.work / "bad.toml"
    bad.write_text(SMOKE.replace(old, new, 1))
    code, err = main_here(run.main, *tiny.args(bad))
    assert code == 2
    (line,) = lines(err)
    assert line.startswith(f"error: {bad}: ") and message in line
    assert hashlib.sha256(tiny.db.read_bytes()).hexdigest() == before


# ---------------------------------------------------------------- a damaged database

def _damage_trials_table(db) -> None:
    """Overwrite 1,000 bytes inside the pages of Optuna's ``trials`` table; the file keeps its size."""
    con = sqlite3.connect(db)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'trials'").fetchone()[0]
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size + 8)
        f.write(bytes(random.Random(0).randrange(256) for _ in range(1000)))
    assert db.stat().st_size == size


def test_a_damaged_database_is_one_line_from_every_command_and_nothing_is_written(tiny):
    r = tiny.stand_in(*tiny.args(tiny.config(n_trials=2)))
    assert r.returncode == 0, r.stderr
    _damage_trials_table(tiny.db)
    before = hashlib.sha256(tiny.db.read_bytes()).hexdigest()
    commands = [(STAND_IN_CLI, tiny.args(tiny.config(n_trials=2))),
                ("search.report", ["--study", "tiny", "--storage", tiny.storage, "--out", str(tiny.tmp / "rep")]),
                ("search.confirm", ["--study", "tiny", "--storage", tiny.storage, "--cache-dir", str(tiny.cache_dir)])]
    for module, args in commands:
        r = run_cli(*args, module=module, cwd=tiny.tmp, env=tiny.stand_in_env())
        err = lines(r.stderr)
        assert r.returncode == 1 and len(err) == 1, (module, r.stderr)
        assert err[0].startswith(f"error: {tiny.db} is damaged (integrity_check: "), (module, err)
        assert err[0].endswith("): restore a copy, or recover it with sqlite3's .recover"), (module, err)
        assert hashlib.sha256(tiny.db.read_bytes()).hexdigest() == before, module
    assert not (tiny.tmp / "rep").exists()


# ---------------------------------------------------------------- a full disk

def _full_disk_error(r) -> None:
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    (error,) = [ln for ln in lines(r.stderr) if ln.startswith("error:")]
    assert error == lines(r.stderr)[-1]
    assert error.startswith("error: no space left on the device of "), error
    assert "free space and re-run the same command" in error


@pytest.mark.slow  # ~10 s: the fast suite stays under 5 minutes
def test_a_full_disk_is_one_line_and_the_same_command_finishes_once_space_is_freed(tiny, small_disk):
    storage = f"sqlite:///{small_disk / 'study.db'}"

    def args(n):
        a = tiny.args(tiny.config(n_trials=n), "--artifact-dir", str(small_disk / "artifacts"), "--heartbeat", "1")
        a[a.index("--storage") + 1] = storage
        return a

    assert tiny.stand_in(*args(2)).returncode == 0
    fill_disk(small_disk)  # full before the command starts
    _full_disk_error(tiny.stand_in(*args(4)))
    (small_disk / "filler").unlink()
    proc = tiny.stand_in_popen(*args(4), seconds=3)
    try:  # full while a trial trains: its result cannot be written
        wait_for(lambda: running_trials(storage, "tiny"), 120, "a running trial", proc)
        fill_disk(small_disk)
        out, err = proc.communicate(timeout=300)
    finally:
        stop(proc)
    _full_disk_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    (small_disk / "filler").unlink()
    assert _integrity(small_disk / "study.db") == "ok"
    r = tiny.stand_in(*args(4))
    assert r.returncode == 0, r.stderr[-3000:]
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=storage).trials]
    assert states.count(TrialState.COMPLETE) == 4 and TrialState.RUNNING not in states


def test_a_full_disk_under_the_report_folder_is_one_line_and_the_earlier_report_stays(tmp_path, small_disk):
    from .test_report_fixtures import small_study, sqlite

    storage = sqlite(tmp_path / "s.db")  # the database on a disk with space: only the report's folder is full
    small_study(storage)
    out = small_disk / "report"
    args = [sys.executable, "-m", "search.report", "--study", "search", "--storage", storage, "--out", str(out)]
    assert subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill_disk(small_disk)
    r = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines(r.stderr) == [f"error: --out: cannot write the report to {out}: No space left on device"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier report, whole
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "report"]  # no half-written folder left


@pytest.mark.slow  # a real view extraction (random weights, 250 images x 2 views)
def test_a_full_disk_under_the_view_cache_is_one_line_and_leaves_no_partial_entry(tmp_path, small_disk):
    tiny = Tiny(tmp_path, cache=False)
    tiny.cache_dir = small_disk / "cache"
    plain = copy_shared_cache(tiny.cache_dir)  # only the view cache is left to write
    config = tiny.config(n_trials=1, **{"[training]": '[augmentation]\nmode = "views"\nviews = 2\n\n[training]'})
    fill_disk(small_disk)
    r = tiny.run(*tiny.args(config))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    error = lines(r.stderr)[-1]
    assert error == (f"error: cannot write feature cache in {tiny.cache_dir}: no space left on device; free space "
                     "and re-run the same command"), error
    assert sorted(p.name for p in tiny.cache_dir.iterdir() if not p.name.endswith(".lock")) == [plain.name]
    (small_disk / "filler").unlink()
    r = tiny.run(*tiny.args(config))
    assert r.returncode == 0, r.stderr[-3000:]
    (t,) = optuna.load_study(study_name="tiny", storage=tiny.storage).trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["augmentation"] == "views"


# ---------------------------------------------------------------- randomized kills (benchmarks.kill_test)

@pytest.mark.slow
def test_a_kill_9_in_every_stage_loses_nothing_and_the_same_command_finishes(tmp_path):
    """The short version of ``python -m benchmarks.kill_test``: one seeded kill per stage (extraction, view
    extraction, training, artifact upload, snapshot recording, a worker's commit), each resumed and checked."""
    from benchmarks import kill_test

    from .conftest import requires

    requires("fashion")
    res = kill_test.run(tmp_path / "kill", kills=len(kill_test.STAGES), seed=1, size="short")
    assert res["survived"] == res["kills"] == len(kill_test.STAGES)
    assert all(s["complete_grid_points"] == kill_test.GRID_POINTS["short"] for s in res["studies"])
