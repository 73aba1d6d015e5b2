"""Live progress of a run (rich) and the closing table of Pareto-optimal trials.

On a terminal: a live panel with trials complete / target, elapsed, ETA, the
best value so far of each objective, and the stage of the running trial
(feature extraction, epoch, loss).  Elsewhere (CI, logs): one plain line per
finished trial and per stage change.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from search.study import optuna_compat as compat
from search.study.snapshots import SNAPSHOT_OF, display_note, is_snapshot
from search.study.trials import n_counted


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or (1e-3 <= abs(v) < 1e4):
            return f"{v:.4g}"
        return f"{v:.2e}"
    return str(v)


class Display:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        if not self.console.is_terminal:
            self.console.width = 200  # log lines, not a screen: do not wrap
        self.live: Live | None = None
        self.stage = ""
        self.durations: list[float] = []
        self._trial_start = time.monotonic()
        # Rendered inside our Live panel, never started on its own.  ETA from the rate of COMPLETE
        # trials over the whole run (trials take minutes: rich's default 30 s window would show none).
        self.progress = Progress(TextColumn("[bold]trials"), MofNCompleteColumn(), BarColumn(bar_width=30),
                                 TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, auto_refresh=False, speed_estimate_period=7 * 86400)
        self.task = None
        self.last_counts = ""  # training class counts of the last COMPLETE trial

    # -- lifecycle
    def start(self, study: optuna.Study, target: int, metric_names: list[str]) -> None:
        self.study, self.target, self.metric_names = study, target, metric_names
        self.task = self.progress.add_task("trials", total=target, completed=self._complete())
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()
        else:
            done = self._complete()
            self.console.print(f"study {study.study_name}: {done}/{target} COMPLETE trials at start")

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None

    def message(self, text: str) -> None:
        self.console.print(text)

    # -- events from the objective, the trial process and Optuna
    def on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "trial":
            self._trial_start = time.monotonic()
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in event["params"].items())
            self.stage = f"trial {event['number']}: starting"
            if self.live is None:
                self.console.print(f"trial {event['number']} started: {params}")
            self._refresh()
            return
        stage = event.get("stage", "")
        if "epoch" in event:
            loss = f", loss {event['loss']:.4f}" if event.get("loss") is not None else ""
            stage = f"{stage} epoch {event['epoch']}/{event['epochs']}{loss}"
        elif "total" in event:
            stage = f"{stage} {event['done']}/{event['total']} images{self._eta(event['done'], event['total'])}"
        self.stage = stage
        if self.live is None and ("total" not in event or self._tenth_crossed(event["done"], event["total"])):
            self.console.print(f"  {stage}")
        self._refresh()

    def _eta(self, done: int, total: int) -> str:
        """The time left of a counted stage (feature extraction), from its rate so far."""
        now = time.monotonic()
        if done == 0 or not hasattr(self, "_counted_since"):
            self._counted_since = now
            return ""
        if done >= total:
            return ""
        left = (now - self._counted_since) * (total - done) / done
        return f", ETA {left:.0f} s" if left < 120 else f", ETA {left / 60:.0f} min"

    def _tenth_crossed(self, done: int, total: int) -> bool:
        """Plain output: a line at the start, the end and every 10% (extraction takes minutes)."""
        tenth = 10 * done // max(total, 1)
        crossed = done in (0, total) or tenth > getattr(self, "_last_tenth", -1)
        self._last_tenth = -1 if done == total else tenth
        return crossed

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if is_snapshot(trial):
            return  # an epoch snapshot: its parent's line announces it, and it takes no time of its own
        if trial.state == TrialState.COMPLETE:
            self.durations.append(time.monotonic() - self._trial_start)
            self.last_counts = f"trial {trial.number}{class_counts_text(trial)}"
        if self.live is None:
            if trial.state == TrialState.COMPLETE:
                vals = ", ".join(f"{m}={_fmt(v)}" for m, v in zip(self.metric_names, trial.values))
                self.console.print(f"trial {trial.number} COMPLETE: {vals} "
                                   f"[{self._complete()}/{self.target}]{class_counts_text(trial)}"
                                   f"{display_note(trial)}", highlight=False)
            else:
                reason = trial.user_attrs.get("fail_reason", "")
                note = display_note(trial) if trial.state == TrialState.PRUNED else ""
                self.console.print(f"trial {trial.number} {trial.state.name}" + (f": {reason}" if reason else "")
                                   + note, highlight=False)
        self.stage = ""
        self._refresh()

    # -- rendering
    def _complete(self) -> int:
        return n_counted(self.study)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Group:
        if self.task is not None:
            self.progress.update(self.task, completed=min(self._complete(), self.target))
        best = Table(box=None, show_header=True, pad_edge=False)
        best.add_column("objective")
        best.add_column("best so far")
        for i, (m, d) in enumerate(zip(self.metric_names, self.study.directions)):
            vals = [t.values[i] for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            vals = [v for v in vals if not math.isnan(v)]
            pick = max if d == optuna.study.StudyDirection.MAXIMIZE else min
            best.add_row(f"{m} ({'max' if pick is max else 'min'})", _fmt(pick(vals)) if vals else "-")
        lines = [self.progress, Text(f"now: {self.stage or 'idle'}")]
        if self.last_counts:
            lines.append(Text(f"last: {self.last_counts.replace('; ', ': ', 1)}"))
        return Group(*lines, best)


def class_counts_text(trial: FrozenTrial) -> str:
    """The training class counts of a trial (and after resampling, when that changed them), for log lines."""
    counts = trial.user_attrs.get("train_class_counts")
    if not counts:
        return ""
    out = f"; train classes {counts}"
    fit = trial.user_attrs.get("fit_class_counts")
    if fit and fit != counts:
        out += f" -> {trial.user_attrs.get('handling', 'resampled')} {fit}"
    return out


def pareto_table(study: optuna.Study, metric_names: list[str]) -> Table:
    """The Pareto-optimal COMPLETE trials with their parameters and the main measures, each naming its split."""
    trials = sorted(study.best_trials, key=lambda t: t.number)
    split = study.user_attrs.get("search:objective_split", "test")
    table = Table(title=f"Pareto-optimal trials of {study.study_name} (objectives on the {split} split)")
    params = sorted({k for t in trials for k in t.params})
    if any(is_snapshot(t) for t in trials):
        params.append(SNAPSHOT_OF)  # which trial's epoch this point is (its params say the epoch)
    shown = [f"{p}_{m}" for p in ("val", "test") for m in ("accuracy", "f1", "roc_auc")]
    extra = [m for m in (*shown, "train_time_s", "test_time_s", "peak_memory_mb", "trial_memory_mb")
             if m not in metric_names and any(m in t.user_attrs for t in trials)]
    for col in ["trial", *params, *metric_names, *extra]:
        table.add_column(col, justify="right")
    for t in trials:
        table.add_row(str(t.number),
                      *(_fmt(t.user_attrs.get(p, "") if p == SNAPSHOT_OF else t.params.get(p, "")) for p in params),
                      *(_fmt(v) for v in t.values), *(_fmt(t.user_attrs.get(m, "")) for m in extra))
    return table


class PoolDisplay(Display):
    """The display of ``--workers N``: fed by polling the storage (``poll``), not by one objective's events."""

    def __init__(self, n_workers: int, console: Console | None = None):
        super().__init__(console)
        self.n_workers = n_workers

    def start(self, study: optuna.Study, target: int, metric_names: list[str]) -> None:
        self._announced: set[int] = set()
        self._ended = {compat.trial_id(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        super().start(study, target, metric_names)

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        running = []
        for t in sorted(trials, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number)):
            tid = compat.trial_id(t)
            if t.state == TrialState.RUNNING:
                running.append(t.number)
                if tid not in self._announced and "resolved_params" in t.user_attrs:
                    self._announced.add(tid)
                    self.on_event({"event": "trial", "number": t.number, "params": t.user_attrs["resolved_params"]})
            elif t.state.is_finished() and tid not in self._ended:
                self._ended.add(tid)
                if t.state == TrialState.PRUNED and tid not in self._announced:
                    continue  # a worker found the target already claimed: no news
                if is_snapshot(t):
                    continue  # an epoch snapshot: announced with its parent, no trial time of its own
                took = (t.duration.total_seconds() if t.duration else 0.0) / max(1, self.n_workers)
                self._trial_start = time.monotonic() - took  # Display's ETA: per-trial time / workers
                self.on_trial_end(self.study, t)
        self.stage = f"{len(running)} running: trial(s) {', '.join(map(str, sorted(running)))}" if running else ""
        self._refresh()


def interrupted_line(e: Exception, retried: list[int], done: int, target: int) -> str:
    """What an interrupted run says last: which trials will be retried, and how to resume."""
    what = f"trial(s) {', '.join(map(str, retried))} recorded as failed and queued for retry; " if retried else ""
    return f"{e}: {what}{done}/{target} COMPLETE; run the same command to resume"


def print_pareto(study: optuna.Study, metric_names: list[str]) -> None:
    """The closing table of Pareto-optimal trials on stdout (none when there are none)."""
    if study.best_trials:
        Console(width=None if sys.stdout.isatty() else 200).print(pareto_table(study, metric_names))
