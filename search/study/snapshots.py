"""Epoch snapshots and multi-objective early stopping (MOASHA-style rungs) on top of them.

**Snapshots.** A trial that trains E epochs passes through every shorter schedule of the same
parameters.  With ``run.epoch_snapshots`` the trial process evaluates the model after each epoch e
that the searched ``epochs`` distribution could have picked (e < E): one prediction pass on the
objective split, which the learning curve needs anyway, plus one on the held-out test split in the
validation protocol.  The objective records each as its own COMPLETE trial (``record``): the
parent's parameters with ``epochs = e`` (same distributions), quality measured after epoch e,
``train_time_s`` of the first e epochs (the fit's set-up plus those epochs, evaluation excluded:
what an e-epoch trial would have measured), the parent's memory and other per-process measures,
the history cut at e, ``resolved_params`` with ``epochs = e`` (so ``search.confirm`` re-trains an
e-epoch trial) and ``snapshot_of = <parent number>``.  The parent lists them in ``snapshot_trials``.
Snapshots do not count toward the study's target (search.study.trials.counted).

Training is seeded and the shuffling and dropout of epoch k do not depend on how many epochs follow,
so the snapshot after epoch e and a trial trained for e epochs predict the same (tested).

**Early stopping** (``run.early_stopping = "moasha"``, rungs ``run.rungs``).  Optuna cannot prune a
multi-objective study (``Trial.report`` raises with more than one direction), so this is ours.  The
ranking rule, at each rung r < E that is one of the trial's snapshot epochs:

- the trial's *rung vector* is its snapshot's values of the study's **quality** objectives (accuracy,
  ROC AUC, ...; time and memory are left out: a shorter schedule always wins on them);
- it is compared with the vectors of the trials that were COMPLETE, with resolved ``epochs == r``,
  when the trial started (earlier trials' snapshots at r and full r-epoch trials alike; they travel
  in the trial's spec, so the trial process needs no connection to the storage);
- ``p`` *dominates* ``q`` when p is at least as good on every quality objective (each in its own
  direction) and better on one; a NaN neither dominates nor is dominated;
- with at least ``MIN_EARLIER`` (2) earlier vectors, the trial **stops when more than half of them
  dominate it**; with fewer it goes on (too little to judge).

A stopped trial's snapshots up to the rung stay COMPLETE trials; the trial itself is recorded PRUNED
with ``stopped_at_rung`` and the measures of its run up to the rung.  The rule is conservative next
to Syne Tune's MOASHA (which promotes the top 1/eta by non-dominated sorting): a trial stops only
when a majority of earlier ones beat it on every quality objective at once, so a trial that trades
accuracy for ROC AUC goes on.  ``search.trial.epochs.promotable`` is MOASHA's own rule (the top 1/eta of a rung
by non-dominated sorting, crowding distance inside a front); it is not yet wired into a study (issue 24: it
needs paused trials that resume from a checkpoint).

The trial process's side (the ranking rule and ``EpochSnapshots``) is search.trial.epochs, which imports no Optuna.
"""

from __future__ import annotations

import math
from typing import Any

from search.config.choices import METRICS
from search.study import optuna_compat as compat
from search.trial.epochs import STOPPED_AT

SNAPSHOT_OF = "snapshot_of"          # user attribute of a snapshot trial: its parent's number
SNAPSHOT_TRIALS = "snapshot_trials"  # user attribute of a parent: its snapshots' numbers
# Keys of a trial's result that describe the whole run, not one of its epochs: never copied to a snapshot.
_RUN_ONLY = ("snapshots", "rung_checks", STOPPED_AT, "stopped_reason", "pictures", SNAPSHOT_TRIALS, "feasible")


# ---------------------------------------------------------------- the plan (coordinator side)

def snapshot_epochs(dist: Any, epochs: int) -> list[int]:
    """The values below ``epochs`` that the searched ``epochs`` distribution holds: the shorter schedules."""
    if dist.type == "categorical":
        return sorted(c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)
                      and float(c).is_integer() and c < epochs)
    step = 1 if dist.log else dist.step
    return list(range(dist.low, min(dist.high + 1, epochs), step))


def quality_objectives(config: Any) -> list[tuple[int, str, str]]:
    """(index, stored name, direction) of the study's quality objectives (those a rung compares)."""
    return [(i, name, o.direction) for i, (o, name) in enumerate(zip(config.objectives, config.metric_names))
            if METRICS[o.metric].kind == "quality"]


def resolved_epochs(t: Any) -> Any:
    return (t.user_attrs.get("resolved_params") or {}).get("epochs", t.params.get("epochs"))


