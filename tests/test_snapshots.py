"""Epoch snapshots and MOASHA early stopping (issue 13): the ranking rule, the recorded trials, the target,
the display, and real Keras runs proving that a snapshot after epoch e is an e-epoch trial.

Self-contained: the in-process tests run the real objective (search.study.objective) with a stand-in runner
(``Context(runner=...)``); the real runs train on a small synthetic feature cache written here, in
trial processes as the service runs them; the end-to-end test writes its own tiny Fashion-MNIST files.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from search.config import StudyConfig
from search.config.choices import SPLIT_PREFIX
from search.features import feature_cache
from search.isolate import Outcome
from search.progress import Display
from search.study import lifecycle as st, objective as obj, snapshots
from search.study.storage import open_storage
from search.study.trials import n_counted
from search.trial import epochs, metrics

ROOT = Path(__file__).resolve().parent.parent
MAX, MIN = "maximize", "minimize"
OBJECTIVES = [{"metric": "accuracy", "direction": MAX}, {"metric": "roc_auc", "direction": MAX},
              {"metric": "train_time_s", "direction": MIN}, {"metric": "peak_memory_mb", "direction": MIN}]

optuna.logging.set_verbosity(optuna.logging.ERROR)


# ---------------------------------------------------------------- the ranking rule on hand-made vectors

def test_dominated_by_most_earlier_stops():
    d = epochs.judge(5, [0.70, 0.90], [[0.80, 0.95], [0.75, 0.92], [0.60, 0.99]], [MAX, MAX])
    assert (d.dominated_by, d.compared_with, d.stop) == (2, 3, True)


def test_dominated_by_half_goes_on():
    # "More than half": 1 of 2 is not enough, 2 of 2 is.
    assert not epochs.judge(5, [0.7, 0.9], [[0.8, 0.95], [0.6, 0.99]], [MAX, MAX]).stop
    assert epochs.judge(5, [0.7, 0.9], [[0.8, 0.95], [0.75, 0.91]], [MAX, MAX]).stop


def test_too_few_earlier_goes_on():
    assert not epochs.judge(5, [0.1, 0.1], [], [MAX, MAX]).stop
    d = epochs.judge(5, [0.1, 0.1], [[0.9, 0.9]], [MAX, MAX])
    assert (d.dominated_by, d.stop) == (1, False)


def test_directions_are_respected():
    earlier = [[0.2, 0.9], [0.3, 0.95]]
    # Minimizing the first objective, [0.5, 0.8] is worse than both earlier vectors: stop.
    assert epochs.judge(5, [0.5, 0.8], earlier, [MIN, MAX]).stop
    # Maximizing it, [0.5, 0.8] is better on the first and worse on the second: dominated by none.
    assert epochs.judge(5, [0.5, 0.8], earlier, [MAX, MAX]).dominated_by == 0


def test_equal_vectors_and_nan_never_dominate():
    assert not epochs.dominates([0.5, 0.5], [0.5, 0.5], [MAX, MAX])
    assert not epochs.dominates([0.9, math.nan], [0.1, 0.1], [MAX, MAX])
    assert not epochs.dominates([0.9, 0.9], [0.1, math.nan], [MAX, MAX])
    assert not epochs.judge(5, [math.nan, 0.1], [[0.9, 0.9], [0.8, 0.8]], [MAX, MAX]).stop


def test_fronts_by_non_dominated_sorting():
    v = [[0.5, 0.5], [0.9, 0.9], [0.8, 0.95], [0.1, 0.1], [0.85, 0.85]]
    assert epochs.fronts(v, [MAX, MAX]) == [[1, 2], [4], [0], [3]]
    assert epochs.fronts(v, [MIN, MIN]) == [[3], [0], [2, 4], [1]]  # 4 beats 1 on both; 2 and 4 trade off


def test_promotion_takes_the_top_third_front_by_front():
    # 9 trials at a rung, eta 3: the 3 promoted are the first front (2) and the best of the second.
    v = [[0.50, 0.90], [0.90, 0.50], [0.70, 0.70], [0.45, 0.85], [0.85, 0.45], [0.40, 0.40],
         [0.30, 0.30], [0.20, 0.20], [0.10, 0.10]]
    assert epochs.fronts(v, [MAX, MAX])[:2] == [[0, 1, 2], [3, 4]]
    assert epochs.promotable(v, [MAX, MAX], 3) == [0, 1, 2]
    assert epochs.promotable(v[:8], [MAX, MAX], 3) == [0, 1]  # 8 // 3: the front's ends before its middle
    assert epochs.promotable(v, [MAX, MAX], 2) == [0, 1, 2, 3]  # 9 // 2 = 4: front 2 breaks its own tie
    assert epochs.promotable(v, [MIN, MIN], 3) == [8, 7, 6]  # each objective in its own direction


def test_promotion_inside_a_front_prefers_the_spread_out_ends_then_the_earlier_trial():
    # One front of 5 on a line: its ends have infinite crowding distance, then the wider gap wins.
    v = [[0.60, 0.40], [0.10, 0.90], [0.50, 0.50], [0.90, 0.10], [0.55, 0.45]]
    d = epochs.crowding(v, [0, 1, 2, 3, 4])
    assert d[1] == d[3] == math.inf and d[2] > d[0] and d[2] > d[4]
    assert epochs.ranked(v, [MAX, MAX])[:3] == [1, 3, 2]
    same = [[0.5, 0.5]] * 4  # identical vectors: one front, and the earlier trial first
    assert epochs.ranked(same, [MAX, MAX]) == [0, 3, 1, 2]  # the ends of a zero range, then by index


def test_promotion_waits_for_eta_trials_and_never_takes_a_nan():
    assert epochs.promotable([[0.9, 0.9], [0.1, 0.1]], [MAX, MAX], 3) == []  # fewer than eta at the rung
    assert epochs.promotable([], [MAX, MAX], 3) == []
    v = [[math.nan, 0.99], [0.2, 0.2], [0.3, 0.1]]
    assert epochs.ranked(v, [MAX, MAX])[-1] == 0 and epochs.promotable(v, [MAX, MAX], 3) == [1]
    with pytest.raises(ValueError, match="eta must be at least 2"):
        epochs.promotable(v, [MAX, MAX], 1)


def test_snapshot_epochs_follow_the_distribution():
    cfg = make_config(search_space={"epochs": {"type": "int", "low": 5, "high": 25, "step": 5}})
    assert snapshots.snapshot_epochs(cfg.search_space["epochs"], 20) == [5, 10, 15]
    cfg = make_config(search_space={"epochs": {"type": "int", "low": 2, "high": 9}})
    assert snapshots.snapshot_epochs(cfg.search_space["epochs"], 5) == [2, 3, 4]
    assert snapshots.snapshot_epochs(cfg.search_space["epochs"], 2) == []
    cfg = make_config(search_space={"epochs": {"type": "categorical", "choices": [8, 3, 5]}})
    assert snapshots.snapshot_epochs(cfg.search_space["epochs"], 8) == [3, 5]


# ---------------------------------------------------------------- in-process studies with a stand-in runner

def make_config(search_space: dict | None = None, run: dict | None = None, sampler: str = "random",
                evaluation: str = "test", objectives: list | None = None, **sections: Any) -> StudyConfig:
    space = search_space or {"dropout": {"type": "float", "low": 0.1, "high": 0.7},
                             "epochs": {"type": "int", "low": 1, "high": 4}}
    return StudyConfig.model_validate({
        "name": "snap", "dataset": {"name": "fashion_mnist"}, "backbone": {"weights": "random"},
        "head": {"units": 16}, "training": {"evaluation": evaluation, "batch_size": 32},
        "search_space": space, "objectives": objectives or OBJECTIVES,
        "sampler": {"name": sampler, "seed": 0}, "run": {"n_trials": 2, "epoch_snapshots": True, **(run or {})},
        **sections})


EPOCH_S = 1.0   # the stand-in's time per epoch
SETUP_S = 0.25  # and its fit's time outside any epoch


def quality(p: dict[str, Any], epoch: int) -> dict[str, float]:
    """The stand-in's measures after ``epoch`` epochs: better with more epochs and less dropout."""
    acc = min(0.99, 0.4 + 0.1 * epoch - 0.3 * p["dropout"])
    return {"accuracy": acc, "roc_auc": min(0.999, 0.6 + 0.08 * epoch - 0.2 * p["dropout"])}


