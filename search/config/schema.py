"""The schema of a study config: frozen pydantic sections, validated against the service's registries.

A config holds fixed settings (dataset, balance, preprocessing, augmentation,
backbone, head, training), a search space in Optuna's own vocabulary
(``float``/``int``/``categorical`` with ``low``/``high``/``log``/``step``/``choices``)
whose entries name searchable settings (``SEARCHABLE``) and replace their fixed
values per trial, optional named arms (sets of fixed values a grid compares, as
the paper's per-table settings), objectives, a sampler and run limits.

Every named choice is checked against its registry in ``search.config.choices``
(``DATASETS``, ``METRICS``, ...), so a new entry there is valid here at once.  Numeric
fields have upper bounds wherever a larger value would only make a run take days.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import (AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator,
                      model_validator)

from search.config.choices import (AUGMENTATIONS, BACKBONES, DATASETS, EARLY_STOPPING, EVALUATIONS, HANDLINGS, METRICS,
                                   PREPROCESSINGS, PROFILES, SAMPLERS, stored_name)
from search.errors import unknown

DAY_S = 86_400.0

# TOML already types its values: a number field takes no string, an int field no float, and no field takes a
# boolean for a number (pydantic's lax mode would turn "2", 16.0 and true into the int 2, 16 and 1).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]


def _registered(field: str, registry: Any, what: str) -> Any:
    """A validator of ``field`` that refuses a name ``registry`` does not hold, listing the ones it does."""
    def check(cls: type, v: str) -> str:
        return _registry_check(v, registry, what)

    return field_validator(field)(classmethod(check))


def _registry_check(v: str, registry: Any, what: str) -> str:
    if v not in registry:
        raise ValueError(unknown(what, v, registry))
    return v


class FieldError(ValueError):
    """Raised inside validators to point at a field path of our choosing (see load.format_validation)."""

    def __init__(self, loc: tuple, msg: str):
        self.loc = loc
        self.msg = msg
        super().__init__(msg)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Dataset(_Frozen):
    name: str
    # 0 means the whole pooled dataset; N > 0 a stratified, seeded slice of N images.
    subset: Int = Field(0, ge=0)
    # A user's own data ("folder", "npz"): where they are, relative to the directory the command runs in.
    path: str | None = Field(None, min_length=1)

    _known = _registered("name", DATASETS, "dataset")


class Balance(_Frozen):
    mode: Literal["balanced", "imbalanced"] = "balanced"
    profile: str = "paper"          # search.config.choices.PROFILES
    rho: Float = Field(10.0, gt=1.0, le=1e4)
    reduce_classes: tuple[Int, ...] = (0, 1, 2)
    reduce_fraction: Float = Field(0.1, gt=0.0, lt=1.0)

    _known = _registered("profile", PROFILES, "imbalance profile")

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

    _known = _registered("name", PREPROCESSINGS, "preprocessing")


class Augmentation(_Frozen):
    """Training-row augmentation (the paper's: rotation 20 degrees, shifts 0.2, horizontal flip)."""

    mode: str = "none"              # search.config.choices.AUGMENTATIONS
    rotation: Float = Field(20.0, ge=0.0, le=180.0)   # degrees
    shift: Float = Field(0.2, ge=0.0, lt=1.0)         # fraction of width and height
    horizontal_flip: Bool = True
    views: Int = Field(4, ge=1, le=64)                      # augmented copies in the view cache

    _known = _registered("mode", AUGMENTATIONS, "augmentation mode")


class Backbone(_Frozen):
    name: str = "resnet50"
    # "imagenet", "random", or a path to a local Keras weights file (no top).
    weights: str = "imagenet"
    # Pixels of the square input images are resized to (the paper's 28 -> 32).
    input_size: Int = Field(32, ge=1, le=1024)

    _known = _registered("name", BACKBONES, "backbone")

    @field_validator("weights")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'imagenet', 'random' or a file path")
        return v


class Head(_Frozen):
    units: Int = Field(1024, ge=1, le=16384)
    dropout: Float = Field(0.5, ge=0.0, lt=1.0)
    l1: Float = Field(0.0, ge=0.0, le=1.0)
    l2: Float = Field(0.0, ge=0.0, le=1.0)


class Training(_Frozen):
    optimizer: Literal["adam"] = "adam"
    loss: Literal["categorical_crossentropy"] = "categorical_crossentropy"
    learning_rate: Float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: Int = Field(32, ge=1, le=65536)
    epochs: Int = Field(5, ge=1, le=1000)
    split_ratio: Float = Field(0.8, gt=0.0, lt=1.0)
    seed: Int = Field(0, ge=0, lt=2**32)
    handling: str = "none"          # search.config.choices.HANDLINGS
    focal_gamma: Float = Field(2.0, ge=0.0, le=10.0)
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    evaluation: str = "validation"  # search.config.choices.EVALUATIONS: where the objectives are measured
    validation_fraction: Float = Field(0.2, gt=0.0, lt=1.0)

    _handling = _registered("handling", HANDLINGS, "handling")

    _evaluation = _registered("evaluation", EVALUATIONS, "evaluation")


class FloatDist(_Frozen):
    type: Literal["float"]
    low: Float
    high: Float
    log: Bool = False
    step: Float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatDist:
        _check_bounds(self.low, self.high, self.log)
        if self.step is not None and (self.log or not self.step > 0):
            raise ValueError("step must be a positive number and cannot be combined with log")
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(f"step {self.step} is larger than the range {self.low}..{self.high}")
        return self

    def values(self) -> list[Any]:
        return [self.low, self.high]


class IntDist(_Frozen):
    type: Literal["int"]
    low: Int
    high: Int
    log: Bool = False
    step: Int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntDist:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("step cannot be combined with log")
        if self.step > self.high - self.low:
            raise ValueError(f"step {self.step} is larger than the range {self.low}..{self.high}")
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

# Searchable name -> (section, field) whose fixed value the search (or an arm) replaces.
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
    "augmentation": ("augmentation", "mode"),
    "backbone": ("backbone", "name"),
    "input_size": ("backbone", "input_size"),
}
_INT_FIELDS = {"epochs", "batch_size", "units", "input_size"}
# Searchable as categorical only: string-valued, or (input_size) each value is a feature cache of its own.
_CHOICE_FIELDS = {"mode", "profile", "handling", "name", "input_size"}

