"""The Optuna objective: suggest -> run the trial (in a fresh process) -> record -> return the objective values.

The objective runs in the coordinating process; the trial itself
(search.trial.child) runs in a child process through the context's runner, so each
trial's memory and crashes are its own.  Every measure that is not an
objective is stored as a user attribute of the trial, named with its split
(``val_*``, ``test_*``).  A trial failed by another process while it ran (a
stale-heartbeat sweep) keeps its result: it is recorded on the retry that the
sweep queued (search.study.trials.record_taken_over).  With ``run.epoch_snapshots``
the trial's shorter schedules are recorded as COMPLETE trials of their own,
and a trial that early stopping ended at a rung is PRUNED (search.study.snapshots).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna

from search import signals
from search.config import SEARCHABLE, CategoricalDist, FloatDist, IntDist, StudyConfig
from search.config.spec import Pictures, TrialParams, TrialSpec
from search.errors import Interrupted, TrialFailed
from search.isolate import Event, Outcome, run_isolated
from search.study import artifacts, optuna_compat as compat, snapshots
from search.study.trials import Heartbeat, TakenOver, counted, mark_owner, record_taken_over, taken_over
from search.training.augment import trial_backend
from search.trial import epochs

TRIAL_TARGET = "search.trial.child:run_trial"
TIMEOUT_FACTOR = 10  # default trial time limit: this many times the slowest COMPLETE trial

# runner(spec, on_event, timeout_s) -> Outcome: how a trial is run (default: a fresh process, run_isolated).
TrialRunner = Callable[[dict[str, Any], Callable[[Event], None], float | None], Outcome]


@dataclass(frozen=True)
class Context:
    config: StudyConfig
    cache_dir: Path
    cache_key: str
    n_classes: int
    target: int
    class_names: tuple[str, ...] = ()
    debug: bool = False
    artifact_dir: Path | None = None   # where trial pictures go (search.study.artifacts); None: no pictures
    backend: str = "jax"               # the Keras backend of the trial processes (search.runtime.resolve_backend)
    weights: str = ""                  # the weights' identity, for picture titles
    cpus: tuple[int, ...] | None = None  # cores each trial process may use (None: all)
    heartbeat_s: float = 10.0
    trial_target: str = TRIAL_TARGET    # "module:function" a trial process runs
    runner: TrialRunner | None = None   # None: run_isolated(trial_target, ...) in a fresh process
    extra_spec: dict[str, Any] = field(default_factory=dict)
    # "backbone@input_size" -> cache key, when trials can use several (a searched backbone); else cache_key.
    cache_keys: dict[str, str] = field(default_factory=dict)

    def run(self, spec: TrialSpec, on_event: Callable[[Event], None], timeout: float | None) -> Outcome:
        if self.runner is not None:
            return self.runner(spec.as_dict(), on_event, timeout)
        # An online-augmented trial runs on the extraction backend (search.training.augment.trial_backend).
        env = {"KERAS_BACKEND": trial_backend(spec, self.backend)}
        return run_isolated(self.trial_target, spec.as_dict(), on_event, env=env, echo_stderr=self.debug,
                            cpus=self.cpus, timeout=timeout, prestart=True)


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
    """Every searchable setting's value for this trial: the suggestion, else the arm's, else the config's."""
    arm = config.arms.get(suggested.get("arm"), {})
    out = {name: suggested.get(name, arm.get(name, getattr(getattr(config, section), field)))
           for name, (section, field) in SEARCHABLE.items()}
    if "arm" in suggested:
        out["arm"] = suggested["arm"]
    return out


def trial_spec(ctx: Context, params: dict[str, Any], number: int | None = None) -> TrialSpec:
    """The job a trial process gets (search.trial.child.run_trial), from resolved parameters (``resolve_params``)."""
    c = ctx.config
    pictures = None
    if ctx.artifact_dir is not None:
        pictures = Pictures(f"trial {number}" if number is not None else "trial", ctx.backend, ctx.weights)
    p = TrialParams(**params)
    return TrialSpec(
        cache_dir=str(ctx.cache_dir), key=ctx.cache_keys.get(f"{p.backbone}@{p.input_size}", ctx.cache_key),
        n_classes=ctx.n_classes,
        class_names=tuple(ctx.class_names) or tuple(str(i) for i in range(ctx.n_classes)),
        params=p, seed=c.training.seed, reduce_classes=tuple(c.balance.reduce_classes),
        reduce_fraction=c.balance.reduce_fraction, evaluation=c.training.evaluation,
        validation_fraction=c.training.validation_fraction, augmentation=c.augmentation.model_dump(mode="json"),
        curve_rows=c.run.curve_rows, pictures=pictures, **ctx.extra_spec)


