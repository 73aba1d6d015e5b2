"""The report's figures of one study.

Drawn with ``optuna.visualization.matplotlib`` where it can show them:

- ``pareto_axes``: every pair of objectives (``plot_pareto_front`` with ``targets``), the
  Pareto set over all objectives highlighted, per-epoch snapshot trials as one line per parent;
- ``hypervolume_axes``: ``plot_hypervolume_history`` with a fixed reference point in raw units;
- ``importance_axes``: ``plot_param_importances``, one per objective;
- ``slice_axes``: ``plot_slice`` of accuracy and ROC AUC on the objective split against each parameter.

Optuna draws each on its own pyplot figure; ``compose`` puts them side by side in one PNG.
Hand-written, each saying why: ``learning_curves`` and ``regularization``.

A figure that cannot be drawn raises ``NotDrawn`` with the reason, which summary.md shows.
Every figure's title names the study, the objective split, the Keras backend and the weights.
"""

from __future__ import annotations

import io
import itertools
import math
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from search.report.load import ATTR_PREFIX, StudyData
from search.trial.metrics import curve_sample_note

REGULARIZATION = ("l1", "l2", "dropout")
MAX_SETTINGS = 40  # bars in the regularization chart; beyond, the best by accuracy


class NotDrawn(Exception):
    """A figure the study cannot give; ``str()`` says why (for summary.md)."""


# ---------------------------------------------------------------- shared

def new_figure(width: float, height: float):
    """A pyplot-free figure: nothing global is touched, nothing needs closing."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def title(d: StudyData, what: str) -> str:
    """``<study>: <what>`` and, on the next lines, the split, backend and weights."""
    return f"{d.name}: {what}\n" + "\n".join(textwrap.wrap(d.context, 110))


def label(d: StudyData, i: int) -> str:
    """Objective ``i``'s axis label: its name and direction, e.g. ``test_accuracy (max)``."""
    return f"{d.objective_names[i]} ({'max' if d.directions[i] == 'maximize' else 'min'})"


@contextmanager
def _optuna_plot() -> Iterator[None]:
    """Optuna's matplotlib plots switch pyplot to the ggplot style for the whole process: keep it inside."""
    import matplotlib
    import optuna

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def figure_of(axes: Any):
    """The figure of an Axes or of an array of Axes (what Optuna's plots return)."""
    import numpy as np

    return (np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes).figure


def close(axes_list: list[Any]) -> None:
    """Close the pyplot figures Optuna opened (pyplot keeps them alive otherwise)."""
    import matplotlib.pyplot as plt

    for axes in axes_list:
        plt.close(figure_of(axes))


