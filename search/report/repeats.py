"""The confirmed-repeats section: what ``python -m search.confirm`` stored (search.study.repeats).

Per confirmed trial and metric: mean ± std [95% t-interval] over the seeds, next to the search's single
run (``repeats.csv``, ``repeats.png``), and the differences between confirmed trials one parameter apart,
paired by seed (``search.study.repeats.differences``).  Metric names are split-prefixed as everywhere in the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from search.report import figures
from search.report.load import ATTR_PREFIX, StudyData, qualified


def confirmed(d: StudyData) -> dict[str, Any] | None:
    """The study's confirmed repeats (search.study.repeats.confirmed), split-prefixed; None: nothing confirmed."""
    from search.study import repeats

    conf = repeats.confirmed(d.study.user_attrs)
    if not conf["trials"]:
        return None
    trials = {}
    for number, entry in conf["trials"].items():
        metrics: dict[str, Any] = {}
        for name, summary in entry["metrics"].items():
            metrics.setdefault(qualified(name, d.objective_split), summary)
        trials[number] = {**entry, "metrics": metrics}
    return {**conf, "trials": trials}


def entries(conf: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(trial number as text, entry) of each confirmed trial, by trial number."""
    return sorted(conf["trials"].items(), key=lambda kv: int(kv[0]))


def repeat_metrics(d: StudyData, conf: dict[str, Any]) -> list[str]:
    """The quality objectives, then their held-out test_* twins: what a claim is about."""
    present = {m for _, e in entries(conf) for m in e["metrics"]}
    prefixes = tuple(ATTR_PREFIX.values())
    quality = [m for m in d.objective_names if m.startswith(prefixes)]
    if not quality:
        quality = [d.prefix + m for m in ("accuracy", "roc_auc")]
    twins = ["test_" + m.split("_", 1)[1] for m in quality]
    return [m for m in dict.fromkeys([*quality, *twins]) if m in present]


def repeat_rows(d: StudyData, conf: dict[str, Any], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per confirmed trial and metric: parameters, mean, std, n, interval, the single search run."""
    by_number = {t.number: t for t in d.trials}
    rows = []
    for number, entry in entries(conf):
        single = by_number.get(int(number))
        for m in metrics:
            s = entry["metrics"].get(m)
            if not s:
                continue
            low, high = s.get("ci95") or ("", "")
            run = d.value(single, m) if single is not None else None
            rows.append({"trial": int(number), **{f"param_{k}": v for k, v in entry["params"].items()},
                         "metric": m, "mean": s["mean"], "std": s["std"], "n": s["n"],
                         "ci95_low": low, "ci95_high": high,
                         "search_run": "" if run is None else run})
    return rows


def figure(d: StudyData, conf: dict[str, Any], metrics: list[str]):
    """Each confirmed trial's mean with its 95% interval, every seed's value, and the search's single run."""
    # Hand-written: the repeats live in a study attribute, not in trials, so no Optuna plot can show them.
    if not metrics:
        raise figures.NotDrawn("no confirmed quality metric")
    items = entries(conf)
    by_number = {t.number: t for t in d.trials}
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = figures.new_figure(max(5.0, 0.9 * len(items) + 2) * ncols, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    labels = [f"{n}: " + ", ".join(str(v) for v in e["params"].values()) for n, e in items]
    for ax, m in zip(axes, metrics):
        for x, (n, e) in enumerate(items):
            s = e["metrics"].get(m)
            if not s:
                continue
            lo, hi = s.get("ci95") or (s["mean"], s["mean"])
            ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", c="tab:blue",
                        capsize=4, label="mean over seeds, 95% interval" if x == 0 else None)
            ax.scatter([x - 0.15] * len(s["by_seed"]), list(s["by_seed"].values()), s=10, c="0.5", zorder=3,
                       label="each seed" if x == 0 else None)
            single = by_number.get(int(n))
            value = d.value(single, m) if single is not None else None
            if value is not None:
                ax.scatter([x + 0.15], [value], marker="x", c="tab:red",
                           label="the search's single run" if x == 0 else None)
        ax.set_xticks(range(len(items)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    seeds = sorted({s for _, e in items for s in e["seeds"]})
    fig.suptitle(figures.title(d, f"confirmed trials over seeds {seeds}"), fontsize=10)
    return fig


def markdown(d: StudyData, conf: dict[str, Any], metrics: list[str], png: Path | None) -> list[str]:
    """The "Repeats" section of summary.md (also printed by the command line)."""
    from search.report.markdown import md_table
    from search.study.repeats import differences, interval

    items = entries(conf)
    lines = ["", "## Repeats (`search.confirm`)", "",
             "Each trial below re-run with other seeds (a new split, subsample and initialization each): "
             f"mean ± std [95% t-interval of the mean]; {d.context}.", ""]
    lines.append(md_table(["trial", "params", "seeds (failed)", *metrics],
                          [[n, ", ".join(f"{k}={v}" for k, v in e["params"].items()),
                            ", ".join(map(str, e["seeds"])) + (f" ({', '.join(e['failed'])})" if e["failed"] else ""),
                            *(interval(e["metrics"][m]) if m in e["metrics"] else "" for m in metrics)]
                           for n, e in items]))
    diffs = differences(conf, metrics)
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
