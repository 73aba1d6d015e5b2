"""Study configs: one TOML file per study in ``study_configs/``, loaded once into frozen objects.

A config holds fixed settings (dataset, balance, preprocessing, backbone, head,
training) and a search space in Optuna's own vocabulary.  Each entry of
``[search_space]`` names one of the searchable settings (``SEARCHABLE``) and
replaces its fixed value per trial.  Everything is validated at load; an error
names the file and the dotted field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, FiniteFloat, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.errors import ConfigError, UsageError

def _configs_dir() -> Path:
    """$SEARCH_CONFIGS_DIR, else ./study_configs, else the one beside this package (editable install)."""
    if "SEARCH_CONFIGS_DIR" in os.environ:
        return Path(os.environ["SEARCH_CONFIGS_DIR"])
    here = Path.cwd() / "study_configs"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "study_configs"


CONFIGS_DIR = _configs_dir()
MAX_STUDY_NAME = 128

# Names are kept here rather than imported so that loading a config never
# imports numpy-heavy or keras modules; tests check they match the registries.
DATASET_NAMES = ("fashion_mnist", "cifar10")
PREPROCESSING_NAMES = ("unit", "caffe")
SAMPLER_NAMES = ("tpe", "random", "grid", "nsga2", "qmc")
METRIC_NAMES = (
    "accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc",
    "worst_class_recall", "reduced_recall", "train_time_s", "test_time_s", "peak_memory_mb",
)
DATASET_N_CLASSES = {"fashion_mnist": 10, "cifar10": 10}
PROFILE_NAMES = ("paper", "long_tail", "step")
HANDLING_NAMES = ("none", "class_weight", "focal", "oversample", "smote")
EVALUATION_NAMES = ("validation", "test")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Dataset(_Frozen):
    name: str
    # 0 means the whole pooled dataset; N > 0 a stratified, seeded slice of N images.
    subset: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(DATASET_NAMES)}")
        return v


class Balance(_Frozen):
    mode: Literal["balanced", "imbalanced"] = "balanced"
    # How an imbalanced training part is made (search.data.profile_targets):
    # paper: drop reduce_fraction of the training samples of reduce_classes;
    # long_tail: class i keeps n_i * rho^(-i/(C-1)); step: the upper half of the classes keep n_i / rho.
    profile: Literal["paper", "long_tail", "step"] = "paper"
    rho: FiniteFloat = Field(10.0, gt=1.0)
    reduce_classes: tuple[int, ...] = (0, 1, 2)
    reduce_fraction: FiniteFloat = Field(0.1, gt=0.0, lt=1.0)

    @field_validator("reduce_classes")
    @classmethod
    def _classes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("must name at least one class")
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError("classes must be distinct non-negative integers")
        return v


class Preprocessing(_Frozen):
    name: str = "unit"
    resize: Literal["bilinear", "nearest"] = "bilinear"

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PREPROCESSING_NAMES:
            raise ValueError(f"unknown preprocessing {v!r}; valid: {', '.join(PREPROCESSING_NAMES)}")
        return v


class Backbone(_Frozen):
    name: Literal["resnet50"] = "resnet50"
    # "imagenet", "random", or a path to a local Keras weights file (no top).
    weights: str = "imagenet"

    @field_validator("weights")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'imagenet', 'random' or a file path")
        return v


class Head(_Frozen):
    units: int = Field(1024, ge=1)
    dropout: FiniteFloat = Field(0.5, ge=0.0, lt=1.0)
    l1: FiniteFloat = Field(0.0, ge=0.0)
    l2: FiniteFloat = Field(0.0, ge=0.0)


class Training(_Frozen):
    optimizer: Literal["adam"] = "adam"
    loss: Literal["categorical_crossentropy"] = "categorical_crossentropy"
    learning_rate: FiniteFloat = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(5, ge=1)
    split_ratio: FiniteFloat = Field(0.8, gt=0.0, lt=1.0)
    seed: int = 0
    # Imbalance handling (search.head / search.data.resample): none, class-weighted loss, focal loss
    # (gamma focal_gamma), random oversampling or SMOTE of the cached training features.
    handling: Literal["none", "class_weight", "focal", "oversample", "smote"] = "none"
    focal_gamma: FiniteFloat = Field(2.0, ge=0.0)
    label_smoothing: FiniteFloat = Field(0.0, ge=0.0, lt=1.0)
    # Where the objectives are measured: "validation" (a stratified, seeded validation_fraction of the
    # training part; the test split's metrics are stored as test_* and never returned to the sampler)
    # or "test" (the paper's protocol: objectives on the test split).
    evaluation: Literal["validation", "test"] = "validation"
    validation_fraction: FiniteFloat = Field(0.2, gt=0.0, lt=1.0)


class FloatDist(_Frozen):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatDist:
        _check_bounds(self.low, self.high, self.log)
        if self.step is not None and (self.log or not self.step > 0 or not math.isfinite(self.step)):
            raise ValueError("step must be a positive number and cannot be combined with log")
        return self

    def values(self) -> list[Any]:
        return [self.low, self.high]


class IntDist(_Frozen):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntDist:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("step cannot be combined with log")
        return self

    def values(self) -> list[Any]:
        return [self.low, self.high]


class CategoricalDist(_Frozen):
    type: Literal["categorical"]
    choices: tuple[Union[bool, int, float, str], ...]

    @field_validator("choices")
    @classmethod
    def _check(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("choices must not be empty")
        keys = [json.dumps(c) for c in v]
        if len(set(keys)) != len(keys):
            raise ValueError("choices must not repeat")
        for c in v:
            if isinstance(c, float) and not math.isfinite(c):
                raise ValueError("choices must be finite")
        return v

    def values(self) -> list[Any]:
        return list(self.choices)


def _check_bounds(low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("low and high must be finite numbers")
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError("log scale needs low > 0")


Distribution = Annotated[Union[FloatDist, IntDist, CategoricalDist], Field(discriminator="type")]

# Searchable name -> (section, field) whose fixed value the search replaces.
SEARCHABLE: dict[str, tuple[str, str]] = {
    "split_ratio": ("training", "split_ratio"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "learning_rate": ("training", "learning_rate"),
    "dropout": ("head", "dropout"),
    "l1": ("head", "l1"),
    "l2": ("head", "l2"),
    "units": ("head", "units"),
    "balance": ("balance", "mode"),
    "profile": ("balance", "profile"),
    "rho": ("balance", "rho"),
    "handling": ("training", "handling"),
    "focal_gamma": ("training", "focal_gamma"),
    "label_smoothing": ("training", "label_smoothing"),
}
_CHOICE_FIELDS = {"mode", "profile", "handling"}  # string-valued: searchable as categorical only


class Objective(_Frozen):
    metric: str
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRIC_NAMES:
            raise ValueError(f"unknown metric {v!r}; valid: {', '.join(METRIC_NAMES)}")
        return v


class Sampler(_Frozen):
    name: str = "tpe"
    seed: int | None = 0

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {v!r}; valid: {', '.join(SAMPLER_NAMES)}")
        return v


class Constraints(_Frozen):
    """Budgets: a trial over one is infeasible (Optuna's trial.set_constraint), so never Pareto-optimal."""

    max_peak_memory_mb: FiniteFloat | None = Field(None, gt=0.0)
    max_train_time_s: FiniteFloat | None = Field(None, gt=0.0)

    def budgets(self) -> dict[str, float]:
        """Metric -> budget, for the budgets that are set."""
        out = {"peak_memory_mb": self.max_peak_memory_mb, "train_time_s": self.max_train_time_s}
        return {k: v for k, v in out.items() if v is not None}


class Run(_Frozen):
    n_trials: int = Field(gt=0)
    timeout: float | None = Field(None, gt=0)
    max_consecutive_failures: int = Field(3, ge=1)


class StudyConfig(_Frozen):
    name: str
    description: str = ""
    dataset: Dataset
    balance: Balance = Balance()
    preprocessing: Preprocessing = Preprocessing()
    backbone: Backbone = Backbone()
    head: Head = Head()
    training: Training = Training()
    search_space: dict[str, Distribution] = Field(default_factory=dict)
    objectives: tuple[Objective, ...]
    sampler: Sampler = Sampler()
    constraints: Constraints = Constraints()
    run: Run

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[Objective, ...]) -> tuple[Objective, ...]:
        if not v:
            raise ValueError("at least one objective is needed")
        names = [o.metric for o in v]
        if len(set(names)) != len(names):
            raise ValueError("an objective's metric appears twice")
        return v

    @model_validator(mode="after")
    def _space(self) -> StudyConfig:
        for name, dist in self.search_space.items():
            if name not in SEARCHABLE:
                raise _FieldError(("search_space", name),
                                  f"not searchable; valid: {', '.join(SEARCHABLE)}")
            section, field = SEARCHABLE[name]
            if field in _INT_FIELDS and isinstance(dist, FloatDist):
                raise _FieldError(("search_space", name, "type"), "must be 'int' or 'categorical'")
            if field in _CHOICE_FIELDS and not isinstance(dist, CategoricalDist):
                raise _FieldError(("search_space", name, "type"), "must be 'categorical'")
            # Every value the search can produce must be a valid fixed value too.
            base = getattr(self, section)
            for key, value in zip(_value_keys(dist), dist.values()):
                try:
                    type(base).model_validate({**base.model_dump(), field: value})
                except ValidationError as e:
                    raise _FieldError(("search_space", name, key), e.errors()[0]["msg"]) from None
        n_classes = DATASET_N_CLASSES[self.dataset.name]
        bad = [c for c in self.balance.reduce_classes if c >= n_classes]
        if bad:
            raise _FieldError(("balance", "reduce_classes"),
                              f"class {bad[0]} does not exist in {self.dataset.name} (classes 0-{n_classes - 1})")
        if self.sampler.name == "grid":
            for name, dist in self.search_space.items():
                if isinstance(dist, FloatDist) and dist.step is None:
                    raise _FieldError(("search_space", name),
                                      "the grid sampler needs categorical, int or stepped float entries")
            if not self.search_space:
                raise _FieldError(("sampler", "name"), "the grid sampler needs a search space")
        return self

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def with_weights(self, weights: str) -> StudyConfig:
        return self.model_copy(update={"backbone": self.backbone.model_copy(update={"weights": weights})})

    def with_seed(self, seed: int) -> StudyConfig:
        return self.model_copy(update={
            "training": self.training.model_copy(update={"seed": seed}),
            "sampler": self.sampler.model_copy(update={"seed": seed}),
        })

    def with_run(self, **changes: Any) -> StudyConfig:
        return self.model_copy(update={"run": self.run.model_copy(update=changes)})

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def identity(self) -> dict[str, Any]:
        """What a stored study must agree on to be resumed: all but run, sampler and prose.

        Settings added after studies were first stored are left out when all of their
        section's are at the values that reproduce the behaviour from before they existed
        (``_LEGACY``), so those studies still resume and keep their identity hash; so are
        unset constraints.
        """
        d = self.as_json()
        for key in ("name", "description", "run", "sampler"):
            d.pop(key)
        for section, fields in _LEGACY.items():
            if all(d[section][f] == legacy for f, legacy in fields.items()):
                for f in fields:
                    del d[section][f]
        if not self.constraints.budgets():
            del d["constraints"]
        return d

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


