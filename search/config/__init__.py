"""Study configs: one TOML file per study in ``study_configs/``, loaded once into frozen, validated objects.

- ``schema``: the sections and the search space (Optuna's vocabulary), validated against the registries;
- ``identity``: what a stored study must agree on to be resumed, and how two identities differ;
- ``load``: finding and reading a config file, errors that name the file and the field, study names.
"""

from search.config.identity import differences, study_identity
from search.config.load import available_studies, check_study_name, configs_dir, load_config, safe_name
from search.config.schema import (SEARCHABLE, Arm, CategoricalDist, FloatDist, IntDist, StudyConfig)

__all__ = ["SEARCHABLE", "Arm", "CategoricalDist", "FloatDist", "IntDist", "StudyConfig", "available_studies",
           "check_study_name", "configs_dir", "differences", "load_config", "safe_name", "study_identity"]
