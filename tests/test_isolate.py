"""search.isolate: a job in its own process: its result, its reason for failing, its own time, cores and memory."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import psutil
import pytest

from search.errors import DataError, TrialFailed
from search.features import feature_cache
from search.isolate import run_isolated


def test_result_and_progress_events():
    events = []
    out = run_isolated("tests.jobs:allocate", {"mb": 8}, events.append)
    assert out.result == {"sum": 8 * 2**20 // 4096}
    assert events == [{"event": "progress", "stage": "allocated", "mb": 8}]


def test_stdout_noise_cannot_corrupt_the_protocol():
    assert run_isolated("tests.jobs:chatter", {}).result == {"ok": True}


def test_exception_fails_the_trial_with_its_reason():
    with pytest.raises(TrialFailed, match="ValueError: boom in the trial") as e:
        run_isolated("tests.jobs:crash", {})
    assert e.value.kind == "error"


def test_killed_child_is_reported_as_killed():
    with pytest.raises(TrialFailed, match=r"trial process killed by SIGKILL \(out of memory\?\)") as e:
        run_isolated("tests.jobs:die", {})
    assert e.value.kind == "killed"  # retried with the same parameters (search.study.lifecycle.RETRIED_KINDS)


def test_service_errors_keep_their_type():
    with pytest.raises(DataError, match="no such data"):
        run_isolated("tests.jobs:data_error", {})


def test_a_job_past_its_time_limit_is_killed_and_fails_as_timed_out(tmp_path):
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(TrialFailed, match=r"^timed out after 2 s$") as e:
        run_isolated("tests.jobs:sleep", {"seconds": 60, "pid_file": str(pid_file)}, timeout=2)
    assert e.value.kind == "timeout"
    assert time.monotonic() - start < 30
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_job_inside_its_time_limit_is_not_disturbed(tmp_path):
    out = run_isolated("tests.jobs:sleep", {"seconds": 0.5, "pid_file": str(tmp_path / "pid")}, timeout=30)
    assert out.result == {"slept": 0.5}


def test_a_256_mb_allocation_shows_in_trial_memory():
    small = run_isolated("tests.jobs:allocate_after_baseline", {"mb": 1})
    big = run_isolated("tests.jobs:allocate_after_baseline", {"mb": 256})
    # The host may reclaim a few of the baseline's file-backed pages (shared libraries) between the mark and
    # the peak (seen: 0.03 MB), so the peak above the baseline can fall a hair short of the 256 MB touched.
    slack = 4
    assert 256 - slack <= big.trial_memory_mb < 256 + 40, big
    assert small.trial_memory_mb < 20, small
    assert big.peak_memory_mb >= big.baseline_memory_mb + 256 - slack


def test_memory_held_before_the_baseline_is_not_the_trials():
    """The interpreter, the backend and anything loaded before mark_baseline() are the process's, not the trial's."""
    out = run_isolated("tests.jobs:allocate_after_baseline", {"mb": 8, "before_mb": 300})
    assert out.baseline_memory_mb >= 300 and out.peak_memory_mb >= 300
    assert out.trial_memory_mb < 8 + 40, out


def test_peak_is_the_child_own_even_under_a_large_parent():
    """Linux carries a parent's RSS peak into its child's ru_maxrss; the trial's peak must not include it."""
    ballast = np.ones(800 * 2**20, dtype=np.uint8)  # the parent now holds 800 MB more
    small = run_isolated("tests.jobs:allocate", {"mb": 1})
    assert small.peak_memory_mb < 400, small
    assert ballast[-1] == 1


def test_cores_thread_settings_and_cpu_time_are_the_jobs_own():
    core = sorted(os.sched_getaffinity(0))[-1]
    out = run_isolated("tests.jobs:burn", {"seconds": 1.0}, cpus=[core])
    assert out.result == {"cores": [core], "omp": "1", "tf_intra": "1"}
    assert 0.5 <= out.cpu_time_s <= 3.0  # one busy core for a second, plus start-up


def test_a_child_killed_from_outside_fails_the_trial_as_killed(tmp_path):
    """What the kernel's out-of-memory killer does to a trial process."""
    pid_file = tmp_path / "pid"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_isolated("tests.jobs:sleep", {"seconds": 60, "pid_file": str(pid_file)})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = psutil.Process(int(pid_file.read_text()))
    child.kill()
    t.join(timeout=30)
    assert errors and isinstance(errors[0], TrialFailed) and errors[0].kind == "killed"


# ---------------------------------------------------------------- real trials (slow)