_INT_FIELDS = {"epochs", "batch_size", "units"}
# Per section, the settings added after the first studies were stored and the values that reproduce the
# behaviour from before; when all of a section's are at those values they are left out of the identity.
_LEGACY: dict[str, dict[str, Any]] = {
    "balance": {"profile": "paper", "rho": 10.0},
    "training": {"handling": "none", "focal_gamma": 2.0, "label_smoothing": 0.0, "evaluation": "test",
                 "validation_fraction": 0.2},
}


def _value_keys(dist: Any) -> list[str]:
    if isinstance(dist, CategoricalDist):
        return [f"choices[{i}]" for i in range(len(dist.choices))]
    return ["low", "high"]


class _FieldError(ValueError):
    """Raised inside validators to point at a field path of our choosing."""

    def __init__(self, loc: tuple, msg: str):
        self.loc = loc
        self.msg = msg
        super().__init__(msg)


def _format_validation(path: Path, err: ValidationError) -> str:
    errs = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # typos first
    first = errs[0]
    msg = first["msg"].removeprefix("Value error, ")
    ctx_err = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _FieldError):
        loc = [str(p) for p in ctx_err.loc]
        msg = ctx_err.msg
    else:
        # Drop pydantic's union-member tags (e.g. 'float', 'function-after[...]').
        loc = [str(p) for p in first["loc"]
               if not (isinstance(p, str) and (p in ("float", "int", "categorical") or "[" in p))]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(errs) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {'.'.join(loc) or '(top level)'}: {msg}{suffix}"


def available_studies(configs_dir: Path = CONFIGS_DIR) -> list[str]:
    return sorted(p.stem for p in configs_dir.glob("*.toml"))


def load_config(study: str, configs_dir: Path = CONFIGS_DIR) -> StudyConfig:
    """Load ``study`` (a name in ``configs_dir`` or a path to a .toml file) into a StudyConfig."""
    path = Path(study)
    if path.suffix != ".toml":
        path = configs_dir / f"{study}.toml"
        if not path.is_file():
            names = ", ".join(available_studies(configs_dir)) or "(none)"
            raise UsageError(f"--study: unknown study {study!r}; available: {names}")
    elif not path.is_file():
        raise UsageError(f"--study: no such config file {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if "name" in raw:
        raise ConfigError(f"{path}: name: unknown key (the study name is the file name)")
    try:
        return StudyConfig.model_validate({"name": path.stem, **raw})
    except ValidationError as e:
        raise ConfigError(_format_validation(path, e)) from None


def check_study_name(name: str) -> str:
    if not name.strip():
        raise UsageError("--study-name: must not be empty")
    if len(name) > MAX_STUDY_NAME:
        raise UsageError(f"--study-name: longer than {MAX_STUDY_NAME} characters")
    return name
