"""``--workers N`` and several ``search.run`` processes on one study: exact target, no lost trial, retries.

The concurrency tests run the real CLI, the real optimize loop and a real
storage; only the trial itself is a stand-in (``search.workers:fast_trial``,
a process that sleeps instead of training) and the feature cache is seeded
without TensorFlow, so 40 trials take seconds on 2 cores.  The helpers here
are shared with test_postgres.py.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import psutil
import pytest
from optuna.trial import TrialState

from .conftest import Tiny, cli_env, run_cli

FAST_ATTRS = {"accuracy", "precision", "recall", "f1", "roc_auc", "train_time_s", "test_time_s",
              "peak_memory_mb", "n_train", "n_test", "resolved_params"}


def fast_env(seconds: float = 0.2) -> dict[str, str]:
    return {**cli_env(), "SEARCH_TRIAL_FN": "search.workers:fast_trial", "SEARCH_FAST_TRIAL_S": str(seconds)}


def seed_cache(tiny: Tiny, config: Path, cache_dir: Path | None = None) -> Path:
    """Put the entry ``search.run`` will look for into the cache, without running the backbone."""
    from search import config as cfg
    from search import data, features

    c = cfg.load_config(str(config))
    pooled = data.load_pooled(c.dataset.name, tiny.data_dir, c.dataset.subset)
    weights = features.resolve_weights(c.backbone.weights)
    key = features.cache_key(c.dataset.name, c.dataset.subset, c.preprocessing.name, c.preprocessing.resize,
                             weights, pooled.fingerprint())

    def build(tmp: Path) -> None:
        np.save(tmp / "features.npy", np.zeros((len(pooled.labels), 8), np.float32))
        np.save(tmp / "labels.npy", pooled.labels)

    cache_dir = cache_dir or tiny.cache_dir
    features.ensure_cached(cache_dir, key, build)
    return cache_dir / key


def fast_args(tiny: Tiny, n_trials: int, storage: str | None = None, *extra: str) -> list[str]:
    cfg = tiny.config(n_trials=n_trials)
    seed_cache(tiny, cfg)
    args = tiny.args(cfg, "--heartbeat", "1", *extra)
    if storage is not None:
        args[args.index("--storage") + 1] = storage
    return args


def popen(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def check_study(storage: str, name: str, target: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``target`` COMPLETE trials, none RUNNING, each complete and each failure retried."""
    trials = trials_of(storage, name)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == target, {s.name: len(v) for s, v in by_state.items()}
    assert not by_state[TrialState.RUNNING], [t.number for t in by_state[TrialState.RUNNING]]
    assert len({t._trial_id for t in trials}) == len({t.number for t in trials}) == len(trials)
    for t in by_state[TrialState.COMPLETE]:
        assert len(t.values) == 4 and all(math.isfinite(v) for v in t.values), t.number
        assert FAST_ATTRS <= set(t.user_attrs), (t.number, FAST_ATTRS - set(t.user_attrs))
        assert t.values[0] == t.user_attrs["accuracy"] and t.values[1] == t.user_attrs["roc_auc"]
        assert set(t.params) == {"dropout", "l2"} and "search:owner" in t.system_attrs
    # No trial lost: every failure has a retry with the same parameters.
    for t in by_state[TrialState.FAIL]:
        retries = [r for r in trials if t.number in r.system_attrs.get("retry_history", [])]
        assert retries, f"failed trial {t.number} was not queued for retry"
        assert all(r.params == t.params for r in retries if r.params)
    return trials


