"""search.report.figures: each figure shows what the study holds, checked on the drawn axes."""

from __future__ import annotations

import itertools
import random

import matplotlib
import pytest
from optuna.distributions import FloatDistribution

from search.report import figures, load
from tests.test_report_fixtures import RANDOM, add, attrs, history, new_study, search_study

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.fixture
def searched() -> load.StudyData:
    return load.from_study(search_study(None))


def _points(ax, label=None) -> set[tuple[float, float]]:
    """The (x, y) points of an axes' scatter collections (only those with ``label``, when given)."""
    return {(float(x), float(y)) for c in ax.collections if label is None or c.get_label() == label
            for x, y in c.get_offsets()}


def test_pareto_panels_show_every_complete_trial_and_highlight_exactly_the_best_trials(searched):
    d = searched
    axes = figures.pareto_axes(d)
    pairs = list(itertools.combinations(range(4), 2))
    assert len(axes) == 6
    best = d.study.best_trials
    for ax, (i, j) in zip(axes, pairs):
        assert _points(ax) == {(t.values[i], t.values[j]) for t in d.complete}
        assert _points(ax, "Best Trial") == {(t.values[i], t.values[j]) for t in best}
        infeasible = d.complete[8]
        assert _points(ax, "Infeasible Trial") == {(infeasible.values[i], infeasible.values[j])}
        assert ax.get_xlabel().startswith(d.objective_names[i]) and ax.get_ylabel().startswith(d.objective_names[j])
        assert sorted(int(a.get_text()) for a in ax.texts) == sorted(t.number for t in best)
    assert {ax.get_xlabel() for ax in axes} >= {"test_accuracy (max)", "test_roc_auc (max)", "train_time_s (min)"}


