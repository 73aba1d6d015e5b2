"""search.study.repeats: repeats stored one attribute per (trial, seed), so concurrent confirmations merge; summaries
with t-intervals; arms compared paired by seed (never by position), naming the seeds one arm lacks."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import optuna
import pytest
from scipy import stats

from search.study import repeats

from .conftest import ROOT

A = {1: 0.80, 2: 0.82, 3: 0.81, 4: 0.83, 5: 0.79}
B = {1: 0.70, 2: 0.73, 4: 0.74, 5: 0.69}  # seed 3 failed in this arm


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")


def test_each_run_is_its_own_attribute_and_failures_are_kept_with_their_reason(study):
    repeats.store_run(study, 4, 1, {"balance": "balanced"}, {"val_accuracy": 0.8, "keras_backend": "jax",
                                                               "feasible": True, "history": {}})
    repeats.store_run(study, 4, 2, {"balance": "balanced"}, None, error="training loss became NaN/inf at epoch 1")
    attrs = study.user_attrs
    assert attrs["search:confirm:4:1"] == {"params": {"balance": "balanced"}, "seed": 1,
                                           "metrics": {"val_accuracy": 0.8}}  # numbers only
    assert attrs["search:confirm:4:2"]["error"] == "training loss became NaN/inf at epoch 1"
    summary = repeats.confirmed(attrs)["trials"]["4"]
    assert summary["seeds"] == [1, 2] and summary["failed"] == {"2": "training loss became NaN/inf at epoch 1"}
    assert summary["metrics"]["val_accuracy"]["n"] == 1


def test_summary_is_mean_std_and_the_t_interval_of_the_mean():
    s = repeats.summarize({1: 1.0, 2: 2.0, 3: 3.0, 4: float("nan")})
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    t = stats.t.ppf(0.975, 2)
    assert s["ci95"] == pytest.approx([2 - t / math.sqrt(3), 2 + t / math.sqrt(3)])
    assert s["by_seed"] == {"1": 1.0, "2": 2.0, "3": 3.0}  # the non-finite seed is left out, by name
    assert repeats.summarize({1: 0.5})["ci95"] is None


def _summary(a: dict[int, float], b: dict[int, float]) -> dict:
    return {"trials": {
        "0": {"params": {"balance": "balanced", "handling": "none"},
              "metrics": {"test_balanced_accuracy": repeats.summarize(a)}},
        "1": {"params": {"balance": "imbalanced", "handling": "none"},
              "metrics": {"test_balanced_accuracy": repeats.summarize(b)}}}}


def test_arms_are_paired_by_seed_and_the_missing_seed_is_named():
    (d,) = repeats.differences(_summary(A, B), ["test_balanced_accuracy"])
    shared = [1, 2, 4, 5]
    expected = stats.ttest_rel([B[s] for s in shared], [A[s] for s in shared]).confidence_interval(0.95)
    assert (d.param, d.a_value, d.b_value, d.test, d.n) == ("balance", "balanced", "imbalanced", "paired", 4)
    assert d.diff == pytest.approx(sum(B[s] - A[s] for s in shared) / 4)
    assert (d.low, d.high) == pytest.approx((expected.low, expected.high))
    assert d.missing == ("3",)
    assert d.verdict == "balance=imbalanced lower"


def test_a_missing_seed_does_not_shift_the_pairing():
    """By position, B's seed 4 would be paired with A's seed 3; by seed the difference is exactly constant."""
    a = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.7, 5: 0.3}
    b = {s: v + 0.05 for s, v in a.items() if s != 3}
    (d,) = repeats.differences(_summary(a, b), ["test_balanced_accuracy"])
    assert d.diff == pytest.approx(0.05) and d.n == 4 and d.missing == ("3",)
    assert (d.low, d.high) == pytest.approx((0.05, 0.05))  # no spread: every pair differs by 0.05
    assert d.verdict == "balance=imbalanced higher"


def test_trials_apart_in_two_parameters_make_no_claim():
    s = _summary(A, B)
    s["trials"]["1"]["params"]["handling"] = "smote"
    assert repeats.differences(s, ["test_balanced_accuracy"]) == []


def test_two_processes_confirming_one_study_at_once_keep_every_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    optuna.create_study(study_name="c", storage=url)
    script = textwrap.dedent(f"""
        import sys, optuna
        sys.path.insert(0, {str(ROOT)!r})
        from search.study import repeats, storage
        study = optuna.load_study(study_name="c", storage=storage.open_storage({url!r}))
        first = int(sys.argv[1])
        for seed in range(first, first + 15):
            repeats.store_run(study, 0, seed, {{"x": 1}}, {{"test_accuracy": seed / 100}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(first)]) for first in (1, 101)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    entry = repeats.confirmed(optuna.load_study(study_name="c", storage=url).user_attrs)["trials"]["0"]
    assert entry["seeds"] == [*range(1, 16), *range(101, 116)]
    assert entry["metrics"]["test_accuracy"]["n"] == 30


def test_repeats_summarize_both_splits_time_and_memory():
    names = repeats.repeat_metrics(["val_balanced_accuracy", "peak_memory_mb"])
    assert names[:2] == ["val_balanced_accuracy", "peak_memory_mb"] and len(names) == len(set(names))
    assert {"val_accuracy", "test_accuracy", "test_reduced_recall", "train_time_s", "trial_memory_mb"} <= set(names)


def test_the_old_single_attribute_is_read_by_seed_order_and_never_shifted():
    old = {"seeds": [1, 2, 3], "trials": {"0": {"params": {"b": 1}, "metrics": {
        "val_accuracy": {"values": [0.5, 0.6, 0.7]},
        "val_f1": {"values": [0.4, 0.5]}}}}}  # a dropped NaN: cannot be paired by seed, so left out
    entry = repeats.confirmed({repeats.LEGACY_ATTR: old})["trials"]["0"]
    assert entry["metrics"]["val_accuracy"]["by_seed"] == {"1": 0.5, "2": 0.6, "3": 0.7}
    assert "val_f1" not in entry["metrics"]
