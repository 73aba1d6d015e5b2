"""The comparison with the paper: ``search/paper.toml`` and our values next to the paper's.

A study mirrors a paper table when its config name (or its name, less a weights suffix) is one of
``paper.toml``'s ``[studies]``.  Per table row, "ours" is the mean over the study's COMPLETE trials
whose settings match the row, of the trial attribute ``[metrics]`` names for the paper's measure (the
held-out test split, as the paper; the AUC flavour said beside each number).  Quality metrics within
``AGREE_TOLERANCE`` agree; times and memory are shown as ratios (other hardware, cached features).
Trends say whether the paper's claims (first -> last setting, the best setting) go the same way here.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.report import figures
from search.report.load import StudyData

PAPER_FILE = Path(__file__).resolve().parent.parent / "paper.toml"
AGREE_TOLERANCE = 0.02  # |ours - paper| on a 0..1 metric within which we call it agreement
COLUMNS = ["table", "setting", "metric", "ours measured as", "paper", "ours", "n", "difference", "verdict", "note"]


def load_paper(path: Path = PAPER_FILE) -> dict[str, Any]:
    """``paper.toml`` as a dict."""
    return tomllib.loads(path.read_text())


def paper_key(d: StudyData, paper: dict[str, Any]) -> str | None:
    """The paper study a stored study mirrors: its config name, else its name without a weights suffix."""
    for name in (d.config.get("name"), d.name, d.name.rsplit("-", 1)[0]):
        if name and name in paper["studies"]:
            return name
    return None


def matches(settings: dict[str, Any], match: dict[str, Any]) -> bool:
    """Whether a trial's settings satisfy a row's ``match`` (see the head of paper.toml)."""
    for key, want in match.items():
        have = settings.get(key)
        if have is None:
            return False
        numeric = isinstance(have, (int, float)) and not isinstance(have, bool)
        if isinstance(want, list):
            if not (numeric and want[0] <= have <= want[1]):
                return False
        elif isinstance(want, str) and want.startswith(">"):
            if not (numeric and have > float(want[1:])):
                return False
        elif isinstance(want, (int, float)) and not isinstance(want, bool):
            if not (numeric and math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)):
                return False
        elif have != want:
            return False
    return True


@dataclass
class Comparison:
    """One paper number next to ours."""

    table: str
    setting: str
    metric: str          # the paper's measure (a key of paper.toml's [metrics])
    attr: str            # the trial attribute it is compared with
    label: str           # what that attribute is (the AUC flavour)
    kind: str            # "quality" or "resource"
    paper: float
    ours: float | None
    n: int               # matching COMPLETE trials
    notes: tuple[str, ...] = ()  # where the paper contradicts itself on this row, then on this number

    @property
    def note(self) -> str:
        return " ".join(self.notes)

    @property
    def measured_as(self) -> str:
        return f"{self.attr}: {self.label}"

    @property
    def diff(self) -> float | None:
        return None if self.ours is None else self.ours - self.paper

    @property
    def verdict(self) -> str:
        if self.ours is None:
            return "not run"
        if self.kind == "quality":
            if abs(self.diff) <= AGREE_TOLERANCE:
                return "agrees"
            return "ours higher" if self.diff > 0 else "ours lower"
        return f"ours x{self.ours / self.paper:.2g}" if self.paper else "-"

    def csv_row(self) -> dict[str, Any]:
        return {"table": self.table, "setting": self.setting, "metric": self.metric,
                "ours measured as": self.measured_as, "paper": self.paper,
                "ours": "" if self.ours is None else self.ours, "n": self.n,
                "difference": "" if self.diff is None else self.diff, "verdict": self.verdict, "note": self.note}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def compare(d: StudyData, paper: dict[str, Any], key: str) -> tuple[list[Comparison], list[str]]:
    """Every paper number of study ``key``'s tables next to ours, and the trend lines."""
    spec = paper["studies"][key]
    match_field = spec.get("match", "match")
    rows: list[Comparison] = []
    trends: list[str] = []
    for tname in spec["tables"]:
        table = paper[tname]
        title = table["title"].split(":")[0]
        per_setting: list[tuple[str, dict[str, float], dict[str, float | None]]] = []
        for row in table["rows"]:
            if row["dataset"] != spec["dataset"]:
                continue
            matching = [t for t in d.complete if matches(d.settings(t), row[match_field])]
            ours: dict[str, float | None] = {}
            for m in table["metrics"]:
                meta = paper["metrics"][m]
                ours[m] = _mean([d.value(t, meta["attr"]) for t in matching])
                notes = tuple(x for x in (row.get("note", ""), row.get("notes", {}).get(m, "")) if x)
                rows.append(Comparison(title, row["setting"], m, meta["attr"], meta["label"], meta["kind"],
                                       row["values"][m], ours[m], len(matching), notes))
            per_setting.append((row["setting"], row["values"], ours))
        kinds = {m: paper["metrics"][m]["kind"] for m in table["metrics"]}
        trends += trend_lines(title, table, per_setting, kinds)
    return rows, trends