def fake_runner(spec: dict[str, Any], on_event, timeout) -> Outcome:
    """search.trial.child.run_trial's contract without Keras: the trial-process side of snapshots is the real one."""
    p = spec["params"]
    split = SPLIT_PREFIX[spec["evaluation"]]
    snaps = epochs.EpochSnapshots(spec.get("snapshots"))
    times, curve = [], []
    for epoch in range(1, p["epochs"] + 1):
        times.append(EPOCH_S)
        q = quality(p, epoch)
        curve.append(q["accuracy"])
        if snaps.wants(epoch):
            measures = metrics.prefixed(q, spec["evaluation"])
            if spec["evaluation"] == "validation":
                measures.update(metrics.prefixed({k: v - 0.01 for k, v in q.items()}, "test"))
            if snaps.add(epoch, measures, {f"{split}_time_s": 0.01}):
                break
    run = len(times)
    result = {**metrics.prefixed(quality(p, run), spec["evaluation"]), "objective_split": spec["evaluation"],
              "train_time_s": SETUP_S + sum(times), "epochs_run": run, "n_train": 100,
              "history": {"loss": [1.0 / e for e in range(1, run + 1)], "epoch_time_s": times,
                          f"{split}_accuracy": curve}}
    result.update(snaps.result(times, result["train_time_s"]))
    return Outcome(result, peak_memory_mb=1000.0 + 10 * p["epochs"], start_memory_mb=50.0,
                   baseline_memory_mb=400.0, trial_memory_mb=600.0 + 10 * p["epochs"], cpu_time_s=2.0)


