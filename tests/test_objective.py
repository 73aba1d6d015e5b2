"""search.study.objective: what the sampler sees (the config's objectives, on the study's split), what is stored beside it,
arms, the grid guard, the shared target, time limits, budgets, and a result kept when a peer failed the trial.

The objective runs for real on a SQLite study; the trial process is replaced through ``Context(runner=...)``
by a function returning an ``Outcome`` with known numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search.config import load_config
from search.errors import TrialFailed
from search.isolate import Outcome
from search.study import objective as obj, optuna_compat as compat, storage as sto, trials as tr

from .conftest import TINY_CONFIG
from .stand_ins import PNG

VALIDATION = TINY_CONFIG.format(n_trials=2).replace('evaluation = "test"', 'evaluation = "validation"').replace(
    'metric = "roc_auc"', 'metric = "balanced_accuracy"')
KNOWN = {"val_accuracy": 0.61, "val_balanced_accuracy": 0.6, "test_accuracy": 0.97, "test_balanced_accuracy": 0.96,
         "train_time_s": 12.5, "objective_split": "validation"}


def _config(tmp_path: Path, text: str = VALIDATION, **replace: str):
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(str(path))


class Runner:
    """Stands in for the trial process: records each spec, returns ``result`` (or raises ``error``)."""

    def __init__(self, result: dict[str, Any] | None = None, error: Exception | None = None, during=None):
        self.result, self.error, self.during = result or KNOWN, error, during
        self.specs: list[dict] = []
        self.timeouts: list[float | None] = []

    def __call__(self, spec, on_event, timeout) -> Outcome:
        self.specs.append(spec)
        self.timeouts.append(timeout)
        if self.during:
            self.during(spec)
        if self.error:
            raise self.error
        return Outcome(dict(self.result), peak_memory_mb=900.0, start_memory_mb=50.0, baseline_memory_mb=400.0,
                       trial_memory_mb=500.0, cpu_time_s=20.0)


def _study(tmp_path: Path, config, seed: int = 0) -> optuna.Study:
    storage = sto.open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1)
    from search.study.samplers import make_sampler

    return optuna.create_study(study_name="o", storage=storage, directions=config.directions,
                               sampler=make_sampler(config))


def _ctx(config, runner, target=2, **kw) -> obj.Context:
    return obj.Context(config=config, cache_dir=Path("/nonexistent"), cache_key="k", n_classes=10, target=target,
                       runner=runner, **kw)


def test_the_sampler_gets_the_configs_objectives_on_the_validation_split(tmp_path):
    config = _config(tmp_path)
    study = _study(tmp_path, config)
    study.optimize(obj.make_objective(_ctx(config, Runner()), lambda e: None), n_trials=1)
    (t,) = study.get_trials()
    # accuracy, balanced_accuracy, train_time_s, peak_memory_mb - the validation numbers, never the test ones
    assert t.values == [0.61, 0.6, 12.5, 900.0]
    assert config.metric_names == ["val_accuracy", "val_balanced_accuracy", "train_time_s", "peak_memory_mb"]
    # Every measure is kept beside them, named by split, with what the process measured.
    assert t.user_attrs["test_accuracy"] == 0.97 and t.user_attrs["objective_split"] == "validation"
    assert (t.user_attrs["cpu_time_s"], t.user_attrs["trial_memory_mb"], t.user_attrs["baseline_memory_mb"]) == \
        (20.0, 500.0, 400.0)
    assert t.system_attrs[tr.OWNER_ATTR]["pid"] > 0  # owner recorded before the trial ran


def test_trial_memory_can_be_the_objective(tmp_path):
    config = _config(tmp_path, **{'metric = "peak_memory_mb"': 'metric = "trial_memory_mb"'})
    study = _study(tmp_path, config)
    study.optimize(obj.make_objective(_ctx(config, Runner()), lambda e: None), n_trials=1)
    assert study.get_trials()[0].values[3] == 500.0


def test_an_objective_with_a_resolution_is_stored_in_its_steps_and_measured_beside(tmp_path):
    config = _config(tmp_path, **{'metric = "peak_memory_mb"\ndirection = "minimize"':
                                  'metric = "peak_memory_mb"\ndirection = "minimize"\nresolution = 64.0'})
    study = _study(tmp_path, config)
    study.optimize(obj.make_objective(_ctx(config, Runner()), lambda e: None), n_trials=1)
    (t,) = study.get_trials()
    assert t.values[3] == 896.0 and t.user_attrs["peak_memory_mb"] == 900.0


def test_a_trial_whose_objective_was_not_measured_fails_naming_it(tmp_path):
    config = _config(tmp_path, **{'metric = "peak_memory_mb"': 'metric = "trial_memory_mb"'})
    study = _study(tmp_path, config)

    def unmeasured(spec, on_event, timeout) -> Outcome:  # the kernel refused to reset the high-water mark
        return Outcome(dict(KNOWN), peak_memory_mb=900.0, start_memory_mb=50.0)

    study.optimize(obj.make_objective(_ctx(config, unmeasured), lambda e: None), n_trials=1, catch=(TrialFailed,))
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "objective(s) not measured: trial_memory_mb"


def test_the_trial_process_gets_its_whole_job(tmp_path):
    config = _config(tmp_path)
    runner = Runner()
    study = _study(tmp_path, config)
    ctx = _ctx(config, runner, artifact_dir=tmp_path / "pics", backend="jax", weights="random(seed=0)",
               class_names=tuple("abcdefghij"))
    study.optimize(obj.make_objective(ctx, lambda e: None), n_trials=1)
    (spec,) = runner.specs
    assert spec["evaluation"] == "validation" and spec["validation_fraction"] == 0.2 and spec["seed"] == 0
    assert spec["params"]["units"] == 32 and spec["params"]["epochs"] == 1  # fixed settings of the config
    assert set(spec["params"]) >= {"dropout", "l2", "split_ratio", "handling", "augmentation"}
    assert spec["class_names"] == list("abcdefghij")
    assert spec["pictures"] == {"header": "trial 0", "backend": "jax", "weights": "random(seed=0)"}
    assert study.get_trials()[0].user_attrs["resolved_params"] == spec["params"]


def test_arm_values_replace_the_config_and_suggestions_replace_both(tmp_path):
    text = VALIDATION.replace("[search_space]", """[arms.short]
