"""Open an Optuna storage read-only and load one study as ``StudyData``.

``StudyData`` holds the trials, the Pareto set, the searched parameters and the
context every output must state: the split the objectives were measured on
(``objective_split``), the Keras backend of the trials and the backbone weights.
Every quality metric is read split-prefixed (``val_*``, ``test_*``); trials
stored before that naming had their objective split's metrics unprefixed, and
are read as if they had been prefixed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from search.config.choices import SPLIT_PREFIX
from search.errors import UsageError

# What a split's quality attributes start with: "val_", "test_".
ATTR_PREFIX = {split: f"{prefix}_" for split, prefix in SPLIT_PREFIX.items()}
OBJECTIVE_SPLIT_ATTR = "search:objective_split"
DATA_ATTR = "search:data"
# The unprefixed quality names trials wrote before every metric carried its split.  A frozen list:
# new trials prefix every quality metric, so no name is ever added here.
LEGACY_QUALITY = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "roc_auc_hard",
                  "worst_class_recall", "reduced_recall", "per_class_recall", "confusion_matrix")


# ---------------------------------------------------------------- storage

def open_readonly_url(url: str | None):
    """An existing storage, opened read-only (search.study.storage.open_readonly); None: the default storage."""
    from search.study import storage

    return storage.open_readonly(storage.storage_url(url))


def open_study(study_name: str, storage: Any):
    """Study ``study_name`` of ``storage`` (a URL, opened read-only, or a storage); an unknown name is a
    ``UsageError`` listing the study names."""
    import optuna

    if storage is None or isinstance(storage, str):
        storage = open_readonly_url(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in storage.get_all_studies()) or "(none)"
        raise UsageError(f"--study: no study {study_name!r} in this storage; studies: {names}") from None


# ---------------------------------------------------------------- names

def split_of(user_attrs: dict[str, Any], default: str) -> str:
    """The split a trial's objectives were measured on: its own record, else ``default``."""
    split = user_attrs.get("objective_split") or user_attrs.get("evaluation") or default
    return split if split in ATTR_PREFIX else default


def normalized(user_attrs: dict[str, Any], split: str) -> dict[str, Any]:
    """A trial's attributes with every quality metric split-prefixed.

    An unprefixed quality metric (a trial from before the split naming) becomes
    ``<prefix><name>`` for the trial's objective split, unless that name is already there.
    """
    out = dict(user_attrs)
    prefix = ATTR_PREFIX[split]
    for name in LEGACY_QUALITY:
        if name in out:
            value = out.pop(name)
            out.setdefault(prefix + name, value)
    return out


def qualified(name: str, split: str) -> str:
    """A metric name with its split prefix (``accuracy`` -> ``test_accuracy``); others unchanged."""
    return ATTR_PREFIX[split] + name if name in LEGACY_QUALITY else name