class Run:
    """A study of ``config`` in a SQLite file, run by search.study.lifecycle.optimize with the real objective."""

    def __init__(self, tmp: Path, config: StudyConfig, runner=fake_runner, **ctx: Any):
        from search.study import samplers

        self.config = config
        self.storage = open_storage(f"sqlite:///{tmp / 'snap.db'}")
        self.study = optuna.create_study(storage=self.storage, directions=config.directions,
                                         sampler=samplers.make_sampler(config), study_name="snap")
        self.study.set_metric_names(config.metric_names)
        self.out = io.StringIO()
        self.display = Display(Console(file=self.out, width=300, force_terminal=False))
        ctx = {"cache_dir": tmp, "cache_key": "none", **ctx}
        self.ctx = obj.Context(config=config, n_classes=10, target=samplers.target(config), runner=runner, **ctx)

    def optimize(self) -> st.RunSummary:
        if self.config.sampler.name == "grid":
            st.queue_grid_points(self.study, self.config, self.ctx.target)
        self.display.start(self.study, self.ctx.target, self.config.metric_names)
        policy = st.RetryPolicy(grid=self.config.sampler.name == "grid", max_retries=1, max_failures=3)
        summary = st.optimize(self.study, obj.make_objective(self.ctx, self.display.on_event), self.ctx.target,
                              None, policy, callbacks=[self.display.on_trial_end])
        self.display.stop()
        return summary

    def trials(self, state=TrialState.COMPLETE) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(state,))


