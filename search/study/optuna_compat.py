"""The one place that reaches into Optuna's private attributes, each for a need its public API does not meet.

Checked against Optuna ``CHECKED_WITH`` (tests/test_optuna_compat.py pins it and exercises every function): a new
Optuna that renames one of these fails that test, not a study.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import optuna
from optuna.artifacts import _upload

CHECKED_WITH = ("5.0", "5.1")


def trial_id(trial: Any) -> int:
    """The storage's id of a ``Trial`` or ``FrozenTrial`` (the storage API is keyed by it; Optuna exposes only the
    number, which is per study)."""
    return trial._trial_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study was opened on (to write a trial's attributes after it ended, and to add trials with
    a template)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study (``create_new_trial`` takes it)."""
    return study._study_id


ARTIFACT_PREFIX = _upload.ARTIFACTS_ATTR_PREFIX  # the key of a trial's system attribute that records an artifact


def artifact_record(artifact_id: str, filename: str, mimetype: str) -> tuple[str, str]:
    """The trial system attribute (key, value) by which ``upload_artifact`` records an artifact and
    ``get_all_artifact_meta`` (the dashboard) finds it: written by hand to record it *before* the file, where
    Optuna writes the file first and so leaves an unreferenced one when killed in between."""
    meta = _upload.ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype=mimetype, encoding=None)
    return ARTIFACT_PREFIX + artifact_id, json.dumps(dataclasses.asdict(meta))


def is_cannot_tell(e: BaseException) -> bool:
    """Optuna's ValueError for telling a trial that another process already finished (it has no own type)."""
    return isinstance(e, ValueError) and "Cannot tell a" in str(e)