def compose(axes_list: list[Any], heading: str, ncols: int = 3):
    """One figure holding the pictures of ``axes_list`` (each Optuna's own figure) in a grid.

    Optuna's plots always make their own pyplot figure, so they are rendered and tiled; their figures
    are closed.
    """
    from matplotlib.image import imread

    images = []
    for axes in axes_list:
        buf = io.BytesIO()
        figure_of(axes).savefig(buf, format="png", dpi=100)
        buf.seek(0)
        images.append(imread(buf, format="png"))
    close(axes_list)
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    h = max(img.shape[0] for img in images)
    w = max(img.shape[1] for img in images)
    fig = new_figure(ncols * w / 100, nrows * h / 100 + 0.25 * (heading.count("\n") + 2))
    axs = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, img in zip(axs, images):
        ax.imshow(img, interpolation="none")
        ax.set_axis_off()
    for ax in axs[len(images):]:
        ax.set_visible(False)
    fig.suptitle(heading, fontsize=10)
    return fig


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path``; returns ``path``."""
    fig.savefig(path, format="png")
    return path


# ---------------------------------------------------------------- Optuna's plots

def pareto_axes(d: StudyData) -> list[Any]:
    """One ``plot_pareto_front`` per pair of objectives; Pareto trials (over all objectives) highlighted.

    The Pareto set's trial numbers are written beside their points; on the panel of accuracy against
    training time, each trial's per-epoch snapshots are joined by a line.
    """
    from optuna.visualization.matplotlib import plot_pareto_front

    k = len(d.objective_names)
    if k < 2:
        raise NotDrawn("needs at least two objectives")
    if not d.complete:
        raise NotDrawn("no COMPLETE trials yet")
    out = []
    for i, j in itertools.combinations(range(k), 2):
        with _optuna_plot():
            ax = plot_pareto_front(d.study, targets=lambda t, i=i, j=j: (t.values[i], t.values[j]),
                                   target_names=[label(d, i), label(d, j)])
        ax.set_title(f"{d.objective_names[j]} against {d.objective_names[i]}", fontsize=10)
        for t in d.pareto:
            ax.annotate(str(t.number), (t.values[i], t.values[j]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        _snapshot_lines(d, ax, i, j)
        out.append(ax)
    return out


def _snapshot_lines(d: StudyData, ax: Any, i: int, j: int) -> None:
    """On the accuracy-vs-training-time panel: one line per trained trial through its per-epoch snapshots."""
    names = [d.objective_names[i], d.objective_names[j]]
    if set(names) != {d.prefix + "accuracy", "train_time_s"} or not d.snapshots:
        return
    at_time = names.index("train_time_s")
    by_number = {t.number: t for t in d.complete}
    for n, (parent, snaps) in enumerate(sorted(d.snapshots.items())):
        chain = snaps + ([by_number[parent]] if parent in by_number else [])
        chain.sort(key=lambda t: t.values[(i, j)[at_time]])
        ax.plot([t.values[i] for t in chain], [t.values[j] for t in chain], color="0.3", lw=0.8, zorder=1,
                gid=f"snapshots-of-{parent}", label="per-epoch snapshots of one trial" if n == 0 else None)
    ax.legend(fontsize=7)


def hypervolume_reference(d: StudyData) -> list[float]:
    """A fixed reference point in raw units: per objective, a little worse than the worst feasible trial.

    A maximized objective whose values all lie in [0, 1] (accuracy, AUC) gets 0; any other gets its
    worst value moved by a tenth of its range (or of its size when all values are equal).
    """
    ref = []
    trials = d.feasible or d.complete  # Optuna's hypervolume leaves infeasible trials out
    for i, direction in enumerate(d.directions):
        values = [t.values[i] for t in trials]
        lo, hi = min(values), max(values)
        if direction == "maximize" and lo >= 0 and hi <= 1:
            ref.append(0.0)
            continue
        worst = lo if direction == "maximize" else hi
        margin = 0.1 * ((hi - lo) or abs(worst) or 1.0)
        ref.append(worst - margin if direction == "maximize" else worst + margin)
    return ref


def reference_text(d: StudyData, ref: list[float]) -> str:
    """``name = value`` per objective, for captions."""
    return ", ".join(f"{name} = {v:.4g}" for name, v in zip(d.objective_names, ref))


def hypervolume_axes(d: StudyData) -> Any:
    """``plot_hypervolume_history`` against ``hypervolume_reference(d)``."""
    from optuna.visualization.matplotlib import plot_hypervolume_history

    if len(d.objective_names) < 2:
        raise NotDrawn("needs at least two objectives")
    if not d.complete:
        raise NotDrawn("no COMPLETE trials yet")
    ref = hypervolume_reference(d)
    with _optuna_plot():
        ax = plot_hypervolume_history(d.study, ref)
    ax.set_ylabel("hypervolume (product of the objectives' raw units)")
    return ax


def importance_axes(d: StudyData) -> list[Any]:
    """``plot_param_importances`` per objective (fANOVA, seeded: the same study gives the same picture)."""
    import optuna
    from optuna.visualization.matplotlib import plot_param_importances

    if len(d.complete) < 2:
        raise NotDrawn("fewer than 2 COMPLETE trials")
    if not d.params:
        raise NotDrawn("the study searches no parameters")
    out: list[Any] = []
    for i, name in enumerate(d.objective_names):
        try:
            with _optuna_plot():
                ax = plot_param_importances(d.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                                            target=lambda t, i=i: t.values[i], target_name=name)
        except (RuntimeError, ValueError) as e:
            close(out)
            raise NotDrawn(f"{type(e).__name__}: {e}") from None
        ax.set_title("", loc="left")  # Optuna's generic heading; the objective names the panel
        ax.set_title(name, fontsize=10)
        out.append(ax)
    return out


def slice_metrics(d: StudyData) -> list[str]:
    """Accuracy and ROC AUC on the objective split, where the COMPLETE trials have them."""
    return [m for m in (d.prefix + "accuracy", d.prefix + "roc_auc")
            if any(d.value(t, m) is not None for t in d.complete)]


def slice_axes(d: StudyData) -> list[Any]:
    """``plot_slice`` of each of ``slice_metrics(d)`` against every searched parameter (one row each)."""
    from optuna.visualization.matplotlib import plot_slice

    metrics = slice_metrics(d)
    if not d.params:
        raise NotDrawn("the study searches no parameters")
    if not metrics:
        raise NotDrawn(f"no COMPLETE trial has {d.prefix}accuracy or {d.prefix}roc_auc")
    out = []
    for m in metrics:
        def target(t: Any, m: str = m) -> float:
            v = d.value(t, m)
            return math.nan if v is None else v  # plot_slice leaves out non-finite targets

        with _optuna_plot():
            out.append(plot_slice(d.study, target=target, target_name=m))
    return out


# ---------------------------------------------------------------- hand-written

def learning_curves(d: StudyData):
    """Training loss and accuracy per epoch, and accuracy on the evaluation split, of the Pareto trials."""
    # Hand-written: the per-epoch history is a user attribute (trials report no intermediate values),
    # which none of Optuna's plots reads.
    import matplotlib

    trials = [t for t in d.pareto if isinstance(d.attrs(t).get("history"), dict)]
    if not trials:
        raise NotDrawn("no Pareto-optimal trial stores a per-epoch history")
    # Since run.curve_rows, a curve may be measured on a sample of its split: the legend says so.
    sample = curve_sample_note(a["curve_rows"] for a in map(d.attrs, trials)
                               if a.get("curve_rows") and a["curve_rows"] < (a.get("n_val") or a.get("n_test") or 0))
    fig = new_figure(12, 4.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    splits = set()
    for n, t in enumerate(trials):
        h = d.attrs(t)["history"]
        c = colours(n % 10)
        loss = h.get("loss") or []
        ax_loss.plot(range(1, len(loss) + 1), loss, color=c, marker=".", gid=f"trial-{t.number}-loss",
                     label=f"trial {t.number}")
        acc = h.get("accuracy") or []
        ax_acc.plot(range(1, len(acc) + 1), acc, color=c, marker=".", gid=f"trial-{t.number}-accuracy")
        for split, prefix in ATTR_PREFIX.items():
            ev = h.get(f"{prefix}accuracy")
            if ev:
                splits.add(split)
                ax_acc.plot(range(1, len(ev) + 1), ev, color=c, ls="--", marker=".",
                            gid=f"trial-{t.number}-{prefix}accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    ax_acc.plot([], [], color="0.3", label="training")
    ax_acc.plot([], [], color="0.3", ls="--", label=f"{' / '.join(sorted(splits)) or 'evaluation'} split{sample}")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(fontsize=7, ncol=2)
    ax_acc.legend(fontsize=7)
    fig.suptitle(title(d, f"learning curves of the {len(trials)} Pareto-optimal trials"), fontsize=10)
    return fig


def regularization_settings(d: StudyData) -> list[tuple[str, list[Any]]]:
    """(label, COMPLETE trials) per distinct (l1, l2, dropout), in setting order; trials lacking one skipped."""
    groups: dict[tuple[float, float, float], list[Any]] = {}
    for t in d.complete:
        s = d.settings(t)
        if all(isinstance(s.get(k), (int, float)) for k in REGULARIZATION):
            groups.setdefault(tuple(float(s[k]) for k in REGULARIZATION), []).append(t)

    def text(l1: float, l2: float, dropout: float) -> str:
        parts = [f"L1 {l1:g}" if l1 else "", f"L2 {l2:g}" if l2 else "", f"dropout {dropout:g}" if dropout else ""]
        return " + ".join(p for p in parts if p) or "none"

    # The paper's order: L1, then L2, then dropout alone by rate, no regularization last.
    order = sorted(groups, key=lambda k: (not k[0], not k[1], not k[2], k))
    return [(text(*key), groups[key]) for key in order]


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def regularization(d: StudyData):
    """Mean accuracy and ROC AUC per regularization setting, as bars (the paper's Figure 4)."""
    # Hand-written: bars of two metrics per combination of L1, L2 and dropout; Optuna's plots show one
    # parameter at a time.
    import numpy as np

    settings = regularization_settings(d)
    if len(settings) < 2:
        raise NotDrawn("the study does not vary L1, L2 or dropout")
    acc, auc = d.prefix + "accuracy", d.prefix + "roc_auc"
    rows = [(text, len(ts), _mean([d.value(t, acc) for t in ts]), _mean([d.value(t, auc) for t in ts]))
            for text, ts in settings]
    shown = rows
    if len(rows) > MAX_SETTINGS:
        shown = sorted(rows, key=lambda r: -(r[2] if r[2] is not None else -1))[:MAX_SETTINGS]
        shown = [r for r in rows if r in shown]
    fig = new_figure(9, 1.6 + 0.42 * len(shown))
    ax = fig.subplots()
    y = np.arange(len(shown))[::-1]
    for offset, (name, col, colour) in enumerate(((acc, 2, "tab:blue"), (auc, 3, "tab:orange"))):
        values = [r[col] if r[col] is not None else 0.0 for r in shown]
        bars = ax.barh(y + 0.2 - 0.4 * offset, values, 0.4, color=colour, label=name, gid=name)
        ax.bar_label(bars, labels=[f"{r[col]:.3f}" if r[col] is not None else "-" for r in shown], fontsize=7,
                     padding=2)
    ax.set_yticks(y, [f"{r[0]} (n={r[1]})" for r in shown], fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"mean over the setting's COMPLETE trials ({d.objective_split} split)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    what = "accuracy and ROC AUC per regularization setting (as the paper's Figure 4)"
    if len(shown) < len(rows):
        what += f"; the {len(shown)} most accurate of {len(rows)} settings"
    fig.suptitle(title(d, what), fontsize=10)
    return fig


# ---------------------------------------------------------------- all of them

def draw(d: StudyData) -> dict[str, Any]:
    """Every figure of the study by file stem: a Figure, or a string saying why it was not drawn."""
    out: dict[str, Any] = {}
    steps = {
        "pareto_pairs": lambda: compose(pareto_axes(d), title(
            d, f"objectives pairwise, {len(d.complete)} COMPLETE trials; red: the {len(d.pareto)} "
               f"Pareto-optimal over all objectives")),
        "hypervolume": lambda: compose([hypervolume_axes(d)], title(
            d, "hypervolume of the Pareto front after each trial; fixed reference point (raw units): "
               f"{reference_text(d, hypervolume_reference(d))}"), ncols=1),
        "param_importances": lambda: compose(importance_axes(d), title(
            d, "parameter importances (fANOVA) per objective"), ncols=4),
        "accuracy_auc_vs_params": lambda: compose(slice_axes(d), title(
            d, "accuracy and ROC AUC against each searched parameter"), ncols=1),
        "learning_curves": lambda: learning_curves(d),
        "regularization": lambda: regularization(d),
    }
    for name, step in steps.items():
        try:
            out[name] = step()
        except NotDrawn as e:
            out[name] = str(e)
    return out
