"""The Optuna objective: suggest -> run the trial in a fresh process -> record -> return objective values.

The objective runs in the coordinating process; the trial itself (trial.py)
runs in a child process via isolate.py, so each trial's memory and crashes
are its own.  Every measure that is not an objective is stored as a user
attribute of the trial.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import psutil

from search import artifacts, signals
from search.config import SEARCHABLE, CategoricalDist, FloatDist, IntDist, StudyConfig
from search.errors import Interrupted, TrialFailed
from search.isolate import Event, run_isolated

OWNER_ATTR = "search:owner"


@dataclass(frozen=True)
class Context:
    config: StudyConfig
    cache_dir: Path
    cache_key: str
    n_classes: int
    target: int
    debug: bool = False
    artifact_dir: Path | None = None  # where trial pictures go (search.artifacts); None: no pictures
    backend: str = "jax"  # the Keras backend of the trial processes (search.head.resolve_backend)


def suggest(trial: optuna.Trial, config: StudyConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, d in config.search_space.items():
        if isinstance(d, FloatDist):
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDist):
            out[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        else:
            assert isinstance(d, CategoricalDist)
            out[name] = trial.suggest_categorical(name, list(d.choices))
    return out


def resolve_params(config: StudyConfig, suggested: dict[str, Any]) -> dict[str, Any]:
    """Every searchable setting's value for this trial: the suggestion, else the config's fixed value."""
    return {name: suggested.get(name, getattr(getattr(config, section), field))
            for name, (section, field) in SEARCHABLE.items()}


def trial_spec(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    c = ctx.config
    return {"cache_dir": str(ctx.cache_dir), "key": ctx.cache_key, "n_classes": ctx.n_classes,
            "params": params, "seed": c.training.seed,
            "reduce_classes": list(c.balance.reduce_classes), "reduce_fraction": c.balance.reduce_fraction,
            "evaluation": c.training.evaluation, "validation_fraction": c.training.validation_fraction}


def mark_owner(trial: optuna.Trial) -> None:
    """Record who runs the trial, so a resume can tell a dead owner from a live one."""
    me = psutil.Process()
    trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, {
        "host": socket.gethostname(), "pid": os.getpid(), "started": me.create_time()})


def _slot_taken(trial: optuna.Trial, target: int) -> bool:
    """True when COMPLETE trials plus earlier-numbered RUNNING ones already fill the target.

    Workers share one target: the lowest-numbered running trials keep their
    slots, so the study ends with exactly ``target`` COMPLETE trials.
    """
    trials = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.RUNNING))
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    ahead = sum(t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number for t in trials)
    return complete + ahead >= target


def set_constraints(trial: optuna.Trial, config: StudyConfig, result: dict[str, Any]) -> None:
    """Budgets as Optuna constraints (feasible when <= 0): measured value minus budget, per budget."""
    budgets = config.constraints.budgets()
    if not budgets:
        return
    values = {metric: float(result[metric]) - budget for metric, budget in budgets.items()}
    if hasattr(trial, "set_constraint"):  # Optuna >= 5
        for metric, value in values.items():
            trial.set_constraint(metric, value)
    else:  # Optuna 4.x reads the list form ("constraints" system attribute) written by constraints_func
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints", list(values.values()))
    trial.set_user_attr("feasible", all(v <= 0 for v in values.values()))


def make_objective(ctx: Context, on_event: Callable[[Event], None]) -> Callable[[optuna.Trial], list[float]]:
    def objective(trial: optuna.Trial) -> list[float]:
        if _slot_taken(trial, ctx.target):
            trial.study.stop()
            raise optuna.TrialPruned("target number of COMPLETE trials already reached or claimed")
        mark_owner(trial)
        try:
            with signals.interruptible():  # owner recorded: from here a signal may stop the trial
                params = resolve_params(ctx.config, suggest(trial, ctx.config))
                trial.set_user_attr("resolved_params", params)
                on_event({"event": "trial", "number": trial.number, "params": params})
                # SEARCH_TRIAL_FN: a stand-in trial for concurrency tests and benchmarks (search.workers:fast_trial).
                outcome = run_isolated(os.environ.get("SEARCH_TRIAL_FN", "search.trial:run_trial"),
                                       trial_spec(ctx, params), on_event, env={"KERAS_BACKEND": ctx.backend},
                                       echo_stderr=ctx.debug)
        except TrialFailed as e:
            trial.set_user_attr("fail_reason", str(e))
            raise
        except Interrupted as e:
            # Optuna fails the trial as the signal unwinds; this marks it for retry (study.fail_own_trials).
            trial.set_user_attr("interrupted", e.signum)
            trial.set_user_attr("fail_reason", str(e))
            raise
        result = {**outcome.result, "peak_memory_mb": outcome.peak_memory_mb,
                  "start_memory_mb": outcome.start_memory_mb}
        for key, value in result.items():
            trial.set_user_attr(key, value)
        set_constraints(trial, ctx.config, result)
        artifacts.upload_trial_pictures(trial, result, ctx)  # never raises: a picture never fails a trial
        return [result[m] for m in ctx.config.metric_names]

    return objective
