"""The trial's contract: what a trial process is given (``TrialSpec``), typed, and the JSON it crosses the process
boundary as (``as_dict`` / ``from_dict``, a round trip).

Built in one place, ``search.study.objective.trial_spec``, from a resolved parameter set
(``search.study.objective.resolve_params``: every searchable setting has its value, from the suggestion, the arm or
the config), so nothing that reads a spec restates a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from search.config import SEARCHABLE


@dataclass(frozen=True)
class TrialParams:
    """Every searchable setting's value for one trial (``search.config.SEARCHABLE``), and its arm if any."""

    split_ratio: float
    epochs: int
    batch_size: int
    learning_rate: float
    dropout: float
    l1: float
    l2: float
    units: int
    balance: str
    profile: str
    rho: float
    handling: str
    focal_gamma: float
    label_smoothing: float
    augmentation: str
    backbone: str
    input_size: int
    arm: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.arm is None:
            del out["arm"]
        return out


@dataclass(frozen=True)
class Pictures:
    """What a trial's pictures are titled with; ``tmp_dir``: where they are drawn (default: the system's)."""

    header: str
    backend: str
    weights: str
    tmp_dir: str | None = None


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial process needs: where its features are, its parameters, its split and what to record."""

    cache_dir: str                     # the feature cache, and the entry of this study's plain features
    key: str
    n_classes: int
    class_names: tuple[str, ...]
    params: TrialParams
    seed: int                          # of the split, the imbalance draw, initialisation and shuffling
    reduce_classes: tuple[int, ...]    # the paper profile's minorities
    reduce_fraction: float
    evaluation: str                    # the objective split: "validation" or "test"
    validation_fraction: float
    augmentation: dict[str, Any]       # the config's [augmentation] section
    curve_rows: int                    # the learning curve's sample of the evaluation split (0: all of it)
    views_key: str | None = None       # the view cache's entry (augmentation "views")
    online: dict[str, Any] | None = None      # images and backbone of augmentation "online" (search.training.augment)
    pictures: Pictures | None = None          # None: no pictures
    snapshots: dict[str, Any] | None = None  # epochs to evaluate, earlier rung vectors (search.study.snapshots.plan)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready job; optional parts that are not set are left out."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(params=self.params.as_dict(), class_names=list(self.class_names),
                   reduce_classes=list(self.reduce_classes),
                   pictures=_set(dataclasses.asdict(self.pictures)) if self.pictures else None)
        return _set(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialSpec":
        """The spec ``as_dict`` made; a missing or unknown field is a TypeError that names it."""
        params = dict(d["params"])
        if missing := [k for k in SEARCHABLE if k not in params]:
            raise TypeError(f"trial spec: params lack {', '.join(missing)}")
        pictures = Pictures(**d["pictures"]) if d.get("pictures") else None
        return cls(**{**d, "params": TrialParams(**params), "class_names": tuple(d["class_names"]),
                      "reduce_classes": tuple(d["reduce_classes"]), "pictures": pictures})

    def replace(self, **changes: Any) -> "TrialSpec":
        return dataclasses.replace(self, **changes)


def _set(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