def _slot_taken(trial: optuna.Trial, target: int) -> bool:
    """True when COMPLETE trials plus earlier-numbered RUNNING ones already fill the target.

    Workers share one target: the lowest-numbered running trials keep their
    slots, so the study ends with exactly ``target`` COMPLETE trials.
    """
    trials = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.RUNNING))
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE and counted(t) for t in trials)
    ahead = sum(t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number for t in trials)
    return complete + ahead >= target


def skip(trial: optuna.Trial, reason: str) -> None:
    """End a trial that Optuna created but that has nothing to run, saying why (the dashboard shows ``reason``)."""
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def duplicate_of(trial: optuna.Trial, params: dict[str, Any]) -> int | None:
    """In a grid study: the number of another trial that already holds (or is running) these parameters."""
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.RUNNING)):
        if t.number == trial.number or not counted(t):
            continue
        same = t.params == params
        if same and (t.state == optuna.trial.TrialState.COMPLETE or t.number < trial.number):
            return t.number
    return None


def retried_by(trial: optuna.Trial) -> int | None:
    """For a retry: another copy of the same failed trial that is COMPLETE or RUNNING with a lower number."""
    history = trial.storage.get_trial_system_attrs(compat.trial_id(trial)).get("retry_history")
    if not history:
        return None
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.RUNNING)):
        if t.number != trial.number and t.system_attrs.get("retry_history") == history and (
                t.state == optuna.trial.TrialState.COMPLETE or t.number < trial.number):
            return t.number
    return None


def trial_timeout(study: optuna.Study, config: StudyConfig) -> float | None:
    """run.trial_timeout, else 10x the slowest COMPLETE trial so far (none before the first)."""
    if config.run.trial_timeout is not None:
        return config.run.trial_timeout
    # A result kept for a trial failed by another process (recovered_from) was recorded, not run, in its time.
    durations = [t.duration.total_seconds() for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.duration and counted(t) and "recovered_from" not in t.user_attrs]
    return TIMEOUT_FACTOR * max(durations) if durations else None


def set_constraints(trial: optuna.Trial, config: StudyConfig, result: dict[str, Any]) -> None:
    """Budgets as Optuna constraints (feasible when <= 0): measured value minus budget, per budget."""
    budgets = config.constraints.budgets()
    if not budgets:
        return
    for metric, budget in budgets.items():
        trial.set_constraint(metric, float(result[metric]) - budget)
    trial.set_user_attr("feasible", all(float(result[m]) <= b for m, b in budgets.items()))


def measures(outcome: Outcome) -> dict[str, Any]:
    """The trial's result plus what its process measured (memory, CPU time), minus the picture files."""
    result = {k: v for k, v in outcome.result.items() if k != "pictures"}
    result.update(peak_memory_mb=outcome.peak_memory_mb, cpu_time_s=outcome.cpu_time_s)
    if outcome.baseline_memory_mb is not None:
        result["baseline_memory_mb"] = outcome.baseline_memory_mb
    if outcome.trial_memory_mb is not None:
        result["trial_memory_mb"] = outcome.trial_memory_mb
    return result


def make_objective(ctx: Context, on_event: Callable[[Event], None]) -> Callable[[optuna.Trial], Sequence[float]]:
    """The Optuna objective: own the trial -> suggest and run it in its process -> check -> record."""

    def objective(trial: optuna.Trial) -> Sequence[float]:
        _own(trial, ctx)
        params, outcome = _suggest_and_run(trial, ctx, on_event)
        result = _measured(trial, ctx, outcome)
        values = ctx.config.objective_values(result)
        pictures = outcome.result.get("pictures") or []
        stopped = epochs.STOPPED_AT in result
        if taken_over(trial):
            _hand_over(trial, ctx, params, result, values, pictures, stopped)
        numbers = _record_snapshots(trial, ctx, trial.number, params, result)
        for key, value in result.items():
            if key != "snapshots":  # each is a trial of its own now
                trial.set_user_attr(key, value)
        if numbers:
            trial.set_user_attr(snapshots.SNAPSHOT_TRIALS, numbers)
        artifacts.upload_pictures(trial, pictures, ctx.artifact_dir)  # never raises: a picture never fails a trial
        if stopped:
            # Ours, not Optuna's pruner (it refuses multi-objective studies): the measures up to the rung stay.
            raise optuna.TrialPruned(result["stopped_reason"])
        set_constraints(trial, ctx.config, result)
        return values

    return objective