def _direction(change: float) -> str:
    return "up" if change > 0 else "down" if change < 0 else "no change"


def trend_verdict(paper_change: float, our_change: float) -> str:
    """Whether two changes go the same way; a change of exactly 0 is "no change", never "opposite"."""
    if paper_change == 0:
        return "no change in the paper"
    if our_change == 0:
        return "no change here"
    return "same direction" if (paper_change > 0) == (our_change > 0) else "OPPOSITE direction"


def trend_lines(title: str, table: dict[str, Any], per: list[tuple[str, dict, dict]],
                kinds: dict[str, str]) -> list[str]:
    """The table's trend (``first_last`` or ``best``) per metric, ours against the paper's."""
    out: list[str] = []
    if len(per) < 2:
        return out
    if table.get("trend") == "first_last":
        for m in table["metrics"]:
            # The first and last settings the study measured, so a partial grid still shows its trend.
            measured = [r for r in per if r[2][m] is not None]
            if len(measured) < 2:
                change = per[-1][1][m] - per[0][1][m]
                out.append(f"{title}, {m}: paper {per[0][0]} -> {per[-1][0]} {change:+.4g} "
                           f"({_direction(change)}); ours measured on {len(measured)} setting(s), no trend")
                continue
            (a, pa, oa), (b, pb, ob) = measured[0], measured[-1]
            dp, do = pb[m] - pa[m], ob[m] - oa[m]
            out.append(f"{title}, {m}, {a} -> {b}: paper {dp:+.4g}, ours {do:+.4g} ({trend_verdict(dp, do)})")
    elif table.get("trend") == "best":
        for m in (m for m in table["metrics"] if kinds[m] == "quality"):
            paper_best = max(per, key=lambda r: r[1][m])[0]
            measured = [r for r in per if r[2][m] is not None]
            if not measured:
                out.append(f"{title}, best {m}: paper {paper_best}; ours: no matching trials")
                continue
            ours_best = max(measured, key=lambda r: r[2][m])[0]
            if paper_best not in {r[0] for r in measured}:
                verdict = "the paper's best not run here"
            else:
                verdict = "same" if ours_best == paper_best else "DIFFERENT"
            out.append(f"{title}, best {m}: paper {paper_best}, ours {ours_best} "
                       f"({verdict}; ours over {len(measured)} of {len(per)} settings with trials)")
    return out


def figure(d: StudyData, rows: list[Comparison]):
    """Paper and ours side by side for every quality number; * marks a number the paper contradicts."""
    # Hand-written: the paper's numbers are not trials, so no Optuna plot can show them.
    import numpy as np

    q = [r for r in rows if r.kind == "quality"]
    if not q:
        raise figures.NotDrawn("the mirrored tables hold no quality metrics")
    tables = list(dict.fromkeys(r.table for r in q))
    fig = figures.new_figure(max(7.0, 1.1 * len(q) / len(tables) + 2), 4.2 * len(tables) + 0.8)
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
        ax.set_xticks(x, [f"{r.setting}\n{r.metric}{' *' if r.note else ''}" for r in tr], fontsize=7,
                      rotation=60, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(table)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(figures.title(d, "our measurements (held-out test split) next to the paper's; "
                                  "* the paper contradicts itself here (see the notes in summary.md)"), fontsize=10)
    return fig