def _real_cache(tmp_path, n: int, dim: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10

    def build(tmp):
        centers = rng.normal(size=(10, dim))
        np.save(tmp / "features.npy", (centers[y] + rng.normal(size=(n, dim))).astype(np.float32))
        np.save(tmp / "labels.npy", y)

    feature_cache.ensure_cached(tmp_path, "k", build)
    return str(tmp_path), "k"


def _spec(cache: tuple[str, str], **params) -> dict:
    p = dict(split_ratio=0.8, epochs=3, batch_size=32, learning_rate=1e-3, dropout=0.3, l1=0.0, l2=0.0,
             units=256, balance="balanced", profile="paper", rho=10.0, handling="none", focal_gamma=2.0,
             label_smoothing=0.0, augmentation="none", backbone="resnet50", input_size=32)
    p.update(params)
    return {"cache_dir": cache[0], "key": cache[1], "n_classes": 10, "class_names": [str(i) for i in range(10)],
            "params": p, "seed": 0, "reduce_classes": [0, 1, 2], "reduce_fraction": 0.1, "evaluation": "test",
            "validation_fraction": 0.2, "augmentation": {}, "curve_rows": 0}


@pytest.mark.slow
def test_same_trial_same_peak_memory_first_or_sixth(tmp_path):
    """Memory is per trial: the sixth trial of a sequence peaks like the first."""
    spec = _spec(_real_cache(tmp_path, 2000, 2048), epochs=2)
    env = {"KERAS_BACKEND": "jax"}
    first = run_isolated("search.trial.child:run_trial", spec, env=env).peak_memory_mb
    for units in (64, 512, 1024, 128, 2048):
        run_isolated("search.trial.child:run_trial", {**spec, "params": {**spec["params"], "units": units}}, env=env)
    sixth = run_isolated("search.trial.child:run_trial", spec, env=env).peak_memory_mb
    assert abs(sixth - first) <= 0.10 * first


@pytest.mark.slow
def test_train_time_alone_and_beside_another_worker_agree_with_the_same_cores(tmp_path):
    """Issue 10: the same trial run alone and as one of two workers, one core each, trains within 30% of the time.

    Alone and in pairs alternate for two rounds; the fastest of each is compared (other load on the
    machine only ever adds time, so the minimum is the measurement least disturbed by it).
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    spec = _spec(_real_cache(tmp_path, 6000, 2048), epochs=3, units=512)
    env = {"KERAS_BACKEND": "jax"}
    alone: list[float] = []
    paired: dict[int, list[float]] = {c: [] for c in cores[:2]}

    def worker(core: int) -> None:
        out = run_isolated("search.trial.child:run_trial", spec, env=env, cpus=[core])
        assert out.result["threads"] == 1
        paired[core].append(out.result["train_time_s"])

    for _ in range(2):
        out = run_isolated("search.trial.child:run_trial", spec, env=env, cpus=[cores[0]])
        assert out.result["threads"] == 1
        alone.append(out.result["train_time_s"])
        threads = [threading.Thread(target=worker, args=(c,)) for c in cores[:2]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    base = min(alone)
    for core, times in paired.items():
        assert len(times) == 2, paired
        assert abs(min(times) - base) <= 0.30 * base, (core, times, alone)


def test_a_job_that_offers_a_head_start_gets_the_next_process_started_and_warmed_early():
    # The next call finds a process that imported the target and ran its warm_up() before that call began.
    first = run_isolated("tests.jobs:whoami", {"linger_s": 1.5}, prestart=True)
    called = time.time()
    second = run_isolated("tests.jobs:whoami", {}, prestart=True)
    assert second.result["pid"] != first.result["pid"]
    assert second.result["warmed_at"] is not None and second.result["warmed_at"] < called
    # The event that asked for it is not passed on as part of the job's progress.
    events = []
    run_isolated("tests.jobs:whoami", {}, events.append, prestart=True)
    assert events == [{"event": "progress", "stage": "done training"}]


def test_two_processes_wait_so_that_the_one_a_job_takes_warmed_up_before_the_previous_job_ended():
    # A trial's last steps (~2 s) are shorter than a process's warm-up (~3 s): the process the next job
    # takes must have been started a job earlier, not during the job just ended.
    run_isolated("tests.jobs:whoami", {"linger_s": 1.0}, prestart=True)
    called = time.time()
    second = run_isolated("tests.jobs:whoami", {"linger_s": 1.0}, prestart=True)
    third_called = time.time()
    third = run_isolated("tests.jobs:whoami", {}, prestart=True)
    assert second.result["warmed_at"] < called
    assert third.result["warmed_at"] < called < third_called  # started during the first job, not the second
    assert len({second.result["pid"], third.result["pid"]}) == 2


def test_without_a_head_start_each_job_starts_its_own_process_when_called():
    called = time.time()
    out = run_isolated("tests.jobs:whoami", {})
    assert out.result["warmed_at"] >= called