def number(v: Any) -> float | None:
    """``v`` as a finite float, else None (missing, NaN, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


# ---------------------------------------------------------------- the study

@dataclass
class StudyData:
    """One study as the report needs it.  Trials are sorted by number; ``pareto`` is ``study.best_trials``."""

    study: Any
    objective_names: list[str]     # split-prefixed where they are quality metrics
    directions: list[str]          # "maximize" / "minimize"
    trials: list[Any]
    complete: list[Any]
    pareto: list[Any]
    params: list[str]              # searched parameters (union over trials), sorted
    objective_split: str           # "validation" or "test"
    weights: str | None            # the backbone weights identity recorded with the study
    backends: list[str]            # Keras backends the COMPLETE trials ran on
    class_names: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    storage: Any = None            # the storage ``load`` opened (closed by ``close``)
    _attrs: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.study.study_name

    def close(self) -> None:
        """Release the database connections ``load`` opened (a server keeps them until then)."""
        if self.storage is not None and hasattr(self.storage, "engine"):
            self.storage.engine.dispose()

    @property
    def prefix(self) -> str:
        return ATTR_PREFIX[self.objective_split]

    def attrs(self, t: Any) -> dict[str, Any]:
        """Trial ``t``'s user attributes, quality metrics split-prefixed."""
        if t.number not in self._attrs:
            self._attrs[t.number] = normalized(t.user_attrs, split_of(t.user_attrs, self.objective_split))
        return self._attrs[t.number]

    def value(self, t: Any, name: str) -> float | None:
        """A finite number of trial ``t``: objective ``name`` or attribute ``name``, else None."""
        if name in self.objective_names and t.values is not None:
            return number(t.values[self.objective_names.index(name)])
        return number(self.attrs(t).get(name))

    def settings(self, t: Any) -> dict[str, Any]:
        """Every searchable setting of trial ``t``, searched or fixed (``resolved_params``, then ``params``)."""
        return {**(t.user_attrs.get("resolved_params") or {}), **t.params}

    @property
    def feasible(self) -> list[Any]:
        """COMPLETE trials within their constraints (all of them in a study without constraints)."""
        return [t for t in self.complete if all(c <= 0 for c in t.constraints.values())]

    @property
    def imagenet(self) -> bool:
        return bool(self.weights) and self.weights.startswith("imagenet")

    @property
    def backend_text(self) -> str:
        if not self.backends:
            return "Keras backend not recorded"
        if len(self.backends) > 1:
            return f"Keras backends {', '.join(self.backends)} MIXED (times and memory not comparable)"
        return f"Keras backend {self.backends[0]}"

    @property
    def context(self) -> str:
        """What every figure and table must say: split, backend, weights."""
        return (f"objectives on the {self.objective_split} split; {self.backend_text}; "
                f"weights {self.weights or 'not recorded'}")

    @property
    def weights_warning(self) -> str | None:
        """A warning for studies whose numbers do not measure ImageNet transfer learning."""
        if self.imagenet:
            return None
        if not self.weights:
            return ("warning: this study does not record its backbone weights; its numbers may not measure "
                    "ImageNet transfer learning and are not comparable with the paper's")
        return (f"warning: backbone weights {self.weights} are not ImageNet's: these numbers measure the "
                f"pipeline, not ImageNet transfer learning, and are not comparable with the paper's")

    @property
    def snapshots(self) -> dict[int, list[Any]]:
        """COMPLETE per-epoch snapshot trials by parent trial number (empty when the study has none)."""
        out: dict[int, list[Any]] = {}
        for t in self.complete:
            parent = t.user_attrs.get("snapshot_of")
            if isinstance(parent, int) and not isinstance(parent, bool):
                out.setdefault(parent, []).append(t)
        return out


def study_split(study: Any, trials: list[Any], config: dict[str, Any]) -> str:
    """The study's objective split: its attribute, else its trials', else the config's evaluation, else test."""
    for split in (study.user_attrs.get(OBJECTIVE_SPLIT_ATTR),
                  *(t.user_attrs.get("objective_split") for t in trials),
                  (config.get("training") or {}).get("evaluation")):
        if split in ATTR_PREFIX:
            return split
    return "test"


def from_study(study: Any) -> StudyData:
    """``StudyData`` of a loaded ``optuna.Study`` (any storage)."""
    import optuna
    from optuna.trial import TrialState

    from search.study.lifecycle import CONFIG_ATTR, IDENTITY_ATTR

    attrs = study.user_attrs
    config = attrs.get(CONFIG_ATTR) or {}
    # Trials Optuna created but that ran nothing (another process had reached the target) are no result.
    trials = sorted((t for t in study.get_trials(deepcopy=False)
                     if not (t.state == TrialState.PRUNED and not t.params and "reason" in t.user_attrs)),
                    key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    split = study_split(study, trials, config)
    n = len(study.directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        names = study.metric_names or ([f"objective_{i}" for i in range(n)] if n > 1 else ["value"])
    identity = attrs.get(IDENTITY_ATTR) or {}
    weights = (identity.get("backbone") or {}).get("weights") or (config.get("backbone") or {}).get("weights")
    return StudyData(
        study=study, objective_names=[qualified(m, split) for m in names],
        directions=[d.name.lower() for d in study.directions],
        trials=trials, complete=complete,
        pareto=sorted(study.best_trials, key=lambda t: t.number) if complete else [],
        params=sorted({k for t in trials for k in t.params}),
        objective_split=split, weights=weights,
        backends=sorted({t.user_attrs["keras_backend"] for t in complete if t.user_attrs.get("keras_backend")}),
        class_names=[str(c) for c in (attrs.get(DATA_ATTR) or {}).get("class_names") or []],
        config=config)


def _ours(study):
    """``study`` if search.run made it; a study of plain Optuna has none of the records a report is made of."""
    from search.study.lifecycle import CONFIG_ATTR

    if CONFIG_ATTR not in study.user_attrs:
        raise UsageError(f"--study: {study.study_name!r} was not created by search.run (it has no {CONFIG_ATTR} "
                         f"attribute); search.report reads only this service's studies")
    return study


def load(study_name: str, storage_url: str | None) -> StudyData:
    """Open ``storage_url`` read-only and load ``study_name``; errors as ``open_readonly_url`` and ``open_study``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_readonly_url(storage_url)
    try:
        d = from_study(_ours(open_study(study_name, storage)))
    except BaseException:
        storage.engine.dispose()
        raise
    d.storage = storage
    return d
