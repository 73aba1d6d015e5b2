"""search.report.repeats: the confirmed trials of ``search.confirm`` with their intervals and claims.

The numbers themselves (search.study.repeats.summarize / differences) are tested in tests/test_repeats.py;
here: what the report reads (runs stored one per (trial, seed), and the older single attribute) and shows.
"""

from __future__ import annotations

import csv

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from PIL import Image

from search.report import cli, load, repeats
from tests.test_report_fixtures import add, attrs, new_study, sqlite

SEEDS = [1, 2, 3, 4, 5]
CONFIRMED = {  # trial -> (params, validation balanced accuracy per seed)
    0: ({"balance": "balanced", "handling": "none"}, [0.80, 0.82, 0.81, 0.83, 0.79]),
    1: ({"balance": "imbalanced", "handling": "none"}, [0.70, 0.71, 0.69, 0.72, 0.70]),
    2: ({"balance": "imbalanced", "handling": "class_weight"}, [0.71, 0.70, 0.70, 0.72, 0.69]),
}
DISTS = {"balance": CategoricalDistribution(["balanced", "imbalanced"]),
         "handling": CategoricalDistribution(["none", "class_weight"])}


def confirmed_study(storage: str | None, legacy_names: bool) -> optuna.Study:
    """A study as search.run + search.confirm leave it: 3 trials, 5 seeds each.

    ``legacy_names``: the single ``search:confirm`` attribute written before runs were stored one by one
    (unprefixed objective name, ``evaluation`` saying the split); otherwise one attribute per (trial, seed).
    """
    from search.study.repeats import LEGACY_ATTR, store_run

    study = new_study(storage, "imb", [("val_balanced_accuracy", "maximize"), ("train_time_s", "minimize")],
                      split="validation")
    old = {"seeds": SEEDS, "evaluation": "validation", "trials": {}}
    for number, (params, values) in CONFIRMED.items():
        a = attrs(values[0], 0.9, 1.0 + number, 1000.0, split="validation", settings=params)
        a["val_balanced_accuracy"] = values[0]
        add(study, [values[0], 1.0 + number], a, params, DISTS)
        test = [v - 0.02 for v in values]
        if legacy_names:
            old["trials"][str(number)] = {"params": params, "metrics": {
                "balanced_accuracy": {"values": values}, "test_balanced_accuracy": {"values": test}}}
        else:
            for seed, v, t in zip(SEEDS, values, test):
                store_run(study, number, seed, params, {"val_balanced_accuracy": v, "test_balanced_accuracy": t})
    if legacy_names:
        study.set_user_attr(LEGACY_ATTR, old)
    return study


@pytest.mark.parametrize("legacy_names", [False, True])
def test_confirmed_metrics_are_read_split_prefixed_whatever_confirm_stored(legacy_names):
    d = load.from_study(confirmed_study(None, legacy_names))
    conf = repeats.confirmed(d)
    assert repeats.repeat_metrics(d, conf) == ["val_balanced_accuracy", "test_balanced_accuracy"]
    rows = repeats.repeat_rows(d, conf, ["val_balanced_accuracy"])
    assert [(r["trial"], r["n"], r["search_run"]) for r in rows] == [(n, 5, v[0]) for n, (_, v) in CONFIRMED.items()]
    assert rows[0]["mean"] == pytest.approx(0.81) and rows[0]["param_balance"] == "balanced"


def test_a_study_without_confirmed_trials_has_no_repeats_section():
    study = new_study(None, "n", [("test_accuracy", "maximize")])
    add(study, [0.5], attrs(0.5, 0.9, 1.0, 100.0))
    assert repeats.confirmed(load.from_study(study)) is None


def test_report_shows_confirmed_trials_with_intervals_and_claims(tmp_path, capsys):
    confirmed_study(sqlite(tmp_path / "c.db"), legacy_names=True)
    out = tmp_path / "rep"
    assert cli.main(["--study", "imb", "--storage", sqlite(tmp_path / "c.db"), "--out", str(out)]) == 0
    assert "## Repeats" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert "## Repeats" in summary and "![repeats](repeats.png)" in summary
    assert "0.81 ± 0.016 [0.7904, 0.8296]" in summary  # trial 0: mean, std, t-interval
    claim = next(ln for ln in summary.splitlines() if ln.startswith("| val_balanced_accuracy | balance |"))
    assert "balance=imbalanced lower" in claim and "paired, n=5" in claim
    assert "no difference shown" in next(ln for ln in summary.splitlines()
                                         if ln.startswith("| val_balanced_accuracy | handling |"))
    assert "validation split" in summary.split("## Repeats")[1].split("\n\n")[1]
    with (out / "repeats.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["metric"], r["n"]) for r in rows] == [
        (str(n), m, "5") for n in CONFIRMED for m in ("val_balanced_accuracy", "test_balanced_accuracy")]
    assert float(rows[0]["search_run"]) == CONFIRMED[0][1][0]
    with Image.open(out / "repeats.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
