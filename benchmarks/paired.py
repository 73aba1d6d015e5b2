"""``python -m benchmarks.paired OLD NEW``: the same trials in two stored studies, side by side.

Two runs of one seeded study (e.g. two ``python -m benchmarks.study --keep DIR`` runs, before and after a
change) draw the same parameters until the sampler's draws depend on measured times.  The trials with the
same number and the same parameters in both are a paired sample: their ``fit`` times say how fast the two
machines (or sessions) trained, and the rest of each trial's time says what the change did outside ``fit``,
free of TPE's different later draws.  Reads the studies only.

    python -m benchmarks.paired OLD/studies.db NEW/studies.db   # two runs of benchmarks.study --keep DIR
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

MEASURES = ("train_time_s", "eval_time_s", "test_time_s")


def trials(url: str, name: str | None) -> dict[int, dict[str, Any]]:
    """Number -> parameters and times of every COMPLETE trial that is not an epoch snapshot."""
    import optuna

    from search.study import storage
    from search.study.snapshots import is_snapshot

    st = storage.open_existing(url if "://" in url else f"sqlite:///{Path(url).resolve()}")
    names = optuna.get_all_study_names(st)
    study = storage.load_study(st, name or (names[0] if len(names) == 1 else "fmnist_reg-random"))
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if is_snapshot(t):
            continue
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        out[t.number] = {"params": t.params, "wall": wall, **{m: t.user_attrs.get(m) for m in MEASURES}}
    return out


def paired(old: dict[int, dict[str, Any]], new: dict[int, dict[str, Any]]) -> list[int]:
    return sorted(n for n in old.keys() & new.keys() if old[n]["params"] == new[n]["params"])


def summary(old: dict[int, dict[str, Any]], new: dict[int, dict[str, Any]]) -> str:
    both = paired(old, new)
    if not both:
        return "no trial has the same number and parameters in both studies"

    def mean(side: dict[int, dict[str, Any]], f) -> float:
        return statistics.fmean(f(side[n]) for n in both)

    rows = [("fit (train_time_s), mean", lambda t: t["train_time_s"]),
            ("per-epoch evaluation (eval_time_s), mean", lambda t: t["eval_time_s"] or 0.0),
            ("final prediction (test_time_s), mean", lambda t: t["test_time_s"]),
            ("outside fit (wall - train_time_s), mean", lambda t: t["wall"] - t["train_time_s"]),
            ("trial wall time, mean", lambda t: t["wall"])]
    lines = [f"{len(both)} paired trials (numbers {', '.join(map(str, both))}: same parameters in both)", "",
             "| per trial | old | new | new / old |", "|---|---|---|---|"]
    for label, f in rows:
        a, b = mean(old, f), mean(new, f)
        lines.append(f"| {label} | {a:.2f} s | {b:.2f} s | {b / a:.3f} |" if a else f"| {label} | {a:.2f} s | "
                     f"{b:.2f} s | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__.splitlines()[0])
    p.add_argument("old", help="storage URL or SQLite path of the earlier study")
    p.add_argument("new", help="storage URL or SQLite path of the later study")
    p.add_argument("--study", help="study name in both (default: the only one, else fmnist_reg-random)")
    a = p.parse_args(argv)
    print(summary(trials(a.old, a.study), trials(a.new, a.study)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
