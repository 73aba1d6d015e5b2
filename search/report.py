"""Command line: ``python -m search.report --study NAME`` writes a study's results as CSV, PNG figures and Markdown.

Prints the Pareto set as a table and writes to ``--out`` (default
``reports/<study>/``):

- ``trials.csv`` (every trial) and ``pareto.csv`` (the Pareto-optimal ones);
- ``pareto_pairs.png``: every pair of objectives, Pareto set marked;
- ``hypervolume.png``: hypervolume of the front after each trial;
- ``param_importances.png``: parameter importances, one panel per objective;
- ``accuracy_auc_vs_params.png``: accuracy and ROC AUC against each searched parameter;
- ``summary.md`` linking all of them.

A study confirmed with ``python -m search.confirm`` also gets ``repeats.csv``,
``repeats.png`` (each confirmed trial's mean with its 95% interval, next to the
single search run) and a section with the differences between confirmed trials
one parameter apart, each with its 95% interval.

With ``--paper``, a study that mirrors one of the paper's tables
(``search/paper.toml``) also gets ``paper_comparison.csv``,
``paper_comparison.png`` and a section that sets our values next to the
paper's, with the difference.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.errors import SearchError, UsageError

PAPER_FILE = Path(__file__).with_name("paper.toml")
QUALITY = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "worst_class_recall")
_QUALITY = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "worst_class_recall",
            "reduced_recall")
# test_*: the held-out test metrics of a study evaluated on validation (absent from test-protocol studies).
SCALAR_ATTRS = (*_QUALITY, "train_time_s", "test_time_s", "peak_memory_mb", "start_memory_mb", "n_train",
                "n_val", "n_test", "evaluation", "handling", "feasible", "keras_backend",
                *(f"test_{m}" for m in _QUALITY))
AGREE_TOLERANCE = 0.02  # |ours - paper| on a 0..1 metric within which we call it agreement


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.report", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="Optuna study name (as printed by search.run)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///studies.db)")
    p.add_argument("--out", type=Path, help="output directory (default: reports/<study>)")
    p.add_argument("--paper", action="store_true",
                   help="compare with the paper's Tables 7-10 (studies fmnist_balance, cifar10_balance, "
                        "fmnist_splits, cifar10_splits, fmnist_reg)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except SearchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


# ---------------------------------------------------------------- study data

@dataclass
class StudyData:
    study: Any
    metric_names: list[str]
    directions: list[str]          # "maximize" / "minimize"
    trials: list[Any]              # every trial, by number
    complete: list[Any]            # COMPLETE trials, by number
    pareto: list[Any]              # Pareto-optimal COMPLETE trials, by number
    params: list[str]              # searched parameters (union over trials), sorted
    class_names: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.study.study_name


def load(study_name: str, storage_url: str | None) -> StudyData:
    import optuna
    from optuna.trial import TrialState

    from search.dashboard import open_readonly_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_readonly_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in storage.get_all_studies()) or "(none)"
        raise UsageError(f"--study: no study {study_name!r} in this storage; studies: {names}") from None
    n = len(study.directions)
    names = study.metric_names or ([f"objective_{i}" for i in range(n)] if n > 1 else ["value"])
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pareto = sorted(study.best_trials, key=lambda t: t.number) if complete else []
    attrs = study.user_attrs
    return StudyData(study=study, metric_names=list(names),
                     directions=[d.name.lower() for d in study.directions],
                     trials=trials, complete=complete, pareto=pareto,
                     params=sorted({k for t in trials for k in t.params}),
                     class_names=list((attrs.get("search:data") or {}).get("class_names") or []),
                     config=attrs.get("search:config") or {})


# ---------------------------------------------------------------- CSV

def _scalar(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def trial_rows(d: StudyData, trials: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    pareto_numbers = {t.number for t in d.pareto}
    params = [p if p not in d.metric_names else f"param_{p}" for p in d.params]
    extra = [a for a in SCALAR_ATTRS if a not in d.metric_names and any(a in t.user_attrs for t in trials)]
    n_cls = max((len(t.user_attrs.get("per_class_recall") or []) for t in trials), default=0)
    cls = (d.class_names if len(d.class_names) == n_cls else [str(i) for i in range(n_cls)])
    recall_cols = [f"recall_{c}" for c in cls]
    cols = ["number", "state", "pareto", *d.metric_names, *params, *extra, *recall_cols,
            "datetime_start", "duration_s", "fail_reason"]
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "pareto": t.number in pareto_numbers}
        for name, v in zip(d.metric_names, t.values or [None] * len(d.metric_names)):
            row[name] = "" if v is None else _scalar(v)
        for col, p in zip(params, d.params):
            row[col] = t.params.get(p, "")
        for a in extra:
            row[a] = _scalar(t.user_attrs.get(a, ""))
        for col, r in itertools.zip_longest(recall_cols, t.user_attrs.get("per_class_recall") or []):
            if col is not None:
                row[col] = "" if r is None else r
        row["datetime_start"] = t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else ""
        row["duration_s"] = round(t.duration.total_seconds(), 3) if t.duration else ""
        row["fail_reason"] = t.user_attrs.get("fail_reason", "")
        rows.append(row)
    return cols, rows


def write_csv(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


# ---------------------------------------------------------------- figures

def _fig(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def save(fig, path: Path) -> Path | None:
    """Write a figure as PNG; None stays None (a figure that could not be drawn)."""
    if fig is None:
        return None
    fig.savefig(path, format="png")
    return path


def _label(d: StudyData, i: int) -> str:
    return f"{d.metric_names[i]} ({'max' if d.directions[i] == 'maximize' else 'min'})"


def _front_2d(points: list[tuple[float, float]], max_x: bool, max_y: bool) -> list[tuple[float, float]]:
    """Non-dominated points of a 2-D set, sorted by x."""
    sx, sy = (1 if max_x else -1), (1 if max_y else -1)
    front = [p for p in points
             if not any((sx * q[0] >= sx * p[0] and sy * q[1] >= sy * p[1]) and q != p for q in points)]
    return sorted(set(front))


def fig_pareto_pairs(d: StudyData):
    k = len(d.metric_names)
    pairs = list(itertools.combinations(range(k), 2))
    if not pairs or not d.complete:
        return None
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig = _fig(4.6 * ncols, 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    pareto_numbers = {t.number for t in d.pareto}
    for ax, (i, j) in zip(axes, pairs):
        others = [t for t in d.complete if t.number not in pareto_numbers]
        ax.scatter([t.values[i] for t in others], [t.values[j] for t in others], s=18, c="0.6",
                   label="other trials")
        ax.scatter([t.values[i] for t in d.pareto], [t.values[j] for t in d.pareto], s=36, c="tab:red",
                   edgecolor="black", lw=0.5, zorder=3, label=f"Pareto set ({len(d.metric_names)} objectives)")
        for t in d.pareto:
            ax.annotate(str(t.number), (t.values[i], t.values[j]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        front = _front_2d([(t.values[i], t.values[j]) for t in d.complete],
                          d.directions[i] == "maximize", d.directions[j] == "maximize")
        if len(front) > 1:
            ax.plot(*zip(*front), ls="--", c="tab:red", lw=1, alpha=0.6, label="front of this pair")
        ax.set_xlabel(_label(d, i))
        ax.set_ylabel(_label(d, j))
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{d.name}: objectives pairwise, {len(d.complete)} COMPLETE trials, "
                 f"{len(d.pareto)} Pareto-optimal")
    return fig


def hypervolume_history(d: StudyData) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the front so far) with every objective scaled to [0, 1], reference 1.1."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    if len(d.metric_names) < 2 or not d.complete:
        return []
    losses = np.array([[v if dirn == "minimize" else -v for v, dirn in zip(t.values, d.directions)]
                       for t in d.complete], dtype=float)
    lo, hi = losses.min(axis=0), losses.max(axis=0)
    scaled = (losses - lo) / np.where(hi > lo, hi - lo, 1.0)
    ref = np.full(losses.shape[1], 1.1)
    return [(t.number, float(compute_hypervolume(scaled[: n + 1], ref)))
            for n, t in enumerate(d.complete)]


def fig_hypervolume(d: StudyData):
    hist = hypervolume_history(d)
    if not hist:
        return None
    fig = _fig(7, 4)
    ax = fig.subplots()
    ax.step([n for n, _ in hist], [h for _, h in hist], where="post", marker="o", ms=3)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.set_ylim(0, max(1.1 ** len(d.metric_names), max(h for _, h in hist)) * 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{d.name}: hypervolume of the Pareto front after each COMPLETE trial\n"
                 f"(each objective scaled to [0, 1] over the study, reference point 1.1; "
                 f"maximum {1.1 ** len(d.metric_names):.2f})", fontsize=9)
    return fig


def importances(d: StudyData) -> tuple[dict[str, dict[str, float]], str]:
    """{objective: {param: importance}}, or ({}, why not)."""
    import optuna

    if len(d.complete) < 2:
        return {}, "fewer than 2 COMPLETE trials"
    if not d.params:
        return {}, "the study searches no parameters"
    out: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, name in enumerate(d.metric_names):
                out[name] = optuna.importance.get_param_importances(
                    d.study, target=lambda t, i=i: t.values[i],
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as e:
        return {}, f"{type(e).__name__}: {e}"
    return out, ""


def fig_importances(d: StudyData, imps: dict[str, dict[str, float]]):
    if not imps:
        return None
    k = len(imps)
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    n_params = max(len(v) for v in imps.values())
    fig = _fig(3.6 * ncols, (0.35 * n_params + 1.3) * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    order = sorted(d.params)
    for ax, (name, imp) in zip(axes, imps.items()):
        names = [p for p in order if p in imp]
        ax.barh(range(len(names))[::-1], [imp[p] for p in names], color="tab:blue")
        ax.set_yticks(range(len(names))[::-1], names, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("importance (fANOVA)", fontsize=8)
    for ax in axes[k:]:
        ax.set_visible(False)
    fig.suptitle(f"{d.name}: parameter importances per objective ({len(d.complete)} COMPLETE trials)")
    return fig


def _is_log(d: StudyData, p: str) -> bool:
    for t in d.complete:
        dist = t.distributions.get(p)
        if dist is not None:
            return bool(getattr(dist, "log", False))
    return False


def fig_quality_vs_params(d: StudyData):
    import numpy as np
    from optuna.distributions import CategoricalDistribution

    metrics = [m for m in ("accuracy", "roc_auc") if any(m in t.user_attrs for t in d.complete)]
    if not d.params or not metrics or not d.complete:
        return None
    ncols = len(d.params)
    fig = _fig(3.3 * ncols, 3.0 * len(metrics))
    axes = fig.subplots(len(metrics), ncols, squeeze=False)
    pareto_numbers = {t.number for t in d.pareto}
    rng = np.random.default_rng(0)
    for c, p in enumerate(d.params):
        trials = [t for t in d.complete if p in t.params]
        dist = next((t.distributions[p] for t in trials), None)
        categorical = isinstance(dist, CategoricalDistribution)
        if categorical:
            choices = [str(x) for x in dist.choices]
            xs = np.array([choices.index(str(t.params[p])) for t in trials], float)
            xs = xs + rng.uniform(-0.12, 0.12, len(xs))
        else:
            xs = np.array([t.params[p] for t in trials], float)
        colours = ["tab:red" if t.number in pareto_numbers else "tab:blue" for t in trials]
        for r, m in enumerate(metrics):
            ax = axes[r][c]
            ys = [t.user_attrs.get(m, float("nan")) for t in trials]
            ax.scatter(xs, ys, c=colours, s=20, edgecolor="black", lw=0.3)
            if categorical:
                ax.set_xticks(range(len(choices)), choices, fontsize=8)
                ax.set_xlim(-0.5, len(choices) - 0.5)
            elif _is_log(d, p):
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            if r == len(metrics) - 1:
                ax.set_xlabel(p)
            if c == 0:
                ax.set_ylabel(m)
    fig.suptitle(f"{d.name}: accuracy and ROC AUC against each searched parameter "
                 f"(red: Pareto-optimal)")
    return fig


# ---------------------------------------------------------------- repeats (search.confirm)

def repeat_metrics(d: StudyData, confirmed: dict[str, Any]) -> list[str]:
    """The objectives that are quality metrics, then their held-out test_* twins: what a claim is about."""
    present = {m for e in confirmed.get("trials", {}).values() for m in e["metrics"]}
    quality = [m for m in d.metric_names if m in _QUALITY] or [m for m in ("accuracy", "roc_auc") if m in present]
    return [m for m in [*quality, *(f"test_{m}" for m in quality)] if m in present]


def repeat_rows(d: StudyData, confirmed: dict[str, Any], metrics: list[str]) -> list[dict[str, Any]]:
    by_number = {t.number: t for t in d.trials}
    rows = []
    for number, entry in sorted(confirmed.get("trials", {}).items(), key=lambda kv: int(kv[0])):
        single = by_number.get(int(number))
        for m in metrics:
            s = entry["metrics"].get(m)
            if s:
                rows.append({"trial": int(number), **{f"param_{k}": v for k, v in entry["params"].items()},
                             "metric": m, "mean": s["mean"], "std": s["std"], "n": s["n"],
                             "ci95_low": (s.get("ci95") or ["", ""])[0], "ci95_high": (s.get("ci95") or ["", ""])[1],
                             "search_run": single.user_attrs.get(m, "") if single is not None else ""})
    return rows


def fig_repeats(d: StudyData, confirmed: dict[str, Any], metrics: list[str]):
    entries = sorted(confirmed.get("trials", {}).items(), key=lambda kv: int(kv[0]))
    if not entries or not metrics:
        return None
    by_number = {t.number: t for t in d.trials}
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = _fig(max(5.0, 0.9 * len(entries) + 2) * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    labels = [f"{n}: " + ", ".join(str(v) for v in e["params"].values()) for n, e in entries]
    for ax, m in zip(axes, metrics):
        for x, (n, e) in enumerate(entries):
            s = e["metrics"].get(m)
            if not s:
                continue
            lo, hi = s.get("ci95") or (s["mean"], s["mean"])
            ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", c="tab:blue",
                        capsize=4, label="mean over seeds, 95% interval" if x == 0 else None)
            ax.scatter([x - 0.15] * len(s["values"]), s["values"], s=10, c="0.5", zorder=3,
                       label="each seed" if x == 0 else None)
            single = by_number.get(int(n))
            if single is not None and m in single.user_attrs:
                ax.scatter([x + 0.15], [single.user_attrs[m]], marker="x", c="tab:red",
                           label="the search's single run" if x == 0 else None)
        ax.set_xticks(range(len(entries)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{d.name}: confirmed trials over seeds {confirmed.get('seeds')}")
    return fig


def repeats_md(d: StudyData, confirmed: dict[str, Any], metrics: list[str], png: Path | None) -> list[str]:
    from search.confirm import differences, interval

    entries = sorted(confirmed.get("trials", {}).items(), key=lambda kv: int(kv[0]))
    lines = ["", "## Repeats (`search.confirm`)", "",
             f"Each trial below re-run with seeds {confirmed.get('seeds')} (a new split, subsample and "
             f"initialization each): mean ± std [95% t-interval of the mean].", ""]
    lines.append(md_table(["trial", "params", *metrics],
                          [[n, ", ".join(f"{k}={v}" for k, v in e["params"].items()),
                            *(interval(e["metrics"][m]) if m in e["metrics"] else "" for m in metrics)]
                           for n, e in entries]))
    diffs = differences(confirmed, metrics)
    if diffs:
        lines += ["", "Confirmed trials one parameter apart: difference of the means (b - a) with its 95% "
                      "interval (paired over the shared seeds, or Welch); a claim holds only where the "
                      "interval excludes 0.", "",
                  md_table(["metric", "parameter", "a", "b", "difference", "95% interval", "test", "verdict"],
                           [[x.metric, x.param, f"{x.a_value} (trial {x.a})", f"{x.b_value} (trial {x.b})",
                             f"{x.diff:+.4f}", f"[{x.low:+.4f}, {x.high:+.4f}]", f"{x.test}, n={x.n}", x.verdict]
                            for x in diffs])]
    if png is not None:
        lines += ["", f"![repeats]({png.name})"]
    return lines


# ---------------------------------------------------------------- paper comparison

def load_paper(path: Path = PAPER_FILE) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def paper_key(d: StudyData, paper: dict[str, Any]) -> str | None:
    """The paper study a stored study mirrors: its config name, else its name without a weights suffix."""
    for name in (d.config.get("name"), d.name, d.name.rsplit("-", 1)[0]):
        if name and name in paper["studies"]:
            return name
    return None


def _matches(settings: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, want in match.items():
        have = settings.get(key)
        if have is None:
            return False
        if isinstance(want, list):
            if not (isinstance(have, (int, float)) and want[0] <= have <= want[1]):
                return False
        elif isinstance(want, str) and want.startswith(">"):
            if not (isinstance(have, (int, float)) and have > float(want[1:])):
                return False
        elif isinstance(want, (int, float)) and not isinstance(want, bool):
            if not (isinstance(have, (int, float)) and math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)):
                return False
        elif have != want:
            return False
    return True


def _settings(t: Any) -> dict[str, Any]:
    return {**(t.user_attrs.get("resolved_params") or {}), **t.params}


@dataclass
class Comparison:
    table: str
    setting: str
    metric: str
    paper: float
    ours: float | None
    n: int

    @property
    def diff(self) -> float | None:
        return None if self.ours is None else self.ours - self.paper

    @property
    def verdict(self) -> str:
        if self.ours is None:
            return "not run"
        if self.metric in QUALITY:
            if abs(self.diff) <= AGREE_TOLERANCE:
                return "agrees"
            return "ours higher" if self.diff > 0 else "ours lower"
        return f"ours x{self.ours / self.paper:.2g}" if self.paper else "-"


def compare(d: StudyData, paper: dict[str, Any], key: str) -> tuple[list[Comparison], list[str]]:
    """Rows of (table, setting, metric, paper, ours = mean over matching COMPLETE trials) and trend notes."""
    spec = paper["studies"][key]
    rows: list[Comparison] = []
    notes: list[str] = []
    for tname in spec["tables"]:
        table = paper[tname]
        title = table["title"].split(":")[0]
        per_setting: list[tuple[str, dict[str, float], dict[str, float | None]]] = []
        for row in table["rows"]:
            if row["dataset"] != spec["dataset"]:
                continue
            matching = [t for t in d.complete if _matches(_settings(t), row["match"])]
            ours: dict[str, float | None] = {}
            for m in table["metrics"]:
                vals = [t.user_attrs[m] for t in matching if isinstance(t.user_attrs.get(m), (int, float))]
                vals = [v for v in vals if not math.isnan(v)]
                ours[m] = sum(vals) / len(vals) if vals else None
                rows.append(Comparison(title, row["setting"], m, row["values"][m], ours[m], len(matching)))
            per_setting.append((row["setting"], row["values"], ours))
        notes += _trends(title, table, per_setting)
    return rows, notes


def _trends(title: str, table: dict[str, Any], per: list[tuple[str, dict, dict]]) -> list[str]:
    out = []
    if len(per) < 2:
        return out
    if table.get("trend") == "first_last":
        for m in table["metrics"]:
            # The first and last settings the study measured, so a partial grid still shows its trend.
            measured = [r for r in per if r[2][m] is not None]
            if len(measured) < 2:
                out.append(f"{title}, {m}: paper {per[0][0]} -> {per[-1][0]} {per[-1][1][m] - per[0][1][m]:+.4g}; "
                           f"ours measured on {len(measured)} setting(s), no trend")
                continue
            (a, pa, oa), (b, pb, ob) = measured[0], measured[-1]
            dp = pb[m] - pa[m]
            do = ob[m] - oa[m]
            same = (dp > 0) == (do > 0) if dp and do else dp == do
            out.append(f"{title}, {m}, {a} -> {b}: paper {dp:+.4g}, ours {do:+.4g} "
                       f"({'same direction' if same else 'OPPOSITE direction'})")
    elif table.get("trend") == "best":
        for m in ("accuracy", "roc_auc"):
            if m not in table["metrics"]:
                continue
            paper_best = max(per, key=lambda r: r[1][m])[0]
            measured = [r for r in per if r[2][m] is not None]
            if not measured:
                out.append(f"{title}, best {m}: paper {paper_best}; ours: no matching trials")
                continue
            ours_best = max(measured, key=lambda r: r[2][m])[0]
            out.append(f"{title}, best {m}: paper {paper_best}, ours {ours_best} "
                       f"({'same' if ours_best == paper_best else 'DIFFERENT'}; "
                       f"ours over {len(measured)} of {len(per)} settings with trials)")
    return out


def fig_paper(d: StudyData, rows: list[Comparison]):
    import numpy as np

    q = [r for r in rows if r.metric in QUALITY]
    if not q:
        return None
    tables = list(dict.fromkeys(r.table for r in q))
    fig = _fig(max(7.0, 1.1 * len(q) / len(tables) + 2), 3.8 * len(tables))
    axes = fig.subplots(len(tables), 1, squeeze=False).ravel()
    for ax, table in zip(axes, tables):
        tr = [r for r in q if r.table == table]
        x = np.arange(len(tr))
        ax.bar(x - 0.2, [r.paper for r in tr], 0.4, label="paper", color="0.6")
        ax.bar(x + 0.2, [r.ours if r.ours is not None else 0 for r in tr], 0.4, label="ours (mean)",
               color="tab:blue")
        for xi, r in zip(x, tr):
            if r.ours is None:
                ax.text(xi + 0.2, 0.02, "not run", rotation=90, fontsize=7, ha="center", va="bottom")
        ax.set_xticks(x, [f"{r.setting}\n{r.metric}" for r in tr], fontsize=7, rotation=60, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(table)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{d.name}: our measurements next to the paper's")
    return fig


# ---------------------------------------------------------------- Markdown

def _fmt(v: Any) -> str:
    from search.progress import _fmt as f

    if v is None or v == "":
        return "-"
    return f(v)


def md_table(cols: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def evaluation_text(config: dict[str, Any]) -> str:
    """Where the objectives were measured.  A stored config without the setting predates it: test split."""
    training = config.get("training") or {}
    if training.get("evaluation", "test") == "test":
        return "test split (the paper's protocol: objectives measured on the held-out test split)"
    return (f"validation split ({training.get('validation_fraction', 0.2):g} of the training part, stratified, "
            f"seeded); held-out test metrics are stored as test_* and were never returned to the sampler")


def summary_md(d: StudyData, files: dict[str, Path | None], notes: dict[str, str],
               paper: tuple[list[Comparison], list[str]] | None, paper_note: str,
               repeats: list[str] | None = None) -> str:
    from optuna.trial import TrialState

    counts = {s.name: sum(t.state == s for t in d.trials) for s in TrialState}
    data = d.study.user_attrs.get("search:data") or {}
    lines = [f"# Study `{d.name}`", ""]
    if d.config.get("description"):
        lines += [d.config["description"], ""]
    if data:
        lines.append(f"- data: {d.config.get('dataset', {}).get('name', '?')} from {data.get('source')}, "
                     f"{data.get('n_images')} images, class counts {data.get('class_counts')}")
    if d.config.get("backbone"):
        lines.append(f"- backbone: {d.config['backbone'].get('name')}, weights {d.config['backbone'].get('weights')}")
    lines.append("- trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    lines.append("- objectives: " + ", ".join(f"{m} ({dirn})" for m, dirn in zip(d.metric_names, d.directions)))
    lines.append("- evaluation: " + evaluation_text(d.config))
    art = d.study.user_attrs.get("search:artifact_dir")
    if art:
        lines.append(f"- per-trial confusion matrices and per-class recall: Optuna artifacts in `{art}` "
                     f"(see them with `python -m search.dashboard`)")
    lines += ["", "## Pareto set", ""]
    if d.pareto:
        extra = [m for m in ("accuracy", "precision", "recall", "f1", "roc_auc", "train_time_s", "test_time_s",
                             "peak_memory_mb") if m not in d.metric_names]
        lines.append(md_table(["trial", *d.params, *d.metric_names, *extra],
                              [[t.number, *(t.params.get(p, "") for p in d.params), *t.values,
                                *(t.user_attrs.get(m, "") for m in extra)] for t in d.pareto]))
    else:
        lines.append("No COMPLETE trials yet.")
    if d.complete:
        lines += ["", "## Best trial per objective", ""]
        best = []
        for i, (m, dirn) in enumerate(zip(d.metric_names, d.directions)):
            pick = max if dirn == "maximize" else min
            t = pick(d.complete, key=lambda t: t.values[i])
            best.append([m, dirn, t.values[i], t.number])
        lines.append(md_table(["objective", "direction", "best value", "trial"], best))
    lines += ["", "## Figures", ""]
    captions = {"pareto_pairs": "Every pair of objectives; red: the Pareto set over all objectives, "
                                "dashed: the front of that pair alone.",
                "hypervolume": "Hypervolume of the Pareto front after each trial (objectives scaled to [0, 1]).",
                "param_importances": "Parameter importances (fANOVA) per objective.",
                "accuracy_auc_vs_params": "Accuracy and ROC AUC against each searched parameter.",
                "paper_comparison": "Our measurements (mean over matching trials) next to the paper's."}
    for key, caption in captions.items():
        if key == "paper_comparison":
            continue
        path = files.get(key)
        if path is not None:
            lines += [f"### {key.replace('_', ' ')}", "", caption, "", f"![{key}]({path.name})", ""]
        elif key in notes:
            lines += [f"### {key.replace('_', ' ')}", "", f"Not drawn: {notes[key]}.", ""]
    lines += ["## Files", "", f"- [trials.csv]({files['trials_csv'].name}): every trial",
              f"- [pareto.csv]({files['pareto_csv'].name}): the Pareto set"]
    if files.get("paper_csv"):
        lines.append(f"- [paper_comparison.csv]({files['paper_csv'].name}): the paper comparison")
    if files.get("repeats_csv"):
        lines.append(f"- [repeats.csv]({files['repeats_csv'].name}): the confirmed trials, per seed summary")
    lines += repeats or []
    if paper is not None or paper_note:
        lines += ["", "## Comparison with the paper", ""]
        if paper_note:
            lines.append(paper_note)
        if paper is not None:
            rows, trends = paper
            lines += ["Ours: the mean over the study's COMPLETE trials that match the paper's setting (n); "
                      f"difference = ours - paper; quality metrics within {AGREE_TOLERANCE} count as agreement. "
                      "Times and memory were measured on other hardware and, here, with cached backbone features, "
                      "so only their ratio is shown.", "",
                      md_table(["table", "setting", "metric", "paper", "ours", "n", "difference", "verdict"],
                               [[r.table, r.setting, r.metric, r.paper, r.ours, r.n, r.diff, r.verdict]
                                for r in rows])]
            if trends:
                lines += ["", "Trends:", ""] + [f"- {t}" for t in trends]
            agree = sum(r.verdict == "agrees" for r in rows)
            measured = sum(r.ours is not None and r.metric in QUALITY for r in rows)
            lines += ["", f"{agree} of {measured} measured quality values agree with the paper within "
                          f"{AGREE_TOLERANCE}."]
            if files.get("paper_comparison"):
                lines += ["", f"![paper_comparison]({files['paper_comparison'].name})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from search.progress import pareto_table

    d = load(args.study, args.storage)
    if not d.trials:
        raise SearchError(f"study {d.name!r} has no trials yet; run `python -m search.run --study ...` first")
    out = args.out or Path("reports") / d.name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot create {out}: {e.strerror}") from None

    import matplotlib

    matplotlib.use("Agg")
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"evaluation: {evaluation_text(d.config)}", highlight=False)
    if d.pareto:
        console.print(pareto_table(d.study, d.metric_names))
    else:
        console.print(f"study {d.name}: no COMPLETE trials yet")

    files: dict[str, Path | None] = {}
    notes: dict[str, str] = {}
    files["trials_csv"] = write_csv(out / "trials.csv", *trial_rows(d, d.trials))
    files["pareto_csv"] = write_csv(out / "pareto.csv", *trial_rows(d, d.pareto))
    files["pareto_pairs"] = save(fig_pareto_pairs(d), out / "pareto_pairs.png")
    if files["pareto_pairs"] is None:
        notes["pareto_pairs"] = "needs at least two objectives and one COMPLETE trial"
    files["hypervolume"] = save(fig_hypervolume(d), out / "hypervolume.png")
    if files["hypervolume"] is None:
        notes["hypervolume"] = "needs at least two objectives and one COMPLETE trial"
    imps, why = importances(d)
    files["param_importances"] = save(fig_importances(d, imps), out / "param_importances.png")
    if files["param_importances"] is None:
        notes["param_importances"] = why
    files["accuracy_auc_vs_params"] = save(fig_quality_vs_params(d), out / "accuracy_auc_vs_params.png")
    if files["accuracy_auc_vs_params"] is None:
        notes["accuracy_auc_vs_params"] = "needs searched parameters and COMPLETE trials with accuracy/roc_auc"

    repeats = None
    confirmed = d.study.user_attrs.get("search:confirm")
    if confirmed and confirmed.get("trials"):
        metrics = repeat_metrics(d, confirmed)
        rows = repeat_rows(d, confirmed, metrics)
        cols = list(dict.fromkeys(k for r in rows for k in r))
        files["repeats_csv"] = write_csv(out / "repeats.csv", cols, rows)
        files["repeats"] = save(fig_repeats(d, confirmed, metrics), out / "repeats.png")
        repeats = repeats_md(d, confirmed, metrics, files["repeats"])
        console.print("\n".join(repeats), highlight=False, markup=False)

    paper_result = None
    paper_note = ""
    if args.paper:
        paper = load_paper()
        key = paper_key(d, paper)
        if key is None:
            paper_note = (f"Study `{d.name}` does not mirror a table of the paper; the studies that do are "
                          f"{', '.join(paper['studies'])}.")
            console.print(f"--paper: {paper_note}")
        else:
            paper_result = compare(d, paper, key)
            rows, trends = paper_result
            files["paper_csv"] = write_csv(
                out / "paper_comparison.csv",
                ["table", "setting", "metric", "paper", "ours", "n", "difference", "verdict"],
                [{"table": r.table, "setting": r.setting, "metric": r.metric, "paper": r.paper,
                  "ours": "" if r.ours is None else r.ours, "n": r.n,
                  "difference": "" if r.diff is None else r.diff, "verdict": r.verdict} for r in rows])
            files["paper_comparison"] = save(fig_paper(d, rows), out / "paper_comparison.png")
            t = Table(title=f"{d.name} against the paper ({paper['studies'][key]['dataset']})")
            for col in ("table", "setting", "metric", "paper", "ours", "n", "difference", "verdict"):
                t.add_column(col, justify="right")
            for r in rows:
                t.add_row(r.table, r.setting, r.metric, _fmt(r.paper), _fmt(r.ours), str(r.n), _fmt(r.diff),
                          r.verdict)
            console.print(t)
            for line in trends:
                console.print(f"  {line}", highlight=False)

    summary = out / "summary.md"
    summary.write_text(summary_md(d, files, notes, paper_result, paper_note, repeats))
    n_png = sum(1 for k, p in files.items() if p is not None and p.suffix == ".png")
    console.print(f"report: {summary} ({len(d.trials)} trials, {n_png} figures)", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
