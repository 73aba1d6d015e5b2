"""search.report.markdown: summary.md states split, backend and weights, links what exists, says what is not drawn."""

from __future__ import annotations

import re

import pytest

from search.report import load
from search.report.write import write_report
from tests.test_report_fixtures import IMAGENET, add, attrs, new_study, search_study


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("md")
    study = search_study(None, split="validation")
    d = load.from_study(study)
    report = write_report(d, tmp / "rep")
    return study, report, (tmp / "rep" / "summary.md").read_text()


def test_summary_states_the_split_the_backend_and_the_weights(written):
    _, _, text = written
    head = text.split("## Pareto set")[0]
    assert f"- backbone weights: {IMAGENET}" in head
    assert "- Keras backend jax" in head
    assert "- objectives measured on: the validation split (0.2 of the training part" in head
    assert "held-out test metrics are stored as test_*" in head
    assert "warning" not in text  # ImageNet weights
    assert "snapshot" not in text  # no trial has snapshot_of


def test_summary_links_every_file_it_names_and_every_file_is_linked(written):
    _, report, text = written
    links = set(re.findall(r"\]\(([^)]+)\)", text))
    on_disk = {p.name for p in report.out.iterdir()} - {"summary.md"}
    assert links == on_disk
    assert {"pareto_pairs.png", "hypervolume.png", "param_importances.png", "accuracy_auc_vs_params.png",
            "learning_curves.png", "regularization.png", "trials.csv", "pareto.csv"} == on_disk
    assert report.n_figures == 6


def test_summary_pareto_table_lists_the_pareto_set_with_both_splits(written):
    study, _, text = written
    section = text.split("## Pareto set")[1].split("##")[0]
    header = next(ln for ln in section.splitlines() if ln.startswith("| trial"))
    assert "| val_accuracy |" in header and "| test_accuracy |" in header and "| val_f1 |" in header
    numbers = [int(ln.split("|")[1]) for ln in section.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert numbers == sorted(t.number for t in study.best_trials)


def test_best_trial_per_objective_ignores_trials_outside_their_constraints(written):
    _, _, text = written
    best = text.split("## Best trial per objective")[1].split("##")[0]
    assert "| val_accuracy | maximize | 0.86 | 0 |" in best  # not the infeasible trial 8 (0.95)


def test_hypervolume_caption_gives_the_reference_point_in_raw_units(written):
    _, _, text = written
    caption = text.split("### hypervolume")[1].split("![")[0]
    assert "(val_accuracy = 0, val_roc_auc = 0, train_time_s = 32.5, peak_memory_mb = 1535) (raw units)" in caption


def test_a_figure_that_cannot_be_drawn_says_why(tmp_path):
    study = new_study(None, "one", [("test_accuracy", "maximize")])
    add(study, [0.5], attrs(0.5, 0.9, 1.0, 100.0))
    report = write_report(load.from_study(study), tmp_path / "rep")
    text = report.files["summary"].read_text()
    assert "### pareto pairs\n\nNot drawn: needs at least two objectives." in text
    assert "### param importances\n\nNot drawn: fewer than 2 COMPLETE trials." in text
    assert not (tmp_path / "rep" / "param_importances.png").exists()


def _snapshots(storage):
    study = new_study(storage, "snap", [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    add(study, [0.8, 50.0], attrs(0.8, 0.9, 50.0, 1000.0))
    for epoch in range(1, 5):
        add(study, [0.6 + 0.05 * epoch, 10.0 * epoch], attrs(0.6 + 0.05 * epoch, 0.9, 10.0 * epoch, 1000.0,
                                                              snapshot_of=0))
    return study


def test_summary_counts_the_trials_that_came_from_snapshots(tmp_path):
    report = write_report(load.from_study(_snapshots(None)), tmp_path / "rep")
    text = report.files["summary"].read_text()
    assert ("- snapshots: 4 of the 5 COMPLETE trials are per-epoch snapshots (attribute snapshot_of) "
            "of 1 trained trials") in text
    assert "a line joins each trained trial with its per-epoch snapshots" in text