def test_snapshots_recorded_and_not_counted(tmp_path):
    run = Run(tmp_path, make_config())
    run.study.enqueue_trial({"dropout": 0.2, "epochs": 4})
    run.study.enqueue_trial({"dropout": 0.5, "epochs": 3})
    summary = run.optimize()

    complete = run.trials()
    parents = [t for t in complete if not snapshots.is_snapshot(t)]
    snaps = [t for t in complete if snapshots.is_snapshot(t)]
    # Target 2: exactly 2 counted COMPLETE trials, plus the epochs 1-3 of the first and 1-2 of the second.
    assert [t.params["epochs"] for t in parents] == [4, 3]
    assert n_counted(run.study) == 2 and summary.complete_after == 2
    assert st.counts(run.study)[TrialState.COMPLETE] == 2
    assert sorted((t.user_attrs["snapshot_of"], t.params["epochs"]) for t in snaps) == \
        [(parents[0].number, 1), (parents[0].number, 2), (parents[0].number, 3),
         (parents[1].number, 1), (parents[1].number, 2)]

    for parent in parents:
        mine = sorted((t for t in snaps if t.user_attrs["snapshot_of"] == parent.number),
                      key=lambda t: t.params["epochs"])
        assert parent.user_attrs["snapshot_trials"] == [t.number for t in mine]
        assert "snapshots" not in parent.user_attrs  # each is a trial of its own
        for t in mine:
            e = t.params["epochs"]
            q = quality(parent.params, e)
            assert t.distributions == parent.distributions
            assert t.params == {**parent.params, "epochs": e}
            assert t.values == pytest.approx([q["accuracy"], q["roc_auc"], SETUP_S + e * EPOCH_S,
                                              parent.values[3]])
            a = t.user_attrs
            assert a["test_accuracy"] == pytest.approx(q["accuracy"]) and "accuracy" not in a
            assert a["train_time_s"] == pytest.approx(SETUP_S + e * EPOCH_S)
            assert a["peak_memory_mb"] == parent.user_attrs["peak_memory_mb"]
            assert a["trial_memory_mb"] == parent.user_attrs["trial_memory_mb"]
            assert a["epochs_run"] == e and a["n_train"] == 100
            assert a["resolved_params"] == {**parent.user_attrs["resolved_params"], "epochs": e}
            assert {k: len(v) for k, v in a["history"].items()} == {"loss": e, "epoch_time_s": e,
                                                                    "test_accuracy": e}
            assert a["history"]["test_accuracy"] == parent.user_attrs["history"]["test_accuracy"][:e]
            assert "snapshot_trials" not in a and "rung_checks" not in a

    log = run.out.getvalue()
    # The display counts only the target's trials; snapshots get no line of their own.
    assert f"trial {parents[0].number} COMPLETE" in log and "[1/2]" in log and "[2/2]" in log
    assert "+3 snapshot trial(s)" in log and "+2 snapshot trial(s)" in log
    assert not any(f"trial {t.number} COMPLETE" in log for t in snaps)
    assert snapshots.summary_text(run.study).startswith("; plus 5 COMPLETE points from epoch snapshots of 2 trial(s)")


def test_snapshot_recorded_on_both_splits_in_validation_protocol(tmp_path):
    run = Run(tmp_path, make_config(evaluation="validation", run={"n_trials": 1}))
    run.study.enqueue_trial({"dropout": 0.2, "epochs": 2})
    run.optimize()
    (snap,) = [t for t in run.trials() if snapshots.is_snapshot(t)]
    assert run.config.metric_names[:2] == ["val_accuracy", "val_roc_auc"]
    q = quality({"dropout": 0.2}, 1)
    assert snap.values[:2] == pytest.approx([q["accuracy"], q["roc_auc"]])
    assert snap.user_attrs["val_accuracy"] == pytest.approx(q["accuracy"])
    assert snap.user_attrs["test_accuracy"] == pytest.approx(q["accuracy"] - 0.01)


def test_constraints_apply_to_snapshots(tmp_path):
    # 2 epochs fit the train-time budget, 3 do not.
    run = Run(tmp_path, make_config(constraints={"max_train_time_s": SETUP_S + 2.5 * EPOCH_S}, run={"n_trials": 1}))
    run.study.enqueue_trial({"dropout": 0.2, "epochs": 4})
    run.optimize()
    feasible = {t.params["epochs"]: t.user_attrs["feasible"] for t in run.trials()}
    assert feasible == {1: True, 2: True, 3: False, 4: False}
    assert {t.params["epochs"] for t in run.study.best_trials} <= {1, 2}


