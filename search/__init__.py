"""Hyperparameter search for transfer learning on a frozen ResNet50, on Optuna.

The public API (see search/api.py)::

    import search

    config = search.load_config("smoke", n_trials=3)          # study_configs/smoke.toml, validated
    s = search.Search(config, storage="sqlite:///studies.db", weights="random")
    summary = s.optimize()                                     # create or resume, extract once, run to target
    s.study.best_trials                                        # the plain optuna.Study
    search.run_trial(s.trial_spec({"dropout": 0.3}))           # one trial, no storage
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Each public name and the module that defines it.  Imported on first use: a trial process imports
# search.trial.child, which must not pull Optuna in through this package's __init__.
_EXPORTS = {
    "load_config": "search.api",
    "Search": "search.api",
    "run_trial": "search.api",
    "confirm_study": "search.api",
    "Confirmation": "search.api",
    "default_study_name": "search.api",
    "TrialSpec": "search.config.spec",
    "StudyConfig": "search.config",
    "available_studies": "search.config",
    "RunSummary": "search.study.lifecycle",
    "SearchError": "search.errors",
    "UsageError": "search.errors",
    "ConfigError": "search.errors",
    "DataError": "search.errors",
    "StorageError": "search.errors",
    "TrialFailed": "search.errors",
    "Interrupted": "search.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
