"""Trials in their own process: results, reasons for failure, and peak memory that belongs to the trial."""

from __future__ import annotations

import numpy as np
import pytest

from search import features
from search.errors import DataError, TrialFailed
from search.isolate import run_isolated


def test_result_and_progress_events():
    events = []
    out = run_isolated("tests.jobs:allocate", {"mb": 8}, events.append)
    assert out.result == {"sum": 8 * 2**20 // 4096}
    assert events == [{"event": "progress", "stage": "allocated", "mb": 8}]


def test_stdout_noise_cannot_corrupt_the_protocol():
    assert run_isolated("tests.jobs:chatter", {}).result == {"ok": True}


def test_allocation_shows_in_peak_memory():
    small = run_isolated("tests.jobs:allocate", {"mb": 1})
    big = run_isolated("tests.jobs:allocate", {"mb": 256})
    assert big.peak_memory_mb >= big.start_memory_mb + 256
    assert big.peak_memory_mb - small.peak_memory_mb >= 230  # the 1 MB job has a few MB of its own


def test_peak_is_the_child_own_even_under_a_large_parent():
    """Linux carries a parent's RSS peak into its child's ru_maxrss; the trial's peak must not include it."""
    import numpy as np

    ballast = np.ones(800 * 2**20, dtype=np.uint8)  # the parent now holds 800 MB more
    small = run_isolated("tests.jobs:allocate", {"mb": 1})
    assert small.peak_memory_mb < 400, small
    assert ballast[-1] == 1


def test_exception_fails_with_its_reason():
    with pytest.raises(TrialFailed, match="ValueError: boom in the trial"):
        run_isolated("tests.jobs:crash", {})


def test_killed_child_is_reported():
    with pytest.raises(TrialFailed, match=r"trial process killed by SIGKILL \(out of memory\?\)"):
        run_isolated("tests.jobs:die", {})


def test_service_errors_keep_their_type():
    with pytest.raises(DataError, match="no such data"):
        run_isolated("tests.jobs:data_error", {})


@pytest.mark.slow
def test_same_trial_same_peak_memory_first_or_sixth(tmp_path):
    """Memory is per trial: the sixth trial of a sequence peaks like the first."""
    rng = np.random.default_rng(0)

    def build(tmp):
        np.save(tmp / "features.npy", rng.normal(size=(2000, 2048)).astype(np.float32))
        np.save(tmp / "labels.npy", np.arange(2000) % 10)

    features.ensure_cached(tmp_path, "k", build)
    params = dict(split_ratio=0.8, epochs=2, batch_size=32, learning_rate=1e-3, dropout=0.3, l1=0.0,
                  l2=0.0, units=256, balance="balanced")
    spec = {"cache_dir": str(tmp_path), "key": "k", "n_classes": 10, "params": params, "seed": 0,
            "reduce_classes": [0, 1, 2], "reduce_fraction": 0.1}
    first = run_isolated("search.trial:run_trial", spec).peak_memory_mb
    for units in (64, 512, 1024, 128, 2048):
        run_isolated("search.trial:run_trial", {**spec, "params": {**params, "units": units}})
    sixth = run_isolated("search.trial:run_trial", spec).peak_memory_mb
    assert abs(sixth - first) <= 0.10 * first
