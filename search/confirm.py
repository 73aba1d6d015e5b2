"""Command line: ``python -m search.confirm --study NAME --seeds 5`` repeats chosen trials with other seeds.

Re-runs each Pareto-optimal trial's parameters (or the trials named with
``--trials``, or ``--all`` COMPLETE trials; an epoch snapshot re-trains with its
own ``epochs``) with seeds ``study seed + 1 .. + N``, each in its own process
like any trial, stores every run (search.study.repeats), and prints per trial and
measure the mean, standard deviation and 95% t-interval, then the differences
between confirmed trials one parameter apart, paired by seed.  The study's
trials (what the sampler saw) are not changed.  The features must be in the
cache that ``search.run`` filled (same ``--cache-dir``); they are verified
before use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from search import api
from search.errors import UsageError, cli_main
from search.study.repeats import interval


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.confirm", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="Optuna study name in --storage")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: $SEARCH_STORAGE, else sqlite:///studies.db)")
    p.add_argument("--seeds", type=int, default=5, help="repeats per trial (default 5)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trials", help="comma-separated trial numbers to confirm (default: the Pareto set)")
    which.add_argument("--all", action="store_true", help="confirm every COMPLETE trial")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: ~/.cache/optuna-tl-search/features)")
    p.add_argument("--debug", action="store_true", help="tracebacks and the trial processes' output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli_main(_run, parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    done = api.confirm_study(args.study, args.storage, trials=_trial_numbers(args.trials),
                             all_trials=args.all,
                             seeds=args.seeds, cache_dir=args.cache_dir, debug=args.debug,
                             on_line=lambda line: print(line, file=sys.stderr))
    _print(done.study_name, done.summary, done.metric_names)
    return 0


def _trial_numbers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--trials: expected comma-separated trial numbers, got {text!r}") from None


def _print(name: str, summary: dict[str, Any], metric_names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from search.study.repeats import differences

    table = Table(title=f"{name}: confirmed trials (mean ± std [95% interval] over the seeds run)")
    cols = list(dict.fromkeys([*metric_names, "test_balanced_accuracy", "test_reduced_recall", "test_accuracy"]))
    for c in ("trial", "params", "seeds", *cols):
        table.add_column(c, justify="right" if c != "params" else "left")
    for number, entry in summary["trials"].items():
        m = entry["metrics"]
        failed = f" (failed: {', '.join(entry['failed'])})" if entry["failed"] else ""
        table.add_row(number, ", ".join(f"{k}={v}" for k, v in entry["params"].items()),
                      f"{len(entry['seeds']) - len(entry['failed'])}{failed}",
                      *(interval(m[c]) if c in m else "-" for c in cols))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    diffs = differences(summary, cols)
    if diffs:
        t = Table(title="Trials one parameter apart: difference of means (b - a), 95% interval, paired by seed")
        for c in ("metric", "parameter", "a", "b", "difference", "95% interval", "test", "verdict"):
            t.add_column(c)
        for d in diffs:
            note = f"; seeds in one arm only: {', '.join(d.missing)}" if d.missing else ""
            t.add_row(d.metric, d.param, f"{d.a_value} (trial {d.a})", f"{d.b_value} (trial {d.b})",
                      f"{d.diff:+.4g}", f"[{d.low:+.4g}, {d.high:+.4g}]", f"{d.test}, n={d.n}{note}", d.verdict)
        console.print(t)


if __name__ == "__main__":
    sys.exit(main())