def test_grid_runs_every_point_once_beside_snapshots(tmp_path):
    # Snapshots of the 2-epoch points hold the 1-epoch points' parameters: the grid must still run those.
    config = make_config(search_space={"epochs": {"type": "categorical", "choices": [1, 2]},
                                       "dropout": {"type": "categorical", "choices": [0.2, 0.4]}},
                         sampler="grid", run={"n_trials": None})
    run = Run(tmp_path, config)
    run.optimize()
    counted = sorted((t.params["epochs"], t.params["dropout"]) for t in run.trials() if not snapshots.is_snapshot(t))
    assert counted == [(1, 0.2), (1, 0.4), (2, 0.2), (2, 0.4)]
    assert sorted((t.params["epochs"], t.params["dropout"]) for t in run.trials() if snapshots.is_snapshot(t)) == \
        [(1, 0.2), (1, 0.4)]
    assert not run.trials(TrialState.PRUNED)  # no point was taken for a duplicate of a snapshot


def test_moasha_stops_a_dominated_trial(tmp_path):
    run = Run(tmp_path, make_config(run={"n_trials": 3, "early_stopping": "moasha", "rungs": [2, 3]}))
    for p in ({"dropout": 0.1, "epochs": 4},     # rung 2: nothing earlier -> goes on
              {"dropout": 0.2, "epochs": 4},     # rung 2: one earlier -> too few, goes on
              {"dropout": 0.6, "epochs": 4},     # rung 2: dominated by both earlier -> stops
              {"dropout": 0.15, "epochs": 4}):   # rung 2: dominated by 1 of 3 -> on; rung 3: 1 of 2 -> on
        run.study.enqueue_trial(p)
    run.optimize()

    (pruned,) = run.trials(TrialState.PRUNED)
    assert pruned.params == {"dropout": 0.6, "epochs": 4}
    a = pruned.user_attrs
    assert a["stopped_at_rung"] == 2 and a["epochs_run"] == 2
    assert a["train_time_s"] == pytest.approx(SETUP_S + 2 * EPOCH_S)  # the real measures up to the rung
    assert a["rung_checks"] == {"2": {"dominated_by": 2, "compared_with": 2, "stop": True}}
    assert "dominated by 2 of 2 earlier trials at epoch 2" in a["stopped_reason"]
    snaps = sorted((t for t in run.trials() if t.user_attrs.get("snapshot_of") == pruned.number),
                   key=lambda t: t.params["epochs"])
    assert [t.params["epochs"] for t in snaps] == [1, 2] and a["snapshot_trials"] == [t.number for t in snaps]
    assert snaps[1].values[0] == pytest.approx(quality(pruned.params, 2)["accuracy"])

    last = max((t for t in run.trials() if not snapshots.is_snapshot(t)), key=lambda t: t.number)
    assert last.params["dropout"] == 0.15 and last.user_attrs["rung_checks"] == {
        "2": {"dominated_by": 1, "compared_with": 3, "stop": False},
        "3": {"dominated_by": 1, "compared_with": 2, "stop": False}}
    assert n_counted(run.study) == 3
    assert f"trial {pruned.number} PRUNED: stopped at rung 2" in run.out.getvalue()
    assert "1 trial(s) stopped early at a rung (PRUNED)" in snapshots.summary_text(run.study)


def test_rung_vectors_come_from_full_trials_and_snapshots(tmp_path):
    config = make_config(run={"n_trials": 2, "early_stopping": "moasha", "rungs": [2]})
    run = Run(tmp_path, config)
    run.study.enqueue_trial({"dropout": 0.1, "epochs": 2})   # a full 2-epoch trial
    run.study.enqueue_trial({"dropout": 0.1, "epochs": 3})   # its epoch-2 snapshot
    run.optimize()
    params = {"dropout": 0.3, "epochs": 4}
    plan = snapshots.plan(config, params, run.study)
    q = quality({"dropout": 0.1}, 2)
    assert plan["epochs"] == [1, 2, 3] and plan["quality"] == ["test_accuracy", "test_roc_auc"]
    assert plan["rungs"] == {"2": [[q["accuracy"], q["roc_auc"]]] * 2}  # trial 0, and the snapshot of trial 1
    assert snapshots.plan(make_config(run={"epoch_snapshots": False}), params, run.study) is None