def _own(trial: optuna.Trial, ctx: Context) -> None:
    if _slot_taken(trial, ctx.target):
        trial.study.stop()
        skip(trial, "target reached by another process")
    mark_owner(trial)
    trial.set_user_attr("sampler_seed", getattr(trial.study.sampler, "seed", ctx.config.sampler.seed))


def _suggest_and_run(trial: optuna.Trial, ctx: Context, on_event: Callable[[Event], None]) -> tuple[dict, Outcome]:
    try:
        with signals.interruptible():  # owner recorded: from here a signal may stop the trial
            suggested = suggest(trial, ctx.config)
            if ctx.config.sampler.name == "grid" and (other := duplicate_of(trial, suggested)) is not None:
                # Optuna's GridSampler re-samples a done point once the grid looks exhausted.
                skip(trial, f"grid point already done by trial {other}")
            if (other := retried_by(trial)) is not None:
                # Processes recovering one lost trial at once may each queue a retry of it.
                skip(trial, f"this retry already runs or ran as trial {other}")
            params = resolve_params(ctx.config, suggested)
            trial.set_user_attr("resolved_params", params)
            on_event({"event": "trial", "number": trial.number, "params": params})
            # The epochs to evaluate, and the earlier rung vectors early stopping needs (None: snapshots off).
            spec = trial_spec(ctx, params, trial.number).replace(
                snapshots=snapshots.plan(ctx.config, params, trial.study))
            with Heartbeat(trial.storage, compat.trial_id(trial), ctx.heartbeat_s):
                return params, ctx.run(spec, on_event, trial_timeout(trial.study, ctx.config))
    except TrialFailed as e:
        _record_failure(trial, str(e), e.kind)
        raise
    except Interrupted as e:
        # Optuna fails the trial as the signal unwinds; this marks it for retry (lifecycle.fail_own_trials).
        trial.set_user_attr("interrupted", e.signum)
        _record_failure(trial, str(e), "interrupted")
        raise


def _measured(trial: optuna.Trial, ctx: Context, outcome: Outcome) -> dict[str, Any]:
    result = measures(outcome)
    if missing := [m for m in ctx.config.metric_names if result.get(m) is None]:
        e = TrialFailed(f"objective(s) not measured: {', '.join(missing)}")
        _record_failure(trial, str(e), e.kind)
        raise e
    return result


def _record_snapshots(trial: optuna.Trial, ctx: Context, parent: int, params: dict, result: dict) -> list[int]:
    return snapshots.record(trial.study, parent, trial.params, trial.distributions, params, result, ctx.config)


def _hand_over(trial: optuna.Trial, ctx: Context, params: dict, result: dict, values: Sequence[float],
               pictures: list[str], stopped: bool) -> None:
    """Another process failed this live trial and queued its retry: the result goes there (always raises)."""
    _discard(pictures)
    if stopped:
        # Early-stopped: nothing COMPLETE to hand over; the peer's retry trains these parameters again.
        _record_snapshots(trial, ctx, trial.number, params, result)
        raise TakenOver(trial.number)
    budgets = ctx.config.constraints.budgets()
    run_attrs = {k: v for k, v in result.items() if k not in ("snapshots", "rung_checks")}
    holder = record_taken_over(trial, values, run_attrs, {m: float(result[m]) - b for m, b in budgets.items()})
    _record_snapshots(trial, ctx, holder, params, result)
    raise TakenOver(trial.number, holder)


def _record_failure(trial: optuna.Trial, reason: str, kind: str) -> None:
    try:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("fail_kind", kind)
    except RuntimeError:  # finished by another process meanwhile: nothing more to record
        pass


def _discard(pictures: list[str]) -> None:
    for p in pictures:
        if not p.startswith("error:"):
            shutil.rmtree(Path(p).parent, ignore_errors=True)
