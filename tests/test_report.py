"""search.report on a real (tiny) study: files, CSV rows against the study, figures, the paper comparison.

One tiny study is run once for the module through the real CLI (synthetic
Fashion-MNIST, random weights); its config is named ``fmnist_splits`` so that
``--paper`` compares it with the paper's Table 9.
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from PIL import Image

from search import artifacts, report
from tests.conftest import ROOT, TINY_CONFIG, Tiny, cli_env

SPLITS_CONFIG = TINY_CONFIG.replace(
    'l2 = {{ type = "categorical", choices = [0.0, 1e-4] }}',
    'split_ratio = {{ type = "categorical", choices = [0.5, 0.9] }}').format(n_trials=3)
PNGS = ("pareto_pairs.png", "hypervolume.png", "param_importances.png", "accuracy_auc_vs_params.png")


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.report", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Tiny:
    t = Tiny(tmp_path_factory.mktemp("splits"))
    assert "split_ratio" in SPLITS_CONFIG
    r = t.run(*t.args(t.config(name="fmnist_splits", text=SPLITS_CONFIG)))
    assert r.returncode == 0, r.stderr
    return t


@pytest.fixture(scope="module")
def study(splits) -> optuna.Study:
    return optuna.load_study(study_name="fmnist_splits", storage=splits.storage)


@pytest.fixture(scope="module")
def reported(splits) -> tuple[Path, subprocess.CompletedProcess]:
    out = splits.tmp / "report"
    r = report_cli("--study", "fmnist_splits", "--storage", splits.storage, "--out", str(out), "--paper",
                   cwd=splits.tmp)
    assert r.returncode == 0, r.stderr
    return out, r


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_run_stored_each_trials_pictures_next_to_the_database(splits, study):
    where = splits.tmp / "study-artifacts"
    assert study.user_attrs[artifacts.ARTIFACT_DIR_ATTR] == str(where)
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        metas = artifacts.trial_artifacts(t, study._storage)
        assert sorted(m["filename"] for m in metas) == [artifacts.CONFUSION_PNG, artifacts.RECALL_PNG]
        for m in metas:
            assert (where / m["artifact_id"]).stat().st_size > 10_000


def test_report_prints_the_pareto_set_and_writes_every_file(reported, study):
    out, r = reported
    assert "Pareto-optimal trials of fmnist_splits" in r.stdout
    for t in study.best_trials:
        assert re.search(rf"│\s+{t.number} │", r.stdout), f"Pareto trial {t.number} not printed"
    expected = {"trials.csv", "pareto.csv", "summary.md", *PNGS, "paper_comparison.csv", "paper_comparison.png"}
    assert expected <= {p.name for p in out.iterdir()}
    assert "5 figures" in r.stdout


def test_trials_csv_matches_the_study(reported, study):
    out, _ = reported
    rows = _rows(out / "trials.csv")
    trials = study.get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    pareto = {t.number for t in study.best_trials}
    for row, t in zip(rows, trials):
        assert row["state"] == t.state.name
        assert (row["pareto"] == "True") == (t.number in pareto)
        for name, v in zip(study.metric_names, t.values):
            assert float(row[name]) == pytest.approx(v, rel=1e-12)
        for p, v in t.params.items():
            assert float(row[p]) == pytest.approx(v)
        for a in ("precision", "recall", "f1", "test_time_s"):
            assert float(row[a]) == pytest.approx(t.user_attrs[a])
        recalls = [float(row[f"recall_{c}"]) for c in study.user_attrs["search:data"]["class_names"]]
        assert recalls == pytest.approx(t.user_attrs["per_class_recall"])
    assert sorted(int(r["number"]) for r in _rows(out / "pareto.csv")) == sorted(pareto)


def test_figures_are_valid_pngs_of_real_size(reported):
    out, _ = reported
    for name in (*PNGS, "paper_comparison.png"):
        path = out / name
        img = Image.open(path)
        img.verify()
        assert Image.open(path).size[0] >= 600, name
        assert path.stat().st_size > 15_000, f"{name} is {path.stat().st_size} bytes: nearly blank"


def test_four_objectives_give_six_pair_panels_and_a_growing_hypervolume(splits):
    d = report.load("fmnist_splits", splits.storage)
    fig = report.fig_pareto_pairs(d)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 6
    labels = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}
    assert {"accuracy (max)", "roc_auc (max)", "train_time_s (min)", "peak_memory_mb (min)"} <= labels
    hv = [h for _, h in report.hypervolume_history(d)]
    assert len(hv) == len(d.complete)
    assert all(b >= a - 1e-12 for a, b in zip(hv, hv[1:]))  # never shrinks
    assert 0 < hv[-1] <= 1.1 ** 4
    imps, why = report.importances(d)
    assert set(imps) == set(d.metric_names), why
    assert all(set(v) == {"dropout", "split_ratio"} for v in imps.values())


def test_summary_links_every_file_it_names(reported):
    out, _ = reported
    text = (out / "summary.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert set(PNGS) | {"trials.csv", "pareto.csv", "paper_comparison.csv", "paper_comparison.png"} <= set(links)
    assert all((out / link).is_file() for link in links)
    assert "## Pareto set" in text and "## Comparison with the paper" in text


def test_paper_comparison_sets_our_means_next_to_table_9(reported, study):
    out, r = reported
    rows = _rows(out / "paper_comparison.csv")
    paper = tomllib.loads((ROOT / "search" / "paper.toml").read_text())
    fmnist = [row for row in paper["table9"]["rows"] if row["dataset"] == "Fashion-MNIST"]
    assert len(rows) == len(fmnist) * len(paper["table9"]["metrics"])
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for split, setting, paper_acc in ((0.5, "50% / 50%", 0.6358), (0.9, "90% / 10%", 0.8607)):
        (row,) = [x for x in rows if x["setting"] == setting and x["metric"] == "accuracy"]
        ours = [t.user_attrs["accuracy"] for t in complete if t.params["split_ratio"] == split]
        assert int(row["n"]) == len(ours)
        assert float(row["paper"]) == paper_acc
        if ours:
            assert float(row["ours"]) == pytest.approx(sum(ours) / len(ours))
            assert float(row["difference"]) == pytest.approx(sum(ours) / len(ours) - paper_acc)
            # Random-weight features on 250 synthetic images are far from the paper: the report says so.
            assert row["verdict"] in ("ours lower", "ours higher")
    unrun = [x for x in rows if x["setting"] == "70% / 30%"]
    assert unrun and all(x["verdict"] == "not run" and x["ours"] == "" for x in unrun)
    assert "against the paper" in r.stdout and "Table 9" in r.stdout


def test_paper_table_is_found_by_config_name_or_study_name():
    paper = report.load_paper()
    key = lambda config, name: report.paper_key(SimpleNamespace(config=config, name=name), paper)
    assert key({"name": "fmnist_splits"}, "my-own-name") == "fmnist_splits"
    assert key({}, "fmnist_reg-imagenet") == "fmnist_reg"   # --weights adds a suffix to the study name
    assert key({"name": "smoke"}, "smoke") is None
    assert set(paper["studies"]) == {"fmnist_balance", "cifar10_balance", "fmnist_splits", "cifar10_splits",
                                     "fmnist_reg"}
    assert all((ROOT / "study_configs" / f"{name}.toml").is_file() for name in paper["studies"])


def test_unknown_study_and_missing_database_fail_in_one_line(splits, tmp_path):
    r = report_cli("--study", "nope", "--storage", splits.storage, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --study: no study 'nope' in this storage; studies: fmnist_splits"
    missing = tmp_path / "missing.db"
    r = report_cli("--study", "x", "--storage", f"sqlite:///{missing}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --storage: no database at")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not missing.exists()


PAPER_TXT = ROOT.parent / "shared" / "paper.txt"


@pytest.mark.skipif(not PAPER_TXT.is_file(), reason=f"{PAPER_TXT} not present (it sits beside the repo)")
def test_paper_numbers_are_typed_in_as_printed():
    """Every number in paper.toml's Tables 7, 9, 10 is the one in the paper's text, in its place."""
    text = PAPER_TXT.read_text()
    paper = report.load_paper()

    def block(title: str) -> list[list[str]]:
        start = text.index(title)
        lines = text[start:].split("\n\n")[1].splitlines()  # the tab-separated table after the title
        return [ln.split("\t") for ln in lines[1:]]

    t7 = block("Table 7: Performance")
    metric7 = {"F1 Score": "f1", "Precision": "precision", "Recall": "recall", "Accuracy": "accuracy",
               "ROC": "roc_auc"}
    dataset = None
    for cells in t7:
        dataset = cells[0] or dataset
        m = metric7[cells[1]]
        for setting, value in zip(("balanced", "imbalanced"), cells[2:4]):
            (row,) = [r for r in paper["table7"]["rows"] if r["dataset"] == dataset and r["setting"] == setting]
            assert row["values"][m] == float(value), (dataset, setting, m)

    t9 = block("Table 9: Results")
    for cells in t9:
        dataset = cells[0] or dataset
        (row,) = [r for r in paper["table9"]["rows"] if r["dataset"] == dataset and r["setting"] == cells[1]]
        assert [row["values"][m] for m in paper["table9"]["metrics"]] == [float(c) for c in cells[2:6]]
        train = float(cells[1].split("%")[0]) / 100
        assert math.isclose(row["match"]["split_ratio"], train)

    t10 = block("Table 10: Results")
    for cells in t10:
        (row,) = [r for r in paper["table10"]["rows"] if r["setting"] == cells[0]]
        assert [row["values"][m] for m in paper["table10"]["metrics"]] == [float(c) for c in cells[1:6]]


# ---------------------------------------------------------------- repeats from search.confirm

SEEDS = [1, 2, 3, 4, 5]
CONFIRMED = {  # trial -> (params, balanced_accuracy per seed)
    0: ({"balance": "balanced", "handling": "none"}, [0.80, 0.82, 0.81, 0.83, 0.79]),
    1: ({"balance": "imbalanced", "handling": "none"}, [0.70, 0.71, 0.69, 0.72, 0.70]),
    2: ({"balance": "imbalanced", "handling": "class_weight"}, [0.71, 0.70, 0.70, 0.72, 0.69]),
}


@pytest.fixture
def confirmed_study(tmp_path) -> str:
    """A study as search.run + search.confirm leave it, written directly: 3 trials, 5 seeds each."""
    from optuna.distributions import CategoricalDistribution

    from search.confirm import CONFIRM_ATTR, summarize

    storage = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(study_name="imb", storage=storage, directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["balanced_accuracy", "train_time_s"])
    dists = {"balance": CategoricalDistribution(["balanced", "imbalanced"]),
             "handling": CategoricalDistribution(["none", "class_weight"])}
    out = {"seeds": SEEDS, "evaluation": "validation", "trials": {}}
    for number, (params, values) in CONFIRMED.items():
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[values[0], 1.0 + number],
                                                  user_attrs={"balanced_accuracy": values[0]}))
        out["trials"][str(number)] = {"params": params, "metrics": {"balanced_accuracy": summarize(values)}}
    study.set_user_attr(CONFIRM_ATTR, out)
    return storage


def test_summarize_gives_the_t_interval_of_the_mean():
    from search.confirm import summarize

    s = summarize([1.0, 2.0, 3.0, float("nan")])
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert s["ci95"] == pytest.approx([2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5])
    assert summarize([0.5])["ci95"] is None


def test_differences_pair_trials_one_parameter_apart_with_their_interval():
    from scipy import stats

    from search.confirm import differences, summarize

    out = {"seeds": SEEDS, "trials": {str(n): {"params": p, "metrics": {"balanced_accuracy": summarize(v)}}
                                      for n, (p, v) in CONFIRMED.items()}}
    diffs = {(d.a, d.b): d for d in differences(out, ["balanced_accuracy"])}
    assert set(diffs) == {("0", "1"), ("1", "2")}  # 0 and 2 differ in two parameters: no claim
    bal = diffs[("0", "1")]
    ci = stats.ttest_rel(CONFIRMED[1][1], CONFIRMED[0][1]).confidence_interval()
    assert (bal.param, bal.test, bal.n) == ("balance", "paired", 5)
    assert (bal.low, bal.high) == pytest.approx((ci.low, ci.high))
    assert bal.diff == pytest.approx(-0.106) and bal.verdict == "balance=imbalanced lower"
    assert diffs[("1", "2")].verdict == "no difference shown"


def test_report_shows_confirmed_trials_with_intervals_and_claims(confirmed_study, tmp_path):
    out = tmp_path / "rep"
    r = report_cli("--study", "imb", "--storage", confirmed_study, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = (out / "summary.md").read_text()
    assert "## Repeats" in summary and "![repeats](repeats.png)" in summary
    assert "0.81 ± 0.016 [0.7904, 0.8296]" in summary  # trial 0: mean, std, t-interval
    claim = next(ln for ln in summary.splitlines() if ln.startswith("| balanced_accuracy | balance |"))
    assert "balance=imbalanced lower" in claim and "paired, n=5" in claim
    assert "no difference shown" in next(ln for ln in summary.splitlines()
                                         if ln.startswith("| balanced_accuracy | handling |"))
    rows = _rows(out / "repeats.csv")
    assert [(r["trial"], r["metric"], r["n"]) for r in rows] == [(str(n), "balanced_accuracy", "5") for n in CONFIRMED]
    assert float(rows[0]["search_run"]) == CONFIRMED[0][1][0]
    with Image.open(out / "repeats.png") as im:
        assert im.format == "PNG" and im.size[0] > 400 and (out / "repeats.png").stat().st_size > 10_000