def plan(config: Any, params: dict[str, Any], study: Any) -> dict[str, Any] | None:
    """The ``snapshots`` part of a trial's spec (None: snapshots off): the epochs to evaluate, the quality
    objectives, and per rung the earlier trials' rung vectors (read now: the trial process has no storage)."""
    if not config.run.epoch_snapshots:
        return None
    from optuna.trial import TrialState

    epochs = snapshot_epochs(config.search_space["epochs"], int(params["epochs"]))
    quality = quality_objectives(config)
    out: dict[str, Any] = {"epochs": epochs, "quality": [n for _, n, _ in quality],
                           "directions": [d for _, _, d in quality], "rungs": {}}
    if config.run.early_stopping == "moasha" and quality:
        rungs = {r: [] for r in config.run.rungs if r in epochs}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            e = resolved_epochs(t)
            if e in rungs and t.values is not None:
                rungs[e].append([t.values[i] for i, _, _ in quality])
        out["rungs"] = {str(r): v for r, v in rungs.items()}
    return out


# ---------------------------------------------------------------- recording (coordinator side)

def snapshot_attrs(result: dict[str, Any], snap: dict[str, Any], parent: int,
                   resolved: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's user attributes: the parent's context and per-process measures, its own epoch's
    quality, train time and prediction times, the history up to its epoch, and the link to the parent."""
    e = int(snap["epoch"])
    attrs = {k: v for k, v in result.items() if k not in _RUN_ONLY}
    attrs.update({k: v for k, v in snap.items() if k != "epoch"})
    attrs["epochs_run"] = e
    if isinstance(result.get("history"), dict):
        attrs["history"] = {k: list(v[:e]) for k, v in result["history"].items()}
    attrs["resolved_params"] = {**resolved, "epochs": e}
    attrs[SNAPSHOT_OF] = parent
    return attrs


def record(study: Any, parent: int, params: dict[str, Any], distributions: dict[str, Any],
           resolved: dict[str, Any], result: dict[str, Any], config: Any) -> list[int]:
    """Record the snapshots in ``result`` as COMPLETE trials of ``study``; return their numbers.

    ``study.add_trial(optuna.trial.create_trial(...))``, through the storage call it makes, to learn
    each new trial's number (the parent links to its snapshots).  A snapshot with a NaN objective is
    skipped: Optuna refuses NaN in a COMPLETE trial, as it fails such a parent.
    """
    import optuna

    budgets = config.constraints.budgets()
    storage = compat.storage_of(study)
    numbers = []
    for snap in result.get("snapshots") or []:
        attrs = snapshot_attrs(result, snap, parent, resolved)
        values = config.objective_values(attrs)
        if any(math.isnan(v) for v in values):
            continue
        constraints = None
        if budgets:
            constraints = {m: float(attrs[m]) - b for m, b in budgets.items()}
            attrs["feasible"] = all(c <= 0 for c in constraints.values())
        frozen = optuna.trial.create_trial(params={**params, "epochs": snap["epoch"]}, distributions=distributions,
                                           values=values, user_attrs=attrs, constraints=constraints)
        trial_id = storage.create_new_trial(compat.study_id(study), template_trial=frozen)
        numbers.append(storage.get_trial_number_from_id(trial_id))
    return numbers


def is_snapshot(t: Any) -> bool:
    return SNAPSHOT_OF in t.user_attrs


def summary_text(study: Any) -> str:
    """The end-of-run summary's part about snapshots and early stopping ("" when the study has none)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    snaps = [t for t in trials if t.state == TrialState.COMPLETE and is_snapshot(t)]
    stopped = [t for t in trials if t.state == TrialState.PRUNED and STOPPED_AT in t.user_attrs]
    out = ""
    if snaps:
        best = sum(is_snapshot(t) for t in study.best_trials)
        parents = len({t.user_attrs[SNAPSHOT_OF] for t in snaps})
        out += (f"; plus {len(snaps)} COMPLETE points from epoch snapshots of {parents} trial(s) "
                f"({best} on the Pareto front)")
    if stopped:
        out += f"; {len(stopped)} trial(s) stopped early at a rung (PRUNED)"
    return out


def display_note(t: Any) -> str:
    """What a progress line adds about a finished trial's snapshots or its early stop."""
    out = ""
    numbers = t.user_attrs.get(SNAPSHOT_TRIALS) or []
    if numbers:
        contiguous = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        which = f"{numbers[0]}-{numbers[-1]}" if contiguous and len(numbers) > 1 else ", ".join(map(str, numbers))
        out += f"; +{len(numbers)} snapshot trial(s) {which}"
    if STOPPED_AT in t.user_attrs:
        out = f": {t.user_attrs.get('stopped_reason') or f'stopped at rung {t.user_attrs[STOPPED_AT]}'}" + out
    return out
