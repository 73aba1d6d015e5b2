"""search.report.paper and paper.toml: the paper's numbers as printed, our matching trials next to them.

The paper-numbers test reads ``../shared/paper.txt``; under ``CI=true`` (CI provides the file) it fails
instead of skipping when the file is missing.
"""

from __future__ import annotations

import csv
import math
import re
from types import SimpleNamespace

import pytest
from optuna.distributions import CategoricalDistribution

from search.report import cli, load, paper
from search.report.write import write_report
from tests.conftest import ROOT, requires
from tests.test_report_fixtures import IMAGENET, RANDOM, add, attrs, new_study, sqlite

def paper_text() -> str:
    """../shared/paper.txt: a developer without it skips; under CI=true (CI provides it) its absence fails."""
    return requires("paper").read_text()


def test_without_paper_txt_ci_fails_and_a_developer_skips(tmp_path, monkeypatch):
    from tests import conftest

    monkeypatch.setitem(conftest.COMPONENTS, "paper", lambda: (None, "paper.txt not present"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, but paper is missing"):
        paper_text()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        paper_text()


def _rows(path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- paper.toml against the paper

def test_paper_numbers_are_typed_in_as_printed():
    """Every number in paper.toml's Tables 7, 9, 10 is the one in the paper's text, in its place."""
    text = paper_text()
    table = paper.load_paper()

    def block(title: str) -> list[list[str]]:
        start = text.index(title)
        lines = text[start:].split("\n\n")[1].splitlines()  # the tab-separated table after the title
        return [ln.split("\t") for ln in lines[1:]]

    metric7 = {"F1 Score": "f1", "Precision": "precision", "Recall": "recall", "Accuracy": "accuracy",
               "ROC": "roc_auc_hard"}  # Table 7's "ROC" is a hard-label AUC (see [metrics])
    dataset = None
    for cells in block("Table 7: Performance"):
        dataset = cells[0] or dataset
        m = metric7[cells[1]]
        for setting, value in zip(("balanced", "imbalanced"), cells[2:4]):
            (row,) = [r for r in table["table7"]["rows"] if r["dataset"] == dataset and r["setting"] == setting]
            assert row["values"][m] == float(value), (dataset, setting, m)

    for cells in block("Table 9: Results"):
        dataset = cells[0] or dataset
        (row,) = [r for r in table["table9"]["rows"] if r["dataset"] == dataset and r["setting"] == cells[1]]
        assert [row["values"][m] for m in table["table9"]["metrics"]] == [float(c) for c in cells[2:6]]
        assert math.isclose(row["match"]["split_ratio"], float(cells[1].split("%")[0]) / 100)

    for cells in block("Table 10: Results"):
        (row,) = [r for r in table["table10"]["rows"] if r["setting"] == cells[0]]
        assert [row["values"][m] for m in table["table10"]["metrics"]] == [float(c) for c in cells[1:6]]


def test_every_note_quotes_the_paper_verbatim_and_names_the_numbers_it_is_about():
    text = " ".join(paper_text().split())
    table = paper.load_paper()
    notes = []
    for name in ("table7", "table8", "table9", "table10"):
        for row in table[name]["rows"]:
            notes += [(row, None, row["note"])] if "note" in row else []
            notes += [(row, m, n) for m, n in row.get("notes", {}).items()]
    assert notes, "paper.toml carries no notes"
    for row, metric, note in notes:
        quotes = re.findall(r'"([^"]+)"', note)
        assert quotes, note
        for q in quotes:
            assert " ".join(q.split()) in text, f"not in the paper: {q!r}"
        if metric is not None:
            assert f"{row['values'][metric]:.2f}" in note, (row["setting"], metric)
    by = {(r["dataset"], r["setting"]): r for r in table["table7"]["rows"]}
    assert "0.39" in by[("CIFAR-10", "imbalanced")]["notes"]["f1"]  # Table 7's 0.72 vs the conclusion's 0.39
    for row in table["table7"]["rows"]:  # accuracy and recall differ in every row although they cannot
        assert "accuracy" in row["notes"] and "recall" in row["notes"]
    imbalanced = [r for t in ("table7", "table8") for r in table[t]["rows"] if r["setting"] == "imbalanced"]
    assert all("0.1" in r["note"] and "0.5" in r["note"] and "5000" in r["note"] for r in imbalanced)


def test_paper_toml_describes_every_measure_and_every_row_can_be_matched():
    table = paper.load_paper()
    for key, spec in table["studies"].items():
        field = spec.get("match", "match")
        for name in spec["tables"]:
            t = table[name]
            rows = [r for r in t["rows"] if r["dataset"] == spec["dataset"]]
            assert rows, (key, name)
            for r in rows:
                assert isinstance(r[field], dict), (key, r["setting"])
                assert set(r["values"]) == set(t["metrics"])
    for m, meta in table["metrics"].items():
        assert meta["kind"] in ("quality", "resource")
        # quality on the held-out test split, as the paper measured it; resources under their own names
        assert meta["attr"] == (f"test_{m}" if meta["kind"] == "quality" else m)
    assert "hard-label" in table["metrics"]["roc_auc_hard"]["label"]
    assert "probability" in table["metrics"]["roc_auc"]["label"]
    assert "roc_auc_hard" in table["table7"]["metrics"] and "roc_auc" in table["table10"]["metrics"]


def test_paper_studies_have_their_configs():
    table = paper.load_paper()
    missing = {n for n in table["studies"] if not (ROOT / "study_configs" / f"{n}.toml").is_file()}
    assert missing == set()


def test_paper_table_is_found_by_config_name_or_study_name():
    table = paper.load_paper()
    key = lambda config, name: paper.paper_key(SimpleNamespace(config=config, name=name), table)  # noqa: E731
    assert key({"name": "fmnist_splits"}, "my-own-name") == "fmnist_splits"
    assert key({}, "fmnist_reg-random") == "fmnist_reg"   # --weights adds a suffix to the study name
    assert key({}, "fmnist_reg_paper-random") == "fmnist_reg_paper"
    assert key({"name": "smoke"}, "smoke") is None


# ---------------------------------------------------------------- the comparison

BALANCE = {"balance": CategoricalDistribution(["balanced", "imbalanced"])}


def balance_study(storage, config_name="fmnist_balance", weights=IMAGENET, same_test_time=True):
    study = new_study(storage, config_name, [("test_accuracy", "maximize"), ("test_roc_auc", "maximize"),
                                             ("train_time_s", "minimize"), ("peak_memory_mb", "minimize")],
                      weights=weights, config_name=config_name)
    for arm, acc, auc, hard, time_s, mem in (("balanced", 0.80, 0.96, 0.88, 100.0, 1500.0),
                                             ("imbalanced", 0.75, 0.95, 0.86, 90.0, 1400.0)):
        a = attrs(acc, auc, time_s, mem, roc_auc_hard=hard, settings={"balance": arm})
        a["test_time_s"] = 2.0 if same_test_time else 2.0 + (arm == "imbalanced")
        add(study, [acc, auc, time_s, mem], a, {"balance": arm}, BALANCE)
    return study


def test_table_7_roc_is_compared_with_the_hard_label_auc_and_says_so():
    d = load.from_study(balance_study(None))
    rows, _ = paper.compare(d, paper.load_paper(), "fmnist_balance")
    (roc,) = [r for r in rows if r.table == "Table 7" and r.setting == "balanced" and r.metric == "roc_auc_hard"]
    assert (roc.paper, roc.ours, roc.n) == (0.84, 0.88, 1)  # the hard AUC 0.88, not the probability AUC 0.96
    assert roc.measured_as.startswith("test_roc_auc_hard: hard-label AUC")
    assert roc.verdict == "ours higher"
    (f1,) = [r for r in rows if r.table == "Table 7" and r.setting == "balanced" and r.metric == "f1"]
    assert f1.ours == pytest.approx(0.78) and f1.diff == pytest.approx(0.78 - 0.59)
    (mem,) = [r for r in rows if r.table == "Table 8" and r.setting == "imbalanced" and r.metric == "peak_memory_mb"]
    assert mem.verdict == f"ours x{1400 / 9627.61:.2g}"


def test_table_10_auc_is_compared_with_the_probability_auc():
    d = load.from_study(reg_paper_study(None))
    rows, _ = paper.compare(d, paper.load_paper(), "fmnist_reg_paper")
    (auc,) = [r for r in rows if r.setting == "L2 Regularization" and r.metric == "roc_auc"]
    assert auc.attr == "test_roc_auc" and "probability AUC" in auc.measured_as
    assert auc.ours == pytest.approx(0.93)


@pytest.mark.parametrize("paper_change, ours, verdict", [
    (0.0, 0.3, "no change in the paper"), (0.2, 0.0, "no change here"), (0.2, 0.1, "same direction"),
    (-0.2, -0.1, "same direction"), (0.2, -0.1, "OPPOSITE direction")])
def test_trend_verdicts(paper_change, ours, verdict):
    assert paper.trend_verdict(paper_change, ours) == verdict


def test_a_paper_change_of_zero_is_no_change_not_opposite():
    d = load.from_study(balance_study(None, config_name="cifar10_balance", same_test_time=False))
    _, trends = paper.compare(d, paper.load_paper(), "cifar10_balance")
    (line,) = [t for t in trends if t.startswith("Table 8, test_time_s")]
    assert line == "Table 8, test_time_s, balanced -> imbalanced: paper +0, ours +1 (no change in the paper)"
    (acc,) = [t for t in trends if t.startswith("Table 7, accuracy")]
    assert acc.endswith("(OPPOSITE direction)")  # the paper: +0.06, here -0.05


ARMS = {"l1": (0.01, 0.0, 0.0, 0.40, 0.88), "l2": (0.0, 0.01, 0.0, 0.62, 0.93), "d3": (0.0, 0.0, 0.3, 0.66, 0.94),
        "d5": (0.0, 0.0, 0.5, 0.61, 0.93), "d7": (0.0, 0.0, 0.7, 0.56, 0.92)}


def reg_paper_study(storage, name="fmnist_reg_paper-random", weights=RANDOM):
    """The fmnist_reg_paper grid: five arms, each one Table 10 row at rate 0.01, as resolved settings."""
    study = new_study(storage, name, [("test_accuracy", "maximize"), ("test_roc_auc", "maximize")], weights=weights,
                      config_name="fmnist_reg_paper")
    dist = {"arm": CategoricalDistribution(list(ARMS))}
    for arm, (l1, l2, dropout, acc, auc) in ARMS.items():
        add(study, [acc, auc], attrs(acc, auc, 100.0, 1000.0, settings={"l1": l1, "l2": l2, "dropout": dropout}),
            {"arm": arm}, dist)
    return study


def test_the_table_10_grid_matches_each_row_with_exactly_its_own_trial():
    d = load.from_study(reg_paper_study(None))
    rows, trends = paper.compare(d, paper.load_paper(), paper.paper_key(d, paper.load_paper()))
    accuracy = {r.setting: r for r in rows if r.metric == "accuracy"}
    assert {s: (r.n, r.ours) for s, r in accuracy.items()} == {
        "L1 Regularization": (1, 0.40), "L2 Regularization": (1, 0.62), "Dropout (0.3)": (1, 0.66),
        "Dropout (0.5)": (1, 0.61), "Dropout (0.7)": (1, 0.56)}
    assert "Table 10, best accuracy: paper Dropout (0.3), ours Dropout (0.3) (same;" in trends[0]


def test_the_search_matches_rows_by_technique_and_the_grid_does_not():
    trial = attrs(0.5, 0.9, 100.0, 1000.0, settings={"l1": 1e-4, "l2": 0.0, "dropout": 0.4})
    for key in ("fmnist_reg", "fmnist_reg_paper"):
        study = new_study(None, key, [("test_accuracy", "maximize")])
        add(study, [0.5], trial)
        d = load.from_study(study)
        rows, _ = paper.compare(d, paper.load_paper(), key)
        (l1,) = [r for r in rows if r.setting == "L1 Regularization" and r.metric == "accuracy"]
        assert l1.n == (1 if key == "fmnist_reg" else 0), key  # L1 at 1e-4 with dropout: the technique, not the row


def test_a_best_row_that_was_not_run_is_not_run_not_different():
    study = new_study(None, "fmnist_reg", [("test_accuracy", "maximize")])
    for l2, dropout, acc in ((1e-4, 0.0, 0.6), (0.0, 0.5, 0.7)):  # no trial near dropout 0.3, the paper's best
        add(study, [acc], attrs(acc, 0.9, 100.0, 1000.0, settings={"l1": 0.0, "l2": l2, "dropout": dropout}))
    d = load.from_study(study)
    _, trends = paper.compare(d, paper.load_paper(), "fmnist_reg")
    (best,) = [t for t in trends if t.startswith("Table 10, best accuracy")]
    assert "paper Dropout (0.3), ours Dropout (0.5) (the paper's best not run here;" in best
    assert "DIFFERENT" not in " ".join(trends)


def test_splits_comparison_sets_our_means_next_to_table_9_and_marks_unrun_rows(tmp_path):
    study = new_study(None, "fmnist_splits", [("test_accuracy", "maximize")])
    dist = {"split_ratio": CategoricalDistribution([0.5, 0.9])}
    for ratio, acc in ((0.5, 0.60), (0.5, 0.64), (0.9, 0.80)):
        add(study, [acc], attrs(acc, 0.9, 50.0, 1000.0, settings={"split_ratio": ratio}), {"split_ratio": ratio}, dist)
    d = load.from_study(study)
    report = write_report(d, tmp_path / "rep", with_paper=True)
    rows = _rows(report.files["paper_csv"])
    assert len(rows) == 5 * 4  # five Fashion-MNIST rows of Table 9, four measures each
    (half,) = [r for r in rows if r["setting"] == "50% / 50%" and r["metric"] == "accuracy"]
    assert (float(half["paper"]), float(half["ours"]), int(half["n"])) == (0.6358, pytest.approx(0.62), 2)
    assert float(half["difference"]) == pytest.approx(0.62 - 0.6358) and half["verdict"] == "agrees"
    assert half["ours measured as"] == "test_accuracy: accuracy"
    unrun = [r for r in rows if r["setting"] == "70% / 30%"]
    assert unrun and all(r["verdict"] == "not run" and r["ours"] == "" for r in unrun)


def test_notes_stand_beside_their_numbers_in_the_csv_and_the_summary(tmp_path):
    d = load.from_study(balance_study(None, config_name="cifar10_balance"))
    report = write_report(d, tmp_path / "rep", with_paper=True)
    (f1,) = [r for r in _rows(report.files["paper_csv"])
             if r["table"] == "Table 7" and r["setting"] == "imbalanced" and r["metric"] == "f1"]
    assert "0.39" in f1["note"] and "Number to remove" in f1["note"]
    summary = report.files["summary"].read_text()
    line = next(ln for ln in summary.splitlines() if ln.startswith("| Table 7 | imbalanced | f1 |"))
    assert "0.39" in line and "hard-label" not in line
    roc = next(ln for ln in summary.splitlines() if ln.startswith("| Table 7 | balanced | roc_auc_hard |"))
    assert "test_roc_auc_hard: hard-label AUC" in roc


def test_random_weights_print_a_warning_at_the_top_of_the_output_and_of_the_summary(tmp_path, capsys):
    reg_paper_study(sqlite(tmp_path / "r.db"))
    out = tmp_path / "rep"
    assert cli.main(["--study", "fmnist_reg_paper-random", "--storage", sqlite(tmp_path / "r.db"), "--out", str(out),
                     "--paper"]) == 0
    stdout = capsys.readouterr().out
    warning = f"warning: backbone weights {RANDOM} are not ImageNet's"
    assert stdout.splitlines()[0].startswith(warning)
    assert f"\n{warning}" in stdout.split("against the paper")[0]  # again right above the comparison
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[2].startswith(f"> **{warning}")


def test_imagenet_studies_print_no_warning(tmp_path, capsys):
    balance_study(sqlite(tmp_path / "b.db"))
    out = tmp_path / "rep"
    assert cli.main(["--study", "fmnist_balance", "--storage", sqlite(tmp_path / "b.db"), "--out", str(out),
                     "--paper"]) == 0
    assert "warning" not in capsys.readouterr().out and "warning" not in (out / "summary.md").read_text()
