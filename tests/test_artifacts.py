"""Per-trial pictures: drawn as real PNGs, uploaded as Optuna artifacts, never able to fail a trial.

These run the real objective (search.objective.make_objective) in-process with
the trial's child process replaced by a function that returns what a trial
returns: metrics.evaluate on predictions, plus times and class counts.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import optuna
import pytest
from PIL import Image

from search import artifacts, metrics
from search import objective as obj
from search.config import load_config
from search.data import CLASS_NAMES
from search.errors import UsageError
from search.isolate import Outcome

NAMES = list(CLASS_NAMES["fashion_mnist"])


def _result(seed: int) -> dict:
    """What trial.run_trial returns, from noisy but informative predictions of 200 labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(200) % 10
    logits = rng.normal(size=(200, 10))
    logits[np.arange(200), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    r = metrics.evaluate(y, proba, 10)
    r.update(train_time_s=1.0 + seed, test_time_s=0.1, n_train=800, n_test=200,
             train_class_counts=[80] * 10, test_class_counts=[20] * 10)
    return r


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_confusion_matrix_and_recall_pictures_are_real_pngs(tmp_path):
    r = _result(0)
    cm = artifacts.confusion_matrix_png(r["confusion_matrix"], NAMES, tmp_path / "cm.png")
    rec = artifacts.per_class_recall_png(r["per_class_recall"], NAMES, tmp_path / "rec.png",
                                         train_counts=r["train_class_counts"])
    a, b = _png(cm.read_bytes()), _png(rec.read_bytes())
    # Two annotated 10x10 panels and ten labelled bars: far more than a blank canvas.
    assert a.size[0] >= 1000 and cm.stat().st_size > 40_000
    assert b.size[1] >= 400 and rec.stat().st_size > 15_000
    # The row-normalised panel is drawn from the counts, not blank: the picture is not one colour.
    assert len(a.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


@pytest.fixture
def study_env(tmp_path, tiny, monkeypatch):
    """A sqlite study of the tiny config with the trial's child process replaced by _result."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(str(tiny.config(n_trials=2)))
    url = f"sqlite:///{tmp_path / 'pics.db'}"
    study = optuna.create_study(study_name="pics", storage=url, directions=config.directions,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_metric_names(config.metric_names)
    calls = iter(range(100))
    monkeypatch.setattr(obj, "run_isolated",
                        lambda *a, **k: Outcome(result=_result(next(calls)), peak_memory_mb=500.0,
                                                start_memory_mb=400.0))
    return config, url, study


def _ctx(config, artifact_dir):
    return obj.Context(config=config, cache_dir=artifact_dir, cache_key="k", n_classes=10, target=2,
                       artifact_dir=artifact_dir)


def test_each_trial_gets_its_two_pictures_in_the_store_next_to_the_database(study_env, tmp_path):
    config, url, study = study_env
    where = artifacts.prepare(study, url, None)
    assert where == tmp_path / "pics-artifacts" and where.is_dir()
    assert study.user_attrs[artifacts.ARTIFACT_DIR_ATTR] == str(where)

    study.optimize(obj.make_objective(_ctx(config, where), lambda e: None), n_trials=2)

    store = artifacts.store(where)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        metas = artifacts.trial_artifacts(t, study._storage)
        assert sorted(m["filename"] for m in metas) == [artifacts.CONFUSION_PNG, artifacts.RECALL_PNG]
        assert {m["mimetype"] for m in metas} == {"image/png"}
        for m in metas:
            with store.open_reader(m["artifact_id"]) as f:
                assert _png(f.read()).size[0] > 500
        assert "artifact_error" not in t.user_attrs
    assert len(list(where.iterdir())) == 4


def test_a_picture_that_cannot_be_stored_never_fails_the_trial(study_env, tmp_path):
    config, url, study = study_env
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the artifact directory should be")

    study.optimize(obj.make_objective(_ctx(config, blocked), lambda e: None), n_trials=1)

    (t,) = study.get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert t.values[0] == pytest.approx(t.user_attrs["accuracy"])
    assert t.user_attrs["artifact_error"]  # the reason is kept on the trial
    assert artifacts.trial_artifacts(t, study._storage) == []  # no artifact that points at nothing


def test_without_an_artifact_dir_no_pictures_are_drawn(study_env):
    config, url, study = study_env
    study.optimize(obj.make_objective(_ctx(config, None), lambda e: None), n_trials=1)
    (t,) = study.get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert artifacts.trial_artifacts(t, study._storage) == []


def test_a_study_keeps_its_artifact_directory(study_env, tmp_path):
    config, url, study = study_env
    first = artifacts.prepare(study, url, tmp_path / "mine")
    assert first == (tmp_path / "mine").resolve()
    assert artifacts.prepare(study, url, None) == first          # a resume finds it again
    assert artifacts.prepare(study, url, tmp_path / "mine") == first
    with pytest.raises(UsageError, match="keeps its pictures in"):
        artifacts.prepare(study, url, tmp_path / "elsewhere")


def test_default_directory_for_database_servers_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifacts.default_artifact_dir("postgresql://u:p@db/x") == tmp_path / artifacts.NON_FILE_DEFAULT
    assert artifacts.default_artifact_dir(f"sqlite:///{tmp_path}/a/s.db") == tmp_path / "a" / "s-artifacts"
