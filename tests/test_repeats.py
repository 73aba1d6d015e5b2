"""search.repeats: repeats stored one per (trial, seed), summarized with t-intervals, compared paired by seed."""

from __future__ import annotations

import math

import optuna
import pytest
from scipy import stats

from search import repeats

SEEDS = [1, 2, 3, 4, 5]
ARMS = {  # trial -> (params, metric per seed)
    0: ({"balance": "balanced", "handling": "none"}, [0.80, 0.82, 0.81, 0.83, 0.79]),
    1: ({"balance": "imbalanced", "handling": "none"}, [0.70, 0.71, 0.69, 0.72, 0.70]),
    2: ({"balance": "imbalanced", "handling": "class_weight"}, [0.71, 0.70, 0.70, 0.72, 0.69]),
}


def _study(values: dict[int, tuple[dict, list[float]]], seeds=SEEDS) -> optuna.Study:
    study = optuna.create_study()
    for number, (params, vals) in values.items():
        for seed, v in zip(seeds, vals):
            repeats.store_run(study, number, seed, params, {"val_balanced_accuracy": v})
    return study


def test_summarize_gives_the_t_interval_of_the_mean():
    s = repeats.summarize({1: 1.0, 2: 2.0, 3: 3.0, 4: float("nan")})
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert s["ci95"] == pytest.approx([2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5])
    assert s["by_seed"] == {"1": 1.0, "2": 2.0, "3": 3.0}  # the NaN seed is named by its absence
    assert repeats.summarize({7: 0.5})["ci95"] is None


def test_differences_pair_trials_one_parameter_apart_with_their_interval():
    summary = repeats.confirmed(_study(ARMS).user_attrs)
    diffs = {(d.a, d.b): d for d in repeats.differences(summary, ["val_balanced_accuracy"])}
    assert set(diffs) == {("0", "1"), ("1", "2")}  # 0 and 2 differ in two parameters: no claim
    bal = diffs[("0", "1")]
    ci = stats.ttest_rel(ARMS[1][1], ARMS[0][1]).confidence_interval()
    assert (bal.param, bal.test, bal.n) == ("balance", "paired", 5)
    assert (bal.low, bal.high) == pytest.approx((ci.low, ci.high))
    assert bal.diff == pytest.approx(-0.106) and bal.verdict == "balance=imbalanced lower"
    assert diffs[("1", "2")].verdict == "no difference shown"


def test_a_missing_seed_in_one_arm_does_not_shift_the_pairing():
    # Seed 3 of the imbalanced arm failed (NaN): pairing by position would compare seed 4 with seed 3.
    arms = {0: ARMS[0], 1: (ARMS[1][0], [0.70, 0.71, float("nan"), 0.72, 0.70])}
    summary = repeats.confirmed(_study(arms).user_attrs)
    (d,) = repeats.differences(summary, ["val_balanced_accuracy"])
    shared = [0, 1, 3, 4]
    expected = stats.ttest_rel([ARMS[1][1][i] for i in shared], [ARMS[0][1][i] for i in shared])
    assert (d.test, d.n, d.missing) == ("paired", 4, ("3",))
    assert (d.low, d.high) == pytest.approx(tuple(expected.confidence_interval()))


def test_a_failed_run_is_stored_with_its_reason_and_named():
    study = _study({0: ARMS[0]}, seeds=SEEDS[:4])
    repeats.store_run(study, 0, 5, ARMS[0][0], None, error="trial process killed by SIGKILL")
    entry = repeats.confirmed(study.user_attrs)["trials"]["0"]
    assert entry["seeds"] == SEEDS and entry["failed"] == {"5": "trial process killed by SIGKILL"}
    assert entry["metrics"]["val_balanced_accuracy"]["n"] == 4


def test_runs_stored_by_two_confirmations_merge():
    # Two processes confirming different seeds write different attributes: both sets are kept.
    study = _study({0: ARMS[0]}, seeds=SEEDS[:2])
    for seed, v in zip(SEEDS[2:], ARMS[0][1][2:]):
        repeats.store_run(study, 0, seed, ARMS[0][0], {"val_balanced_accuracy": v})
    s = repeats.confirmed(study.user_attrs)["trials"]["0"]["metrics"]["val_balanced_accuracy"]
    assert s["n"] == 5 and math.isclose(s["mean"], sum(ARMS[0][1]) / 5)


def test_the_old_single_attribute_is_read_by_seed_order_and_never_shifted():
    old = {"seeds": [1, 2, 3], "trials": {"0": {"params": {"b": 1}, "metrics": {
        "val_accuracy": {"values": [0.5, 0.6, 0.7]},
        "val_f1": {"values": [0.4, 0.5]}}}}}  # a dropped NaN: cannot be paired by seed, so left out
    entry = repeats.confirmed({repeats.LEGACY_ATTR: old})["trials"]["0"]
    assert entry["metrics"]["val_accuracy"]["by_seed"] == {"1": 0.5, "2": 0.6, "3": 0.7}
    assert "val_f1" not in entry["metrics"]
