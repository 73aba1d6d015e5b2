"""Command line: ``python -m search.report --study NAME`` writes a study's results as CSV, PNG figures and Markdown.

Prints the context (split, Keras backend, weights; a warning first when the weights are not ImageNet's)
and the Pareto set, and writes to ``--out`` (default ``reports/<study>/``), replacing an earlier report
there whole: ``trials.csv``, ``pareto.csv``, ``summary.md`` and the figures (``pareto_pairs.png``,
``hypervolume.png``, ``param_importances.png``, ``accuracy_auc_vs_params.png``, ``learning_curves.png``,
``regularization.png``); a confirmed study also ``repeats.csv`` and ``repeats.png``; with ``--paper``,
a study that mirrors one of the paper's tables also ``paper_comparison.csv`` and ``.png``.

Errors are one line ``error: ...`` (exit 2 for usage, 1 at run time); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.errors import SearchError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.report",
                                description="Write a study's results as CSV, PNG figures and Markdown "
                                            "(into reports/<study>/ unless --out says otherwise).")
    p.add_argument("--study", required=True, help="Optuna study name (as printed by search.run)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///studies.db)")
    p.add_argument("--out", type=Path, help="output directory (default: reports/<study>); an earlier report "
                                            "there is replaced")
    p.add_argument("--paper", action="store_true",
                   help="compare with the paper's Tables 7-10 (studies fmnist_balance, cifar10_balance, "
                        "fmnist_splits, cifar10_splits, fmnist_reg, fmnist_reg_paper)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SearchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted; no report written", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    from search.report.load import load
    from search.report.write import check_out, default_out, write_report

    # The target is checked before the storage is opened: a refused one costs nothing and creates nothing.
    out = args.out if args.out is not None else default_out(args.study)
    check_out(out)
    import matplotlib

    matplotlib.use("Agg")
    d = load(args.study, args.storage)
    try:
        if not d.trials:
            raise SearchError(f"study {d.name!r} has no trials yet; run `python -m search.run --study ...` first")
        console = _console()
        if d.weights_warning:
            console.print(d.weights_warning, highlight=False, markup=False)
        console.print(f"study {d.name}: {d.context}", highlight=False, markup=False)
        _print_pareto(console, d)
        report = write_report(d, out, with_paper=args.paper)
    finally:
        d.close()
    if report.repeats:
        console.print("\n".join(report.repeats), highlight=False, markup=False)
    if report.paper_note:
        console.print(f"--paper: {report.paper_note}", highlight=False, markup=False)
    if report.paper is not None:
        _print_paper(console, d, report.paper)
    console.print(f"report: {report.files['summary']} ({len(d.trials)} trials, {report.n_figures} figures)",
                  highlight=False, markup=False)
    return 0


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


def _print_pareto(console, d) -> None:
    from rich.table import Table

    from search.report.markdown import fmt, pareto_cells

    if not d.pareto:
        console.print(f"study {d.name}: no COMPLETE trials yet", highlight=False)
        return
    cols, rows = pareto_cells(d)
    table = Table(title=f"Pareto-optimal trials of {d.name}")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*(fmt(v) for v in r))
    console.print(table)


def _print_paper(console, d, result) -> None:
    from rich.table import Table

    from search.report.markdown import fmt

    rows, trends = result
    if d.weights_warning:
        console.print(d.weights_warning, highlight=False, markup=False)
    t = Table(title=f"{d.name} against the paper (ours: held-out test split; {d.backend_text})")
    for col in ("table", "setting", "metric", "ours measured as", "paper", "ours", "n", "difference", "verdict",
                "note"):
        t.add_column(col, justify="left" if col in ("ours measured as", "note") else "right")
    # On a terminal the notes would swamp the table: a number beside each value, the text below.
    notes: dict[str, int] = {}
    for r in rows:
        ref = "".join(f"[{notes.setdefault(text, len(notes) + 1)}]" for text in r.notes)
        t.add_row(r.table, r.setting, r.metric, r.measured_as, fmt(r.paper), fmt(r.ours), str(r.n), fmt(r.diff),
                  r.verdict, ref)
    console.print(t)
    for text, n in notes.items():
        console.print(f"  [{n}] {text}", highlight=False, markup=False)
    for line in trends:
        console.print(f"  {line}", highlight=False, markup=False)
