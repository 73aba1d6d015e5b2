"""search.report.tables: trials.csv and pareto.csv hold every trial as stored, every metric with its split."""

from __future__ import annotations

import csv

import pytest

from search.report import load, tables
from tests.test_report_fixtures import CLASS_NAMES, add, new_study, search_study


def _written(tmp_path, d, trials) -> list[dict[str, str]]:
    path = tables.write_csv(tmp_path / "out.csv", *tables.trial_rows(d, trials))
    with path.open() as f:
        return list(csv.DictReader(f))


def test_trials_csv_holds_every_trial_as_the_study_stored_it(tmp_path):
    study = search_study(None)
    d = load.from_study(study)
    rows = _written(tmp_path, d, d.trials)
    trials = study.get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    pareto = {t.number for t in study.best_trials}
    for row, t in zip(rows, trials):
        assert row["state"] == t.state.name
        assert (row["pareto"] == "True") == (t.number in pareto)
        if t.state.name == "FAIL":
            assert row["fail_reason"] == "NaN loss" and row["test_accuracy"] == ""
            continue
        for name, v in zip(study.metric_names, t.values):
            assert float(row[name]) == v
        for p, v in t.params.items():
            assert float(row[p]) == v
        for a in ("test_precision", "test_f1", "test_roc_auc_hard", "test_time_s", "trial_memory_mb",
                  "keras_backend", "objective_split"):
            assert row[a] == str(t.user_attrs[a])
        assert [float(row[f"test_recall_{c}"]) for c in CLASS_NAMES] == t.user_attrs["test_per_class_recall"]


def test_every_quality_column_says_its_split_and_validation_comes_before_test(tmp_path):
    d = load.from_study(search_study(None, split="validation"))
    cols, _ = tables.trial_rows(d, d.trials)
    unprefixed = {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "roc_auc_hard"}
    assert not unprefixed & set(cols)
    assert cols.index("val_accuracy") < cols.index("val_f1") < cols.index("test_accuracy")
    rows = _written(tmp_path, d, d.complete)
    stored = d.complete[0].user_attrs
    assert float(rows[0]["test_accuracy"]) == stored["test_accuracy"] != stored["val_accuracy"]
    assert float(rows[0]["val_recall_Trouser"]) == stored["val_per_class_recall"][1]


def test_pareto_csv_holds_exactly_the_pareto_set(tmp_path):
    study = search_study(None)
    d = load.from_study(study)
    rows = _written(tmp_path, d, d.pareto)
    assert sorted(int(r["number"]) for r in rows) == sorted(t.number for t in study.best_trials)


def test_an_old_study_gets_prefixed_columns_holding_its_unprefixed_values(tmp_path):
    study = new_study(None, "old", [("accuracy", "maximize"), ("train_time_s", "minimize")],
                      split_attr=False)
    add(study, [0.7, 10.0], {"accuracy": 0.7, "f1": 0.6, "per_class_recall": [0.5] * 10, "train_time_s": 10.0})
    d = load.from_study(study)
    (row,) = _written(tmp_path, d, d.trials)
    assert float(row["test_accuracy"]) == 0.7 and float(row["test_f1"]) == 0.6
    assert float(row["test_recall_Bag"]) == 0.5
    assert "accuracy" not in row and "f1" not in row


def test_a_parameter_named_like_an_objective_gets_its_own_column(tmp_path):
    from optuna.distributions import FloatDistribution

    study = new_study(None, "p", [("train_time_s", "minimize")])
    add(study, [3.0], {"train_time_s": 3.0}, {"train_time_s": 0.5}, {"train_time_s": FloatDistribution(0, 1)})
    d = load.from_study(study)
    (row,) = _written(tmp_path, d, d.trials)
    assert float(row["train_time_s"]) == 3.0 and float(row["param_train_time_s"]) == 0.5


@pytest.mark.parametrize("value, cell", [(float("nan"), ""), (None, ""), (0.0, "0.0")])
def test_missing_and_nan_values_are_empty_cells_and_zero_is_kept(tmp_path, value, cell):
    study = new_study(None, "n", [("test_accuracy", "maximize")])
    add(study, [0.5], {"test_accuracy": 0.5, "test_reduced_recall": value})
    d = load.from_study(study)
    (row,) = _written(tmp_path, d, d.trials)
    assert row.get("test_reduced_recall", "") == cell