# A named set of fixed values ({searchable name: value}); the search space's `arm` picks one per trial.
Arm = dict[str, Union[bool, int, float, str]]


class Objective(_Frozen):
    metric: str
    direction: Literal["maximize", "minimize"]
    # The sampler (and so the Pareto front) sees the value rounded to this step; the measured value stays in the
    # trial's user attributes.  For a measure whose noise between identical trials would otherwise decide which
    # trials are Pareto-optimal (fmnist_reg's trial_memory_mb: about 1.5 MB of noise, and the same work in every
    # trial).
    resolution: Float | None = Field(None, ge=1e-9)

    _known = _registered("metric", METRICS, "metric")


class Sampler(_Frozen):
    name: str = "tpe"
    seed: Int | None = Field(0, ge=0, lt=2**32)

    _known = _registered("name", SAMPLERS, "sampler")


class Constraints(_Frozen):
    """Budgets: a trial over one is infeasible (Optuna's trial.set_constraint), so never Pareto-optimal."""

    max_peak_memory_mb: Float | None = Field(None, gt=0.0)
    max_train_time_s: Float | None = Field(None, gt=0.0)

    def budgets(self) -> dict[str, float]:
        """Metric -> budget, for the budgets that are set."""
        out = {"peak_memory_mb": self.max_peak_memory_mb, "train_time_s": self.max_train_time_s}
        return {k: v for k, v in out.items() if v is not None}


class Run(_Frozen):
    # Target number of COMPLETE trials; a grid study defaults to (and is capped at) its number of points.
    n_trials: Int | None = Field(None, gt=0, le=100_000)
    timeout: Float | None = Field(None, gt=0, le=30 * DAY_S)
    max_consecutive_failures: Int = Field(3, ge=1, le=1000)
    # A failed grid point, or a trial killed by the kernel or its time limit in any sampler, is run again
    # with the same parameters up to this many times (search.study.lifecycle.RetryPolicy).
    max_retries: Int = Field(2, ge=0, le=10)
    # Wall seconds after which a trial's process is killed; None: 10x the slowest COMPLETE trial (none
    # for the first trial).
    trial_timeout: Float | None = Field(None, gt=0, le=7 * DAY_S)
    # Record each epoch e < E of a trial inside the searched epochs range as its own COMPLETE trial
    # (search.study.snapshots); "moasha" also stops a trial early at its rungs.
    epoch_snapshots: Bool = False
    early_stopping: str = "none"    # search.config.choices.EARLY_STOPPING
    rungs: tuple[Int, ...] = (5, 10, 20)
    # Rows of the evaluation split the per-epoch learning curve is measured on: a stratified, seeded sample,
    # so the curve costs one small prediction per epoch (the whole split after every epoch was 7.7 s of a
    # 92 s trial, measured).  0: the whole split.  The final measures always use the whole split.
    curve_rows: Int = Field(5_000, ge=0, le=10_000_000)

    _known = _registered("early_stopping", EARLY_STOPPING, "early stopping")