def _hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (maximized x, minimized y) points and bounded by ``ref``, by sweeping x downwards."""
    area, best_y = 0.0, ref[1]
    xs = sorted({x for x, _ in points}, reverse=True)
    for x, next_x in zip(xs, [*xs[1:], ref[0]]):
        best_y = min([best_y] + [y for px, y in points if px == x])
        area += (x - next_x) * (ref[1] - best_y)
    return area


def test_hypervolume_ends_at_the_hypervolume_of_the_front_with_the_stated_reference_point():
    study = new_study(None, "hv", [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    rng = random.Random(1)
    points = [(round(rng.uniform(0.5, 0.9), 3), round(rng.uniform(10, 60), 1)) for _ in range(12)]
    for acc, time_s in points:
        add(study, [acc, time_s], attrs(acc, 0.9, time_s, 1000.0))
    d = load.from_study(study)
    ref = figures.hypervolume_reference(d)
    worst, best = max(t for _, t in points), min(t for _, t in points)
    assert ref == pytest.approx([0.0, worst + 0.1 * (worst - best)])  # accuracy in [0, 1] -> 0; time: worse than all
    ax = figures.hypervolume_axes(d)
    curve = ax.lines[0].get_ydata()
    assert len(curve) == len(points)
    assert curve[-1] == pytest.approx(_hypervolume_2d(points, tuple(ref)))
    assert curve[0] == pytest.approx(points[0][0] * (ref[1] - points[0][1]))
    assert figures.reference_text(d, ref) == f"test_accuracy = 0, train_time_s = {ref[1]:.4g}"


def test_importances_rank_for_each_objective_the_parameter_it_depends_on():
    study = new_study(None, "imp", [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    dists = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    rng = random.Random(0)
    for _ in range(30):
        x, y = rng.random(), rng.random()
        add(study, [0.5 + 0.4 * x, 10 + 50 * y], {}, {"x": x, "y": y}, dists)  # accuracy from x, time from y
    d = load.from_study(study)
    panels = figures.importance_axes(d)
    assert [ax.get_title() for ax in panels] == ["test_accuracy", "train_time_s"]
    for ax, param in zip(panels, ("x", "y")):
        widths = {label.get_text(): bar.get_width() for bar, label in zip(ax.patches, ax.get_yticklabels())}
        assert max(widths, key=widths.get) == param and widths[param] > 0.8


def test_importances_need_two_complete_trials():
    study = new_study(None, "one", [("test_accuracy", "maximize")])
    add(study, [0.5], {}, {"x": 0.2}, {"x": FloatDistribution(0, 1)})
    d = load.from_study(study)
    with pytest.raises(figures.NotDrawn, match="fewer than 2 COMPLETE trials"):
        figures.importance_axes(d)


def test_slices_plot_accuracy_and_auc_of_the_objective_split_against_each_parameter():
    d = load.from_study(search_study(None, split="validation"))
    assert figures.slice_metrics(d) == ["val_accuracy", "val_roc_auc"]
    rows = figures.slice_axes(d)
    assert len(rows) == 2
    for metric, row in zip(("val_accuracy", "val_roc_auc"), rows):
        dropout = next(ax for ax in row if ax.get_xlabel() == "dropout")
        assert _points(dropout) == {(t.params["dropout"], t.user_attrs[metric]) for t in d.complete}
        assert row[0].get_ylabel() == metric


def test_learning_curves_draw_each_pareto_trials_history():
    d = load.from_study(search_study(None, split="validation"))
    fig = figures.learning_curves(d)
    lines = {line.get_gid(): list(line.get_ydata()) for ax in fig.axes for line in ax.lines if line.get_gid()}
    pareto = {t.number for t in d.pareto}
    assert {gid.split("-")[1] for gid in lines} == {str(n) for n in pareto}
    for t in d.pareto:
        h = t.user_attrs["history"]
        assert lines[f"trial-{t.number}-loss"] == h["loss"]
        assert lines[f"trial-{t.number}-accuracy"] == h["accuracy"]
        assert lines[f"trial-{t.number}-val_accuracy"] == h["val_accuracy"]
    assert "validation split" in [t.get_text() for t in fig.axes[1].get_legend().get_texts()][1]


def test_learning_curves_say_when_they_were_measured_on_a_sample():
    study = new_study(None, "curve", [("val_accuracy", "maximize")])
    add(study, [0.6], {**attrs(0.6, 0.9, 10.0, 1000.0, split="validation"), "curve_rows": 40})  # of 100 rows
    legend = [t.get_text() for t in figures.learning_curves(load.from_study(study)).axes[1].get_legend().get_texts()]
    assert legend[-1] == "validation split (40-row stratified sample)"
    whole = new_study(None, "whole", [("val_accuracy", "maximize")])
    add(whole, [0.6], {**attrs(0.6, 0.9, 10.0, 1000.0, split="validation"), "curve_rows": 100})
    legend = [t.get_text() for t in figures.learning_curves(load.from_study(whole)).axes[1].get_legend().get_texts()]
    assert legend[-1] == "validation split"


def test_learning_curves_are_not_drawn_without_histories():
    study = new_study(None, "n", [("test_accuracy", "maximize")])
    add(study, [0.5], {"test_accuracy": 0.5})
    with pytest.raises(figures.NotDrawn, match="history"):
        figures.learning_curves(load.from_study(study))


def _reg_study(storage):
    study = new_study(storage, "reg", [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    for l1, l2, dropout, acc, auc in ((0.01, 0, 0, 0.40, 0.88), (0.01, 0, 0, 0.50, 0.90), (0, 0.01, 0, 0.62, 0.93),
                                      (0, 0, 0.3, 0.66, 0.94)):
        settings = {"l1": l1, "l2": l2, "dropout": dropout}
        add(study, [acc, 10.0], attrs(acc, auc, 10.0, 1000.0, settings=settings))
    return study


def test_regularization_chart_shows_the_mean_accuracy_and_auc_per_setting():
    d = load.from_study(_reg_study(None))
    fig = figures.regularization(d)
    ax = fig.axes[0]
    top_down = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())), reverse=True)
    assert [text for _, text in top_down] == ["L1 0.01 (n=2)", "L2 0.01 (n=1)", "dropout 0.3 (n=1)"]
    for gid, means in (("test_accuracy", [0.45, 0.62, 0.66]), ("test_roc_auc", [0.89, 0.93, 0.94])):
        bars = sorted((p.get_y() + p.get_height() / 2, p.get_width()) for p in ax.patches if p.get_gid() == gid)
        assert [w for _, w in reversed(bars)] == pytest.approx(means)
        # each bar sits beside its setting's label
        assert all(abs(y - tick) < 0.5 for (y, _), (tick, _) in zip(reversed(bars), top_down))


def test_no_regularization_chart_when_the_study_does_not_vary_it():
    study = new_study(None, "splits", [("test_accuracy", "maximize")])
    for ratio, acc in ((0.5, 0.6), (0.9, 0.8)):
        add(study, [acc], attrs(acc, 0.9, 10.0, 1000.0, settings={"split_ratio": ratio}))
    with pytest.raises(figures.NotDrawn, match="does not vary L1, L2 or dropout"):
        figures.regularization(load.from_study(study))


def _snapshot_study(storage, with_snapshots: bool = True):
    study = new_study(storage, "snap", [("test_accuracy", "maximize"), ("test_roc_auc", "maximize"),
                                        ("train_time_s", "minimize")])
    for parent, (base_acc, epoch_s) in enumerate(((0.6, 10.0), (0.65, 12.0))):
        number = len(study.trials)
        add(study, [base_acc + 0.2, 0.9, 5 * epoch_s], attrs(base_acc + 0.2, 0.9, 5 * epoch_s, 1000.0))
        if with_snapshots:
            for epoch in range(1, 5):
                acc = base_acc + 0.05 * epoch
                add(study, [acc, 0.9, epoch * epoch_s], attrs(acc, 0.9, epoch * epoch_s, 1000.0, snapshot_of=number))
    return study


def test_snapshots_draw_one_line_per_parent_on_the_accuracy_against_time_panel():
    d = load.from_study(_snapshot_study(None))
    assert sorted(d.snapshots) == [0, 5] and all(len(v) == 4 for v in d.snapshots.values())
    axes = figures.pareto_axes(d)
    time_panel = axes[1]  # pairs (0, 1), (0, 2), (1, 2): accuracy against train_time_s is the second
    assert time_panel.get_xlabel().startswith("test_accuracy") and time_panel.get_ylabel().startswith("train_time_s")
    lines = {line.get_gid(): list(zip(line.get_xdata(), line.get_ydata())) for line in time_panel.lines}
    for parent in (0, 5):
        chain = [t for t in d.complete if t.number == parent or t.user_attrs.get("snapshot_of") == parent]
        assert lines[f"snapshots-of-{parent}"] == sorted(((t.values[0], t.values[2]) for t in chain),
                                                         key=lambda p: p[1])
    assert not [line for ax in (axes[0], axes[2]) for line in ax.lines if line.get_gid()]


def test_without_snapshots_no_line_is_drawn():
    d = load.from_study(_snapshot_study(None, with_snapshots=False))
    assert d.snapshots == {}
    assert not [line for ax in figures.pareto_axes(d) for line in ax.lines]


def test_every_figure_names_the_split_the_backend_and_the_weights_and_optunas_style_does_not_leak():
    d = load.from_study(search_study(None, split="validation", weights=RANDOM))
    face = matplotlib.rcParams["axes.facecolor"]
    drawn = figures.draw(d)
    assert set(drawn) == {"pareto_pairs", "hypervolume", "param_importances", "accuracy_auc_vs_params",
                          "learning_curves", "regularization"}
    for name, fig in drawn.items():
        assert not isinstance(fig, str), f"{name} not drawn: {fig}"
        heading = " ".join(fig.get_suptitle().split())
        assert "validation split" in heading and "Keras backend jax" in heading and RANDOM in heading, name
    assert "reference point (raw units): val_accuracy = 0, val_roc_auc = 0" in " ".join(
        drawn["hypervolume"].get_suptitle().split())
    assert matplotlib.rcParams["axes.facecolor"] == face  # Optuna switches pyplot to ggplot; not for the caller


def test_a_mixed_backend_study_says_so_in_its_titles():
    study = new_study(None, "mixed", [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    add(study, [0.7, 10.0], attrs(0.7, 0.9, 10.0, 1000.0, backend="jax"))
    add(study, [0.8, 20.0], attrs(0.8, 0.9, 20.0, 1000.0, backend="tensorflow"))
    d = load.from_study(study)
    assert "Keras backends jax, tensorflow MIXED" in figures.title(d, "x")


def test_history_fixture_ends_at_the_trials_accuracy():
    # The fixture's own promise, which the learning-curve test relies on.
    assert history(0.8, 4)["test_accuracy"][-1] == 0.8
