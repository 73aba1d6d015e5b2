"""search.config.spec: the trial's typed contract, and the JSON it crosses the process boundary as."""

import dataclasses
import json

import pytest

from search.config import SEARCHABLE, load_config
from search.config.spec import Pictures, TrialParams, TrialSpec
from search.study.objective import Context, resolve_params, trial_spec

from .conftest import ROOT


def _spec(**changes) -> TrialSpec:
    config = load_config("smoke", ROOT / "study_configs")
    ctx = Context(config=config, cache_dir=ROOT, cache_key="k", n_classes=10, target=1, artifact_dir=ROOT,
                  weights="random(seed=0)")
    return trial_spec(ctx, resolve_params(config, {"dropout": 0.3}), number=4).replace(**changes)


def test_the_params_are_every_searchable_setting():
    assert {f.name for f in dataclasses.fields(TrialParams)} == {*SEARCHABLE, "arm"}


def test_a_spec_round_trips_through_json():
    full = _spec(views_key="v", online={"backend": "tensorflow", "dataset": "fashion_mnist"},
                 snapshots={"epochs": [1], "quality": ["test_accuracy"], "directions": ["maximize"], "rungs": {}})
    for spec in (_spec(), full):
        assert TrialSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec
    assert full.pictures == Pictures("trial 4", "jax", "random(seed=0)")


def test_the_spec_is_built_from_the_config_once():
    s = _spec()
    assert (s.params.dropout, s.params.epochs, s.params.units, s.seed, s.evaluation) == (0.3, 1, 1024, 0, "test")
    assert "views_key" not in s.as_dict() and "arm" not in s.as_dict()["params"]


def test_a_spec_missing_a_setting_is_refused_by_name():
    job = _spec().as_dict()
    del job["params"]["rho"]
    with pytest.raises(TypeError, match="params lack rho"):
        TrialSpec.from_dict(job)
    with pytest.raises(TypeError, match="record_to"):
        TrialSpec.from_dict({**_spec().as_dict(), "record_to": "/x"})