class StudyConfig(_Frozen):
    """One study's config, loaded once from ``study_configs/NAME.toml`` and frozen: its fixed settings, its
    search space (Optuna's vocabulary), arms, objectives, constraints, sampler and run limits."""

    name: str
    description: str = ""
    dataset: Dataset
    balance: Balance = Balance()
    preprocessing: Preprocessing = Preprocessing()
    augmentation: Augmentation = Augmentation()
    backbone: Backbone = Backbone()
    head: Head = Head()
    training: Training = Training()
    search_space: dict[str, Distribution] = Field(default_factory=dict)
    arms: dict[str, Arm] = Field(default_factory=dict)
    objectives: tuple[Objective, ...]
    sampler: Sampler = Sampler()
    constraints: Constraints = Constraints()
    run: Run = Run()

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
            if name == "arm":
                self._check_arm_choice(dist)
                continue
            if name not in SEARCHABLE:
                raise FieldError(("search_space", name),
                                 f"not searchable; valid: {', '.join(['arm', *SEARCHABLE])}")
            section, field = SEARCHABLE[name]
            if field in _INT_FIELDS and isinstance(dist, FloatDist):
                raise FieldError(("search_space", name, "type"), "must be 'int' or 'categorical'")
            if field in _CHOICE_FIELDS and not isinstance(dist, CategoricalDist):
                raise FieldError(("search_space", name, "type"), "must be 'categorical'")
            for key, value in zip(_value_keys(dist), dist.values()):
                self._check_value(("search_space", name, key), name, value)
        for arm, overrides in self.arms.items():
            for name, value in overrides.items():
                if name not in SEARCHABLE:
                    raise FieldError(("arms", arm, name), f"not a searchable setting; valid: {', '.join(SEARCHABLE)}")
                if name in self.search_space:
                    raise FieldError(("arms", arm, name), "is also in search_space; set it in one place")
                self._check_value(("arms", arm, name), name, value)
        if self.arms and "arm" not in self.search_space:
            raise FieldError(("search_space",), "arms are defined but search_space has no `arm` entry "
                                                "(e.g. arm = { type = \"categorical\", choices = [...] })")
        self._check_sources()
        self._check_grid()
        self._check_run()
        n_classes = DATASETS[self.dataset.name].n_classes
        if n_classes is not None:  # a user's own data: checked when they are read (search.api)
            self.check_classes(n_classes, self.dataset.name)
            self._check_sizes(n_classes)
        return self

    def _check_sources(self) -> None:
        for name in self.values_of("backbone"):
            for size in self.values_of("input_size"):
                if size < BACKBONES[name].min_size:
                    loc = ("search_space", "input_size") if "input_size" in self.search_space else \
                        ("backbone", "input_size")
                    raise FieldError(loc, f"{size} is below {name}'s minimum input size {BACKBONES[name].min_size}")
        if len(self.feature_sets()) > 1 and set(self.values_of("augmentation")) != {"none"}:
            raise FieldError(("augmentation", "mode"), "augmented views and online augmentation take one backbone "
                                                       "and input size; a study that searches them uses mode \"none\"")
        d = self.dataset
        if DATASETS[d.name].needs_path and d.path is None:
            raise FieldError(("dataset", "path"), f"dataset {d.name!r} reads your data from path; set "
                                                  f"path = \"{'DIR' if d.name == 'folder' else 'FILE.npz'}\"")
        if d.path is not None and not DATASETS[d.name].needs_path:
            readers = ", ".join(n for n, c in DATASETS.items() if c.needs_path)
            raise FieldError(("dataset", "path"), f"only {readers} take a path; {d.name} is read from --data-dir "
                                                  f"or its usual places")

    def check_classes(self, n_classes: int, where: str) -> None:
        """The paper profile's minority classes must exist in the data."""
        if bad := [c for c in self.balance.reduce_classes if c >= n_classes]:
            raise FieldError(("balance", "reduce_classes"),
                             f"class {bad[0]} does not exist in {where} (classes 0-{n_classes - 1})")

    def min_class_images(self) -> int:
        """The fewest images a class needs so that every part of every split the study can make gets one."""
        vf = self.training.validation_fraction if self.training.evaluation == "validation" else 0.0
        shares = [min(1 - r, r * (1 - vf), *([r * vf] if vf else [])) for r in self.values_of("split_ratio")]
        return max(2, math.ceil(1 / min(shares) - 1e-9))

    def feature_sets(self) -> list[tuple[str, int]]:
        """Every (backbone, input size) a trial can use: each has its own feature cache."""
        return sorted({(str(b), int(s)) for b in self.values_of("backbone") for s in self.values_of("input_size")})

    def values_of(self, name: str) -> list[Any]:
        """Every value (range ends, choices, arms' values, the fixed one) a searchable setting can take."""
        out = list(self.search_space[name].values()) if name in self.search_space else []
        arm_values = [overrides[name] for overrides in self.arms.values() if name in overrides]
        out += arm_values
        if name not in self.search_space and len(arm_values) < max(1, len(self.arms)):
            section, field = SEARCHABLE[name]
            out.append(getattr(getattr(self, section), field))
        return out

    def _check_sizes(self, n_classes: int) -> None:
        """With a known number of images (``subset``), every split part must hold each class, and a batch fit."""
        n = self.dataset.subset
        if not n:
            return
        vf = self.training.validation_fraction if self.training.evaluation == "validation" else 0.0
        ratios = self.values_of("split_ratio")
        for r in ratios:
            parts = {"test": n * (1 - r), "training": n * r * (1 - vf)}
            if vf:
                parts["validation"] = n * r * vf
            part, size = min(parts.items(), key=lambda kv: kv[1])
            if int(size) < n_classes:
                raise FieldError(("dataset", "subset"),
                                 f"{n} images give a {part} part of {int(size)} at split_ratio {r}, fewer than "
                                 f"the {n_classes} classes a stratified split needs (got {n})")
        rows = int(n * min(ratios) * (1 - vf))
        too_big = [b for b in self.values_of("batch_size") if b > rows]
        if too_big:
            loc = ("search_space", "batch_size") if "batch_size" in self.search_space else ("training", "batch_size")
            raise FieldError(loc, f"{too_big[0]} is larger than the {rows} training rows of the smallest split "
                                  f"(dataset.subset {n}, split_ratio {min(ratios)}) (got {too_big[0]})")

    def _check_arm_choice(self, dist: Any) -> None:
        if not isinstance(dist, CategoricalDist):
            raise FieldError(("search_space", "arm", "type"), "must be 'categorical' over the names in [arms]")
        missing = [c for c in dist.choices if c not in self.arms]
        if missing:
            raise FieldError(("search_space", "arm", "choices"),
                             f"no [arms.{missing[0]}] section; arms: {', '.join(self.arms) or '(none)'}")

    def _check_value(self, loc: tuple, name: str, value: Any) -> None:
        """Every value the search or an arm can produce must be a valid fixed value too."""
        section, field = SEARCHABLE[name]
        base = getattr(self, section)
        try:
            type(base).model_validate({**base.model_dump(), field: value}, strict=True)
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise FieldError(loc, f"{msg} (got {value!r})") from None

    def _check_grid(self) -> None:
        if self.sampler.name != "grid":
            return
        if not self.search_space:
            raise FieldError(("sampler", "name"), "the grid sampler needs a search space")
        for name, dist in self.search_space.items():
            if isinstance(dist, FloatDist) and dist.step is None:
                raise FieldError(("search_space", name),
                                 "the grid sampler needs categorical, int or stepped float entries")

    def _check_run(self) -> None:
        if self.run.n_trials is None and self.sampler.name != "grid":
            raise FieldError(("run", "n_trials"), "required (only a grid study defaults to its number of points)")
        snapshots = self.run.epoch_snapshots or self.run.early_stopping != "none"
        if snapshots and not isinstance(self.search_space.get("epochs"), (IntDist, CategoricalDist)):
            raise FieldError(("run", "epoch_snapshots" if self.run.epoch_snapshots else "early_stopping"),
                             "needs `epochs` in search_space (snapshots are the shorter schedules it could pick)")
        if self.run.early_stopping != "none" and not self.run.epoch_snapshots:
            raise FieldError(("run", "early_stopping"), "needs run.epoch_snapshots = true (it ranks the snapshots)")
        if list(self.run.rungs) != sorted(set(self.run.rungs)) or not self.run.rungs or self.run.rungs[0] < 1:
            raise FieldError(("run", "rungs"), "must be increasing positive epoch numbers")

    # ------------------------------------------------------------ derived views

    @property
    def objective_split(self) -> str:
        """Where the objectives are measured: "validation" or "test"."""
        return self.training.evaluation

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def objective_values(self, measured: dict[str, Any]) -> list[float]:
        """The values the sampler gets from a trial's measures: each objective's, at its ``resolution``."""
        out = []
        for objective, name in zip(self.objectives, self.metric_names):
            v = float(measured[name])
            r = objective.resolution
            out.append(v if r is None or not math.isfinite(v) else round(v / r) * r)
        return out

    @property
    def metric_names(self) -> list[str]:
        """The objectives' stored names, each saying its split (``val_accuracy``, ``train_time_s``)."""
        return [stored_name(o.metric, self.objective_split) for o in self.objectives]

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


def _value_keys(dist: Any) -> list[str]:
    if isinstance(dist, CategoricalDist):
        return [f"choices[{i}]" for i in range(len(dist.choices))]
    return ["low", "high"]
