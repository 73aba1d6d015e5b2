"""Fault injection through the real CLI: kill -9, Ctrl-C, SIGTERM, failing trials, failing storage, bad configs.

Each test runs ``python -m search.run`` on a tiny synthetic Fashion-MNIST and
checks the SQLite file afterwards the way a user would: with plain Optuna and
with ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import time

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import TINY_CONFIG
from .test_config import BAD, SMOKE


def _db_states(db) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60) as con:
        try:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        except sqlite3.OperationalError:  # tables not created yet
            return {}


def _wait_for(predicate, timeout: float, proc=None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stdout.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def _trials(tiny, name="tiny"):
    return optuna.load_study(study_name=name, storage=tiny.storage).get_trials()


def _integrity(db) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _assert_retried(trials, n_target):
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == n_target
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for f in failed:  # every interrupted trial ran again to completion, with its parameters
        retries = [c for c in complete if f.number in c.system_attrs.get("retry_history", ())]
        assert retries, f"trial {f.number} {f.params} was not retried"
        # A trial stopped before its first suggest has no parameters: its retry samples afresh.
        assert f.params == {} or any(c.params == f.params for c in retries), f"trial {f.number}"
    return failed


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_trial(tiny):
    n, k = 6, 3
    rng = random.Random(1)
    cfg = tiny.config(n_trials=n)
    for _ in range(k):
        proc = tiny.popen(*tiny.args(cfg))
        _wait_for(lambda: _db_states(tiny.db).get("RUNNING", 0) > 0, 300, proc)
        time.sleep(rng.uniform(0.0, 3.0))  # somewhere inside the trial: start-up, training or metrics
        proc.kill()
        proc.wait()
    final = tiny.run(*tiny.args(cfg))
    assert final.returncode == 0, final.stderr
    trials = _trials(tiny)
    failed = _assert_retried(trials, n)
    killed_running = [t for t in failed if "died" in t.user_attrs.get("fail_reason", "")]
    assert 1 <= len(killed_running) <= k
    assert "retried lost trials" in final.stderr or len(killed_running) < k
    assert _integrity(tiny.db) == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_marks_the_trial_retriable_within_5s(tiny, sig, code):
    cfg = tiny.config(n_trials=3)
    proc = tiny.popen(*tiny.args(cfg))
    _wait_for(lambda: _db_states(tiny.db).get("RUNNING", 0) > 0, 300, proc)
    time.sleep(1.0)
    proc.send_signal(sig)
    marked = _wait_for(lambda: _db_states(tiny.db).get("RUNNING", 0) == 0, 30)
    out, _ = proc.communicate(timeout=60)
    assert marked < 5.0
    assert proc.returncode == code, out
    assert f"interrupted by {sig.name}" in out and "run the same command to resume" in out
    stopped = _trials(tiny)
    failed = [t for t in stopped if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == f"interrupted by {sig.name}"
    assert [t.params for t in stopped if t.state == TrialState.WAITING] == [failed[0].params]
    assert _integrity(tiny.db) == "ok"

    resumed = tiny.run(*tiny.args(cfg))
    assert resumed.returncode == 0, resumed.stderr
    _assert_retried(_trials(tiny), 3)


@pytest.mark.slow
def test_interrupted_at_17_of_40_resumes_to_exactly_40(tiny):
    cfg = tiny.config(n_trials=40)
    proc = tiny.popen(*tiny.args(cfg))
    _wait_for(lambda: _db_states(tiny.db).get("COMPLETE", 0) >= 17, 1800, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert 17 <= _db_states(tiny.db)["COMPLETE"] < 40
    r = tiny.run(*tiny.args(cfg), timeout=2400)
    assert r.returncode == 0, r.stderr
    _assert_retried(_trials(tiny), 40)
    assert _integrity(tiny.db) == "ok"


def test_nan_loss_fails_the_trial_and_repeated_failures_stop_with_a_reason(tiny):
    # An L2 strength of 1e38 overflows float32 in the regularization term: every trial's loss is inf.
    text = TINY_CONFIG.format(n_trials=5).replace("units = 32", "units = 32\nl2 = 1e38")
    text = text.replace('l2 = {{ type = "categorical", choices = [0.0, 1e-4] }}'.replace("{{", "{").replace("}}", "}"), "")
    text = text.replace("[run]", "[run]\nmax_consecutive_failures = 2")
    r = tiny.run(*tiny.args(tiny.config(text=text)))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: stopped after 2 consecutive failed trials; last: ")
    trials = _trials(tiny)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("nan" in t.user_attrs["fail_reason"].lower() or "inf" in t.user_attrs["fail_reason"].lower()
               for t in trials)


def test_storage_write_failing_at_the_end_of_a_trial_is_reported(tiny, monkeypatch, capsys):
    """Optuna hides this behind AssertionError('Should not reach.'); the user sees the real error."""
    from search import run

    cfg = tiny.config(n_trials=1)
    real = optuna.storages.RDBStorage.set_trial_state_values

    def failing(self, trial_id, state, values=None):
        if state == TrialState.COMPLETE:
            raise optuna.exceptions.StorageInternalError("disk I/O error")
        return real(self, trial_id, state, values)

    monkeypatch.setenv("SEARCH_OFFLINE", "1")
    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", failing)
    code = run.main(tiny.args(cfg))
    err = capsys.readouterr().err
    assert code == 1
    assert "error: storage write failed: StorageInternalError: disk I/O error" in err
    assert "Should not reach" not in err
    assert _integrity(tiny.db) == "ok"


@pytest.fixture(scope="module")
def stored_study(tmp_path_factory):
    """A database holding one finished study, to check that bad input leaves it byte-for-byte unchanged."""
    from .conftest import Tiny

    tiny = Tiny(tmp_path_factory.mktemp("stored"))
    r = tiny.run(*tiny.args(tiny.config(n_trials=1)))
    assert r.returncode == 0, r.stderr
    return tiny


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_config_leaves_the_database_unchanged(stored_study, old, new, message):
    tiny = stored_study
    before = hashlib.sha256(tiny.db.read_bytes()).hexdigest()
    bad = tiny.tmp / "bad.toml"
    bad.write_text(SMOKE.replace(old, new, 1))
    r = tiny.run(*tiny.args(bad), timeout=120)
    assert r.returncode == 2
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: {bad}: ") and message in line
    assert hashlib.sha256(tiny.db.read_bytes()).hexdigest() == before
