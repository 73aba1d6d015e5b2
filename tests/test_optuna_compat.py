"""search.study.optuna_compat: every private Optuna attribute the service uses, exercised on the installed Optuna."""

from __future__ import annotations

import optuna
import pytest

from search.study import optuna_compat as compat


def test_the_installed_optuna_is_one_the_module_was_checked_against():
    assert optuna.__version__.startswith(compat.CHECKED_WITH), (
        f"Optuna {optuna.__version__}: check search/study/optuna_compat.py against it, then add it to CHECKED_WITH")


def test_ids_and_storage_are_those_the_storage_api_takes():
    study = optuna.create_study()
    trial = study.ask()
    storage = compat.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_trial(compat.trial_id(trial)).number == trial.number
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert compat.trial_id(frozen) == compat.trial_id(trial)
    assert storage.get_study_name_from_id(compat.study_id(study)) == study.study_name


def test_telling_a_finished_trial_is_recognised():
    study = optuna.create_study()
    trial = study.ask()
    compat.storage_of(study).set_trial_state_values(compat.trial_id(trial), optuna.trial.TrialState.FAIL)
    with pytest.raises(ValueError) as e:
        study.tell(trial, 1.0)
    assert compat.is_cannot_tell(e.value)
    assert not compat.is_cannot_tell(ValueError("something else"))


def test_an_artifact_recorded_by_hand_is_the_one_optuna_and_the_dashboard_read():
    study = optuna.create_study()
    trial = study.ask()
    key, value = compat.artifact_record("0123-abcd", "roc.png", "image/png")
    assert key.startswith(compat.ARTIFACT_PREFIX)
    compat.storage_of(study).set_trial_system_attr(compat.trial_id(trial), key, value)
    (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=compat.storage_of(study))
    assert (meta.artifact_id, meta.filename, meta.mimetype) == ("0123-abcd", "roc.png", "image/png")