epochs = 2
balance = "imbalanced"
[arms.long]
epochs = 4

[search_space]
arm = { type = "categorical", choices = ["short", "long"] }""")
    config = _config(tmp_path, text)
    assert obj.resolve_params(config, {"arm": "short", "dropout": 0.3}) == {
        **obj.resolve_params(config, {}), "arm": "short", "epochs": 2, "balance": "imbalanced", "dropout": 0.3}
    assert obj.resolve_params(config, {"arm": "long"})["epochs"] == 4
    assert obj.resolve_params(config, {})["epochs"] == 1 and obj.resolve_params(config, {})["dropout"] == 0.5


def test_a_failed_trial_records_why_and_how(tmp_path):
    config = _config(tmp_path)
    study = _study(tmp_path, config)
    runner = Runner(error=TrialFailed("training loss became NaN/inf at epoch 1", kind="nan"))
    study.optimize(obj.make_objective(_ctx(config, runner), lambda e: None), n_trials=1, catch=(TrialFailed,))
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == "training loss became NaN/inf at epoch 1" and t.user_attrs["fail_kind"] == "nan"
    assert "val_accuracy" not in t.user_attrs


def test_no_trial_starts_once_the_target_is_reached_or_claimed(tmp_path):
    config = _config(tmp_path)
    study = _study(tmp_path, config)
    runner = Runner()
    study.optimize(obj.make_objective(_ctx(config, runner, target=1), lambda e: None), n_trials=3)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED] and len(runner.specs) == 1  # and optimize stopped


def test_a_grid_never_runs_a_done_point_again(tmp_path):
    config = _config(tmp_path, **{'name = "random"': 'name = "grid"',
                                  'dropout = { type = "float", low = 0.1, high = 0.7 }': ""})
    study = _study(tmp_path, config)
    runner = Runner()
    objective = obj.make_objective(_ctx(config, runner, target=3), lambda e: None)
    study.enqueue_trial({"l2": 0.0})
    study.optimize(objective, n_trials=1)
    study.enqueue_trial({"l2": 0.0})  # what Optuna's GridSampler does once it thinks the grid is exhausted
    study.optimize(objective, n_trials=1)
    first, again = study.get_trials()
    assert first.state == TrialState.COMPLETE and again.state == TrialState.PRUNED
    assert len(runner.specs) == 1


def test_a_trials_time_limit_is_the_configs_else_ten_times_the_slowest(tmp_path):
    import datetime

    config = _config(tmp_path)
    study = _study(tmp_path, config)
    assert obj.trial_timeout(study, config) is None  # no limit before the first trial
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    now = datetime.datetime.now()

    def add(seconds: float, **attrs) -> None:
        t = optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, values=[1, 1, 1, 1], user_attrs=attrs)
        t.datetime_start, t.datetime_complete = now - datetime.timedelta(seconds=seconds), now
        study.add_trial(t)

    # A result kept for a trial that another process failed mid-run is recorded in a moment: no measure
    # of how long a trial takes (10 x 0.05 s would kill every later trial).
    add(0.05, recovered_from=0)
    assert obj.trial_timeout(study, config) is None
    add(30)
    add(50)
    add(400, snapshot_of=1)  # an epoch snapshot is part of a trial, not one
    assert obj.trial_timeout(study, config) == pytest.approx(500)  # 10 x 50 s
    assert obj.trial_timeout(study, config.with_run(trial_timeout=7.0)) == 7.0
    runner = Runner()
    study.optimize(obj.make_objective(_ctx(config.with_run(trial_timeout=7.0), runner, target=10), lambda e: None),
                   n_trials=1)
    assert runner.timeouts == [7.0]  # what the trial process is killed after


def test_budgets_become_constraints_and_keep_infeasible_trials_off_the_pareto_set(tmp_path):
    config = _config(tmp_path, **{"[run]": "[constraints]\nmax_peak_memory_mb = 800\n\n[run]"})
    study = _study(tmp_path, config)
    study.optimize(obj.make_objective(_ctx(config, Runner()), lambda e: None), n_trials=1)
    (t,) = study.get_trials()
    assert t.constraints == {"peak_memory_mb": 100.0} and t.user_attrs["feasible"] is False  # 900 MB > 800 MB
    assert study.best_trials == []
    roomy = _config(tmp_path, **{"[run]": "[constraints]\nmax_peak_memory_mb = 1000\nmax_train_time_s = 60\n\n[run]"})
    study = optuna.create_study(directions=roomy.directions)
    study.optimize(obj.make_objective(_ctx(roomy, Runner()), lambda e: None), n_trials=1)
    assert study.get_trials()[0].user_attrs["feasible"] is True and len(study.best_trials) == 1


def test_pictures_are_uploaded_and_never_counted_as_measures(tmp_path):
    config = _config(tmp_path)
    study = _study(tmp_path, config)
    d = tmp_path / "search-pictures-1"
    d.mkdir()
    (d / "val_confusion_matrix.png").write_bytes(PNG)
    runner = Runner({**KNOWN, "pictures": [str(d / "val_confusion_matrix.png")]})
    (tmp_path / "pics").mkdir()
    study.optimize(obj.make_objective(_ctx(config, runner, artifact_dir=tmp_path / "pics"), lambda e: None),
                   n_trials=1)
    (t,) = study.get_trials()
    assert "pictures" not in t.user_attrs
    from tests.conftest import trial_artifacts

    assert [m["filename"] for m in trial_artifacts(t, compat.storage_of(study))] == ["val_confusion_matrix.png"]


def test_a_result_is_kept_when_another_process_failed_the_trial_while_it_ran(tmp_path):
    """The peer is another storage connection (another process in tests/test_faults.py)."""
    config = _config(tmp_path)
    study = _study(tmp_path, config)
    peer = optuna.load_study(study_name="o", storage=sto.open_storage(f"sqlite:///{tmp_path / 'o.db'}"))

    def peer_fails_it(spec):
        (running,) = peer.get_trials(states=(TrialState.RUNNING,))
        tr.fail_and_retry(peer, running, "heartbeat silent for 3 s")

    objective = obj.make_objective(_ctx(config, Runner(during=peer_fails_it), target=1), lambda e: None)
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):  # Optuna's complaint; search.study.lifecycle goes on
        study.optimize(objective, n_trials=1)
    failed, kept = study.get_trials()
    assert failed.state == TrialState.FAIL and kept.state == TrialState.COMPLETE
    assert kept.values == [0.61, 0.6, 12.5, 900.0] and kept.user_attrs["recovered_from"] == failed.number
    assert kept.params == failed.params and tr.n_counted(study) == 1


def test_measures_are_the_result_plus_what_the_process_measured():
    out = Outcome({"val_accuracy": 0.5, "pictures": ["/tmp/x.png"]}, peak_memory_mb=900.0, start_memory_mb=50.0,
                  baseline_memory_mb=None, trial_memory_mb=None, cpu_time_s=3.0)
    assert obj.measures(out) == {"val_accuracy": 0.5, "peak_memory_mb": 900.0, "cpu_time_s": 3.0}


def test_a_retry_runs_once_even_when_queued_twice_but_other_trials_may_share_its_parameters(tmp_path):
    config = _config(tmp_path)
    study = _study(tmp_path, config)
    runner = Runner()
    objective = obj.make_objective(_ctx(config, runner, target=10), lambda e: None)
    study.enqueue_trial({"dropout": 0.3, "l2": 0.0})
    study.optimize(objective, n_trials=1)  # trial 0: an unrelated trial that happens to have these parameters
    lost = study.ask(fixed_distributions={})
    compat.storage_of(study).set_trial_state_values(compat.trial_id(lost), TrialState.FAIL)
    frozen = compat.storage_of(study).get_trial(compat.trial_id(lost))
    frozen.params, frozen.distributions = {"dropout": 0.3, "l2": 0.0}, study.get_trials()[0].distributions
    tr.RetryCallback()(study, frozen)
    tr.RetryCallback()(study, frozen)  # queued a second time by another process
    study.optimize(objective, n_trials=2)
    copies = [t for t in study.get_trials() if t.system_attrs.get("retry_history") == [lost.number]]
    assert [t.state for t in copies] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert len(runner.specs) == 2  # trial 0 and one copy of the retry: the same parameters may run twice