def test_pool_display_skips_snapshots(tmp_path):
    from search.progress import PoolDisplay

    run = Run(tmp_path, make_config())
    pool = PoolDisplay(2, run.display.console)
    pool.start(run.study, 2, run.config.metric_names)
    run.study.enqueue_trial({"dropout": 0.2, "epochs": 3})
    run.study.enqueue_trial({"dropout": 0.3, "epochs": 2})
    policy = st.RetryPolicy(grid=False, max_retries=1, max_failures=3)
    st.optimize(run.study, obj.make_objective(run.ctx, lambda e: None), 2, None, policy)
    pool.poll()
    pool.stop()
    log = run.out.getvalue()
    assert log.count(" COMPLETE: ") == 2 and "[2/2]" in log and "+2 snapshot trial(s)" in log
    assert len(pool.durations) == 2


# ---------------------------------------------------------------- real Keras runs on a synthetic feature cache

def write_features(cache_dir: Path, n: int = 400, dim: int = 24, seed: int = 0) -> str:
    """A feature cache entry with class-dependent features, so that a head learns over several epochs."""
    key = "synthetic-snapshots"

    def build(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 10
        centers = rng.normal(size=(10, dim))
        x = (centers[labels] * 0.6 + rng.normal(size=(n, dim))).astype(np.float32)
        np.save(tmp / "features.npy", x)
        np.save(tmp / "labels.npy", labels.astype(np.int64))

    feature_cache.ensure_cached(cache_dir, key, build)
    return key


def recording_trial(spec: dict[str, Any], report) -> dict[str, Any]:
    """search.trial.child.run_trial, saving every prediction it makes (in order) to $RECORD_PREDICTIONS_TO."""
    from search.training import head
    from search.trial import child

    made = []
    predict = head.predict

    def recorded(model, x, batch_size=1024):
        proba, took = predict(model, x, batch_size)
        made.append(proba)
        return proba, took

    head.predict = recorded
    try:
        result = child.run_trial(spec, report)
    finally:
        head.predict = predict
    np.savez(Path(os.environ["RECORD_PREDICTIONS_TO"]) / f"epochs{spec['params']['epochs']}.npz", *made)
    return result


def recorded(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.fixture
def child_imports_this(monkeypatch):
    """The trial processes import this module (their target): put it on their path, under this name."""
    paths = [str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return f"{__name__}:recording_trial"


# The validation split in the slow suite only: the same code path with one more split (11 s).
@pytest.mark.parametrize("evaluation", ["test", pytest.param("validation", marks=pytest.mark.slow)])
def test_snapshot_equals_a_shorter_trial(tmp_path, evaluation, child_imports_this, monkeypatch):
    """A trial with epochs = 5 and the e = 5 snapshot of a trial with epochs = 8 (same other parameters)
    predict the same and have the same quality objectives."""
    key = write_features(tmp_path / "cache")
    config = make_config(search_space={"epochs": {"type": "int", "low": 1, "high": 8},
                                       "dropout": {"type": "float", "low": 0.1, "high": 0.7}},
                         evaluation=evaluation)
    run = Run(tmp_path, config, runner=None, cache_dir=tmp_path / "cache", cache_key=key,
              trial_target=child_imports_this)
    monkeypatch.setenv("RECORD_PREDICTIONS_TO", str(tmp_path))  # the trial processes inherit it
    run.study.enqueue_trial({"epochs": 8, "dropout": 0.3})
    run.study.enqueue_trial({"epochs": 5, "dropout": 0.3})
    run.optimize()

    long, short = [t for t in run.trials() if not snapshots.is_snapshot(t)]
    (snap,) = [t for t in run.trials() if t.user_attrs.get("snapshot_of") == long.number and t.params["epochs"] == 5]
    assert short.params == snap.params
    # Predictions on the objective split: after each epoch, then the final evaluation (and, in the validation
    # protocol, a test-split pass after each snapshot epoch and at the end).
    p8, p5 = recorded(tmp_path / "epochs8.npz"), recorded(tmp_path / "epochs5.npz")
    per_epoch = 2 if evaluation == "validation" else 1
    snap_eval = p8[(5 - 1) * per_epoch]
    final_eval = p5[-2] if evaluation == "validation" else p5[-1]
    np.testing.assert_allclose(snap_eval, final_eval, rtol=1e-5, atol=1e-6)
    if evaluation == "validation":
        np.testing.assert_allclose(p8[(5 - 1) * per_epoch + 1], p5[-1], rtol=1e-5, atol=1e-6)
    quality_idx = [i for i, _, _ in snapshots.quality_objectives(config)]
    assert [snap.values[i] for i in quality_idx] == pytest.approx([short.values[i] for i in quality_idx], abs=1e-6)
    for m in ("accuracy", "roc_auc", "f1", "balanced_accuracy"):
        assert snap.user_attrs[f"test_{m}"] == pytest.approx(short.user_attrs[f"test_{m}"], abs=1e-6)
    assert snap.user_attrs["test_confusion_matrix"] == short.user_attrs["test_confusion_matrix"]
    assert snap.user_attrs["history"]["loss"] == pytest.approx(short.user_attrs["history"]["loss"], rel=1e-5)
    # Time: a snapshot's train time is its share of the parent's, and within reach of the real 5-epoch trial.
    assert 0 < snap.user_attrs["train_time_s"] < long.user_attrs["train_time_s"]


def test_moasha_stops_a_real_trial(tmp_path):
    """A real trial process stops at its rung (training ends there, no NaN failure), is PRUNED with its
    real measures up to the rung, and keeps its snapshots up to the rung as COMPLETE trials."""
    key = write_features(tmp_path / "cache")
    config = make_config(run={"n_trials": 1, "early_stopping": "moasha", "rungs": [2]})
    run = Run(tmp_path, config, runner=None, cache_dir=tmp_path / "cache", cache_key=key)
    # Two earlier 2-epoch points (snapshots: they do not count) that no head can beat on accuracy and ROC AUC.
    dists = {"dropout": optuna.distributions.FloatDistribution(0.1, 0.7),
             "epochs": optuna.distributions.IntDistribution(1, 4)}
    for d in (0.1, 0.2):
        run.study.add_trial(optuna.trial.create_trial(
            params={"dropout": d, "epochs": 2}, distributions=dists, values=[1.0, 1.0, 1.0, 1.0],
            user_attrs={"resolved_params": {"epochs": 2}, "snapshot_of": -1}))
    run.study.enqueue_trial({"dropout": 0.3, "epochs": 4})
    run.study.optimize(obj.make_objective(run.ctx, lambda e: None), n_trials=1)

    (t,) = run.trials(TrialState.PRUNED)
    assert t.params["epochs"] == 4 and t.user_attrs["stopped_at_rung"] == 2
    assert t.user_attrs["epochs_run"] == 2 and len(t.user_attrs["history"]["loss"]) == 2
    assert t.user_attrs["train_time_s"] > 0 and "test_accuracy" in t.user_attrs
    snaps = [s for s in run.trials() if s.user_attrs.get("snapshot_of") == t.number]
    assert sorted(s.params["epochs"] for s in snaps) == [1, 2]
    two = next(s for s in snaps if s.params["epochs"] == 2)
    assert two.values[0] == pytest.approx(t.user_attrs["test_accuracy"], abs=1e-6)  # the stopped model is epoch 2's


# ---------------------------------------------------------------- end to end: search.run, then search.confirm

def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_fashion(d: Path, n_train: int = 160, n_test: int = 40) -> Path:
    """Fashion-MNIST's four IDX files with tiny class-dependent content."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for c in range(10):
            images[labels == c, 2 * c:2 * c + 4] += 150
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return d


E2E_CONFIG = """
[dataset]
name = "fashion_mnist"
[backbone]
weights = "random"
[head]
units = 16
[training]
batch_size = 32
evaluation = "test"
[search_space]
dropout = { type = "float", low = 0.1, high = 0.7 }
epochs = { type = "int", low = 1, high = 3 }
[[objectives]]
metric = "accuracy"
direction = "maximize"
[[objectives]]
metric = "roc_auc"
direction = "maximize"
[[objectives]]
metric = "train_time_s"
direction = "minimize"
[[objectives]]
metric = "peak_memory_mb"
direction = "minimize"
[sampler]
name = "random"
seed = 0
[run]
n_trials = 2
epoch_snapshots = true
early_stopping = "moasha"
rungs = [2]
"""


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(PYTHONPATH=str(ROOT), SEARCH_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # real extraction / end-to-end runs: CI runs it (--slow)
def test_cli_run_and_confirm_a_snapshot(tmp_path):
    data_dir = write_fashion(tmp_path / "fmnist")
    cfg = tmp_path / "snapcli.toml"
    cfg.write_text(E2E_CONFIG)
    storage = f"sqlite:///{tmp_path / 'cli.db'}"
    db = open_storage(storage)
    r = _cli("search.run", "--study", str(cfg), "--storage", storage, "--data-dir", str(data_dir),
             "--cache-dir", str(tmp_path / "cache"), "--n-trials", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="snapcli", storage=db)
    study.enqueue_trial({"dropout": 0.2, "epochs": 3})  # the second trial leaves (at least) 2 snapshots
    r = _cli("search.run", "--study", str(cfg), "--storage", storage, "--data-dir", str(data_dir),
             "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counted = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if not snapshots.is_snapshot(t)]
    snaps = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if snapshots.is_snapshot(t)]
    assert len(counted) == 2
    assert sum(len(t.user_attrs.get("snapshot_trials", [])) for t in counted) == len(snaps) >= 2
    assert "2/2 COMPLETE trials" in r.stderr and f"plus {len(snaps)} COMPLETE points from epoch snapshots" in r.stderr

    snap = max(snaps, key=lambda t: t.params["epochs"])
    assert snap.user_attrs["resolved_params"]["epochs"] == snap.params["epochs"]
    r = _cli("search.confirm", "--study", "snapcli", "--storage", storage, "--cache-dir", str(tmp_path / "cache"),
             "--trials", str(snap.number), "--seeds", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stored = optuna.load_study(study_name="snapcli", storage=db).user_attrs
    (run,) = [v for k, v in stored.items() if k.startswith(f"search:confirm:{snap.number}:")]
    assert run["params"]["epochs"] == snap.params["epochs"]
    assert run["metrics"]["epochs_run"] == snap.params["epochs"]  # re-trained for e epochs, not the parent's
    assert json.dumps(run)  # stored as plain JSON


# ---------------------------------------------------------------- the measurement tool's pieces

def test_benchmark_hypervolume_and_configs(tmp_path):
    from benchmarks import snapshots as bench

    ref, directions = (0.7, 0.9, 600.0, 4096.0), ["maximize", "maximize", "minimize", "minimize"]
    box = 0.3 * 0.1 * 600 * 4096
    assert bench.hypervolume([[0.8, 0.95, 100.0, 1500.0]], ref, directions) == pytest.approx(
        0.1 * 0.05 * 500 * 2596 / box)
    # A point outside the box adds nothing; a dominated one adds nothing either.
    assert bench.hypervolume([[0.8, 0.95, 100.0, 1500.0], [0.6, 0.99, 10.0, 100.0], [0.75, 0.91, 200.0, 2000.0]],
                             ref, directions) == pytest.approx(0.1 * 0.05 * 500 * 2596 / box)
    plan = bench.parse_args(["--smoke", "--out", str(tmp_path)])
    base = bench.base_config(plan)
    for variant in bench.VARIANTS:
        run = bench.variant_search(plan, base, variant, 1).config.run
        assert run.timeout == 60 * plan.minutes and run.rungs == plan.rungs
        assert (run.epoch_snapshots, run.early_stopping) == (variant != "plain", "moasha" if variant == "moasha"
                                                             else "none")
    assert base.dataset.subset == 2000 and base.training.batch_size == 32 and base.backbone.weights == "random"