def owner_pids(storage: str, name: str) -> set[int]:
    return {t.system_attrs["search:owner"]["pid"] for t in trials_of(storage, name)
            if "search:owner" in t.system_attrs}


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def running_with_params(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return [t for t in trials_of(storage, name)
                if t.state == TrialState.RUNNING and "resolved_params" in t.user_attrs]
    except KeyError:  # the study is not created yet
        return []


# ---------------------------------------------------------------- shared scenarios (SQLite here, PostgreSQL too)

def scenario_exact_target(tiny: Tiny, storage: str, workers: int, target: int, name: str = "tiny",
                          seconds: float = 0.2, timeout: float = 400) -> tuple[subprocess.CompletedProcess, list]:
    args = fast_args(tiny, target, storage, "--study-name", name, "--workers", str(workers))
    r = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tiny.tmp, env=fast_env(seconds),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = check_study(storage, name, target)
    assert f"{target}/{target} COMPLETE trials ({target} this run by {workers} workers; stopped by target)" in r.stderr
    assert len(owner_pids(storage, name)) == workers  # every worker ran trials
    assert len(re.findall(r"^trial \d+ COMPLETE", r.stderr, re.M)) == target  # one display for all
    assert "Pareto-optimal trials of" in r.stdout and r.stdout.count("Pareto-optimal") == 1
    return r, trials


def scenario_killed_worker(tiny: Tiny, storage: str, name: str = "tiny") -> None:
    target, workers = 10, 3
    args = fast_args(tiny, target, storage, "--study-name", name, "--workers", str(workers))
    proc = popen(args, fast_env(1.5), tiny.tmp)
    try:
        victim = wait_for(lambda: running_with_params(storage, name), 120, "a running trial", proc)[0]
        pid = victim.system_attrs["search:owner"]["pid"]
        assert psutil.Process(pid).parent().pid == proc.pid  # a worker, not the parent
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert re.search(rf"worker \d \(pid {pid}\) killed by SIGKILL; its trial\(s\) {victim.number} failed and queued",
                     err), err[-3000:]
    trials = check_study(storage, name, target)
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == f"owner process {pid} died"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == lost.params
    assert retry[0].system_attrs["search:owner"]["pid"] not in (pid, proc.pid)  # another worker ran it


# ---------------------------------------------------------------- tests

def test_workers_must_be_positive(tmp_path):
    r = run_cli("--study", "smoke", "--workers", "0", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --workers: must be positive, got 0"
    assert os.listdir(tmp_path) == []


def test_fast_trial_is_deterministic_and_complete(monkeypatch):
    from search.workers import fast_trial

    monkeypatch.setenv("SEARCH_FAST_TRIAL_S", "0")
    spec = {"n_classes": 10, "params": {"dropout": 0.3}, "reduce_classes": [0, 1, 2]}
    a, b = fast_trial(spec, lambda **k: None), fast_trial(spec, lambda **k: None)
    assert a == b and 0 <= a["accuracy"] <= 1
    assert a != fast_trial({**spec, "params": {"dropout": 0.4}}, lambda **k: None)


@pytest.mark.slow
def test_four_workers_complete_exactly_the_target_on_sqlite(tiny, monkeypatch):
    _, trials = scenario_exact_target(tiny, tiny.storage, workers=4, target=40)
    # Each trial's values are its own (derived from its parameters), none mixed up between workers.
    from search.workers import fast_trial

    monkeypatch.setenv("SEARCH_FAST_TRIAL_S", "0")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            spec = {"n_classes": 10, "params": t.user_attrs["resolved_params"], "reduce_classes": [0, 1, 2]}
            assert t.user_attrs["accuracy"] == fast_trial(spec, lambda **k: None)["accuracy"]


@pytest.mark.slow
def test_killed_worker_trial_is_retried_by_another_worker_sqlite(tiny):
    scenario_killed_worker(tiny, tiny.storage)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_parent_stops_every_worker_and_trials_stay_retriable(tiny, sig):
    target, workers = 6, 3
    args = fast_args(tiny, target, None, "--workers", str(workers))
    proc = popen(args, fast_env(30), tiny.tmp)
    try:
        running = wait_for(lambda: len(running_with_params(tiny.storage, "tiny")) == workers and
                           running_with_params(tiny.storage, "tiny"), 120, "every worker in a trial", proc)
        worker_pids = {t.system_attrs["search:owner"]["pid"] for t in running}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err[-3000:]
    numbers = ", ".join(str(t.number) for t in sorted(running, key=lambda t: t.number))
    last = err.strip().splitlines()[-1]
    assert last == (f"interrupted by {signal.Signals(sig).name}: trial(s) {numbers} recorded as failed and "
                    f"queued for retry; 0/{target} COMPLETE; run the same command to resume"), err[-3000:]
    assert "Traceback" not in err
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in worker_pids)
    trials = trials_of(tiny.storage, "tiny")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len([t for t in trials if t.state == TrialState.WAITING]) == workers
    # The same command resumes: the retried parameters run first, the target is met exactly.
    r = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tiny.tmp, env=fast_env(0.2),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    done = check_study(tiny.storage, "tiny", target)
    failed_params = [t.params for t in trials if t.state == TrialState.FAIL]
    assert all(any(d.params == p and d.state == TrialState.COMPLETE for d in done) for p in failed_params)


@pytest.mark.slow
def test_feature_cache_is_built_once_by_concurrent_processes(tiny):
    """Three ``search.run`` processes at once on one study ("three machines"): two share a cache
    directory, one has its own.  Each directory is built exactly once, by one process; the real
    backbone runs, the trials are stand-ins."""
    cfg = tiny.config(n_trials=6)
    shared, own = tiny.tmp / "cache-shared", tiny.tmp / "cache-own"
    procs = []
    for cache in (shared, shared, own):
        args = tiny.args(cfg, "--heartbeat", "1")
        args[args.index("--cache-dir") + 1] = str(cache)
        procs.append((cache, popen(args, fast_env(0.3), tiny.tmp)))
    results = [(cache, p, *p.communicate(timeout=600)) for cache, p in procs]
    for cache, p, out, err in results:
        assert p.returncode == 0, err[-3000:]
    built = [(cache, err) for cache, p, out, err in results if "features cached in" in err]
    assert sorted(str(c) for c, _ in built) == sorted([str(shared), str(own)]), [e[-500:] for *_, e in results]
    for cache in (shared, own):
        entries = [e for e in cache.iterdir() if e.is_dir()]
        assert len(entries) == 1 and not entries[0].name.startswith(".")  # no leftover temporary build
    check_study(tiny.storage, "tiny", 6)


@pytest.mark.slow
def test_workers_with_real_trials_build_the_cache_once(tiny):
    """The real trial (Keras head on real features) through --workers: the parent extracts, workers reuse."""
    r = tiny.run(*tiny.args(tiny.config(n_trials=3), "--workers", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("features cached in") == 1
    assert "3/3 COMPLETE trials (3 this run by 2 workers; stopped by target)" in r.stderr
    trials = [t for t in trials_of(tiny.storage, "tiny") if t.state == TrialState.COMPLETE]
    assert len(trials) == 3
    assert all({"confusion_matrix", "per_class_recall", "peak_memory_mb"} <= set(t.user_attrs) for t in trials)
    assert len({t.system_attrs["search:owner"]["pid"] for t in trials}) <= 2
