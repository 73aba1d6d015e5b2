"""The whole report of one study, written into a temporary directory and moved into place whole.

An earlier report in the target directory is replaced, never mixed with the new one: a figure the
new report cannot draw does not survive from the old.  The default target ``reports/<study name>``
never leaves ``reports/``.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from search.errors import SearchError, UsageError
from search.report import figures, markdown, paper, repeats, tables
from search.report.load import StudyData

REPORTS = Path("reports")
MARKER = "summary.md"  # what makes a directory an earlier report that may be replaced
T = TypeVar("T")


def default_out(study_name: str, root: Path = REPORTS) -> Path:
    """``reports/<study name>``; a name that would leave ``reports/`` is a ``UsageError``."""
    why = ""
    if not study_name:
        why = "it is empty"
    elif study_name.startswith("."):
        why = "it starts with a dot"
    elif any(c in study_name for c in "/\\\0"):
        why = "it contains a path separator"
    out = root / study_name
    if not why and out.resolve().parent != root.resolve():
        why = "it leaves reports/"
    if why:
        raise UsageError(f"--study: the study name {study_name!r} cannot be a directory in reports/ ({why}); "
                         f"pass --out DIR")
    return out


def check_out(out: Path) -> None:
    """Refuse a target that is not a directory this report may replace: a file, a directory holding something
    other than an earlier report, or a directory holding the working directory."""
    if out.is_symlink():
        raise UsageError(f"--out: {out} is a symbolic link; name the directory itself")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a directory")
    if out.is_dir():
        here = Path.cwd().resolve()
        if out.resolve() == here or out.resolve() in here.parents:
            raise UsageError(f"--out: {out} holds the working directory; name a directory for the report")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise UsageError(f"--out: {out} is not empty and holds no earlier report ({MARKER}); "
                             f"name a new directory or an earlier report's")


def replace_dir(out: Path, build: Callable[[Path], T]) -> T:
    """Run ``build(tmp)`` on a new directory beside ``out``, then put it in ``out``'s place.

    On any failure (or Ctrl-C) the temporary directory is removed and ``out`` is left as it was; a
    file-system error (disk full, no permission) is a ``SearchError``.
    """
    check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.new-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise UsageError(f"--out: cannot create {out}: {e.strerror}") from None
    try:
        result = build(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise SearchError(f"--out: cannot write the report to {out}: {e.strerror or e}") from None
        raise
    return result


@dataclass
class Report:
    """What ``write_report`` wrote (paths under the final directory) and what the command line prints."""

    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)     # figure stem -> why it was not drawn
    repeats: list[str] | None = None                         # the repeats section's lines
    paper: tuple[list[paper.Comparison], list[str]] | None = None
    paper_note: str = ""

    @property
    def n_figures(self) -> int:
        return sum(1 for p in self.files.values() if p.suffix == ".png")


def write_report(d: StudyData, out: Path, *, with_paper: bool = False) -> Report:
    """Write the whole report of ``d`` into ``out`` (replacing an earlier report there) and say what it holds."""
    report = Report(out=out)

    def build(tmp: Path) -> Report:
        files: dict[str, Path] = {}
        files["trials_csv"] = tables.write_csv(tmp / "trials.csv", *tables.trial_rows(d, d.trials))
        files["pareto_csv"] = tables.write_csv(tmp / "pareto.csv", *tables.trial_rows(d, d.pareto))
        captions: dict[str, str] = {}
        for stem, fig in figures.draw(d).items():
            if isinstance(fig, str):
                report.notes[stem] = fig
            else:
                files[stem] = figures.save(fig, tmp / f"{stem}.png")
        if "hypervolume" in files:
            captions["hypervolume"] = f"({figures.reference_text(d, figures.hypervolume_reference(d))})"
        if "pareto_pairs" in files and d.snapshots:
            captions["pareto_pairs"] = (" On accuracy against training time, a line joins each trained trial "
                                        "with its per-epoch snapshots.")

        conf = repeats.confirmed(d)
        if conf is not None:
            metrics = repeats.repeat_metrics(d, conf)
            rows = repeats.repeat_rows(d, conf, metrics)
            files["repeats_csv"] = tables.write_csv(tmp / "repeats.csv", list(dict.fromkeys(k for r in rows for k in r)),
                                                    rows)
            png = _try(lambda: figures.save(repeats.figure(d, conf, metrics), tmp / "repeats.png"), report.notes,
                       "repeats")
            if png is not None:
                files["repeats"] = png
            report.repeats = repeats.markdown(d, conf, metrics, png)

        if with_paper:
            table = paper.load_paper()
            key = paper.paper_key(d, table)
            if key is None:
                report.paper_note = (f"Study `{d.name}` does not mirror a table of the paper; the studies that do "
                                     f"are {', '.join(table['studies'])}.")
            else:
                report.paper = paper.compare(d, table, key)
                rows = report.paper[0]
                files["paper_csv"] = tables.write_csv(tmp / "paper_comparison.csv", paper.COLUMNS,
                                                      [r.csv_row() for r in rows])
                png = _try(lambda: figures.save(paper.figure(d, rows), tmp / "paper_comparison.png"),
                           report.notes, "paper_comparison")
                if png is not None:
                    files["paper_comparison"] = png

        files["summary"] = tmp / "summary.md"
        files["summary"].write_text(markdown.summary_md(d, files, report.notes, captions, report.paper,
                                                        report.paper_note, report.repeats))
        report.files = {k: out / p.name for k, p in files.items()}
        return report

    return replace_dir(out, build)


def _try(step: Callable[[], Any], notes: dict[str, str], stem: str) -> Any:
    try:
        return step()
    except figures.NotDrawn as e:
        notes[stem] = str(e)
        return None
