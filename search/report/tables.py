"""The rows of ``trials.csv`` and ``pareto.csv``, and CSV writing.

One row per trial: state, Pareto membership, objective values, parameters, every
scalar user attribute (split-prefixed quality metrics first: ``val_*``, then
``test_*``, then resources and context), the per-class recall of each split
named by class, start time, duration and fail reason.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from search.report.load import ATTR_PREFIX, StudyData

# Written as their own columns (fail_reason) or expanded per class (the recall lists).
_OWN_COLUMNS = {"fail_reason"}


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


def attr_columns(d: StudyData, trials: list[Any]) -> list[str]:
    """Scalar user attributes present on any of ``trials``: val_*, then test_*, then the rest.

    Within each group in the order the trials wrote them, so no list of names has to be kept here.
    """
    seen: dict[str, None] = {}
    for t in trials:
        for k, v in d.attrs(t).items():
            if isinstance(v, (bool, int, float, str)) and k not in _OWN_COLUMNS and k not in d.objective_names:
                seen.setdefault(k, None)
    prefixes = tuple(ATTR_PREFIX.values())
    groups = [[k for k in seen if k.startswith(p)] for p in prefixes]
    return [*groups[0], *groups[1], *(k for k in seen if not k.startswith(prefixes))]


def recall_columns(d: StudyData, trials: list[Any]) -> list[tuple[str, str, int]]:
    """(column, attribute, index) of each split's per-class recall, columns named by class."""
    out = []
    for prefix in ATTR_PREFIX.values():
        attr = f"{prefix}per_class_recall"
        n = max((len(d.attrs(t).get(attr) or []) for t in trials), default=0)
        names = d.class_names if len(d.class_names) == n else [str(i) for i in range(n)]
        out += [(f"{prefix}recall_{c}", attr, i) for i, c in enumerate(names)]
    return out


def trial_rows(d: StudyData, trials: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of ``trials``: one row each, in the order given."""
    pareto = {t.number for t in d.pareto}
    param_cols = [p if p not in d.objective_names else f"param_{p}" for p in d.params]
    attrs = attr_columns(d, trials)
    recalls = recall_columns(d, trials)
    cols = ["number", "state", "pareto", *d.objective_names, *param_cols, *attrs, *(c for c, _, _ in recalls),
            "datetime_start", "duration_s", "fail_reason"]
    rows = []
    for t in trials:
        a = d.attrs(t)
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "pareto": t.number in pareto}
        for name, v in zip(d.objective_names, t.values or [None] * len(d.objective_names)):
            row[name] = _cell(v)
        for col, p in zip(param_cols, d.params):
            row[col] = t.params.get(p, "")
        for k in attrs:
            row[k] = _cell(a.get(k))
        for col, attr, i in recalls:
            values = a.get(attr) or []
            row[col] = _cell(values[i]) if i < len(values) else ""
        row["datetime_start"] = t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else ""
        row["duration_s"] = round(t.duration.total_seconds(), 3) if t.duration else ""
        row["fail_reason"] = a.get("fail_reason", "")
        rows.append(row)
    return cols, rows


def write_csv(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts) under the header ``cols``; a missing key is an empty cell."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    return path
