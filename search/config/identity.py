"""A study's identity: everything its trials' numbers depend on, recorded at creation, compared on resume.

The identity is the config minus what does not change a trial's measurements
(name, prose, run limits, the sampler) plus what the config does not say:
the backbone weights' content, the data's fingerprint, and the runtime (the
Keras backend of the trials and of the feature extraction, and the versions
of Keras and its backends).  Two identities that differ mean two studies:
resuming with another one is refused, listing the differences.

Settings added after studies were first stored are left out while they are at
the values that reproduce the behaviour from before they existed (``LEGACY``),
so those studies keep their identity.
"""

from __future__ import annotations

import json
from typing import Any

# Per section, the settings added after the first studies were stored and the values that reproduce the
# behaviour from before; when all of a section's are at those values they are left out of the identity.
LEGACY: dict[str, dict[str, Any]] = {
    "dataset": {"path": None},
    "backbone": {"input_size": 32},
    "balance": {"profile": "paper", "rho": 10.0},
    "training": {"handling": "none", "focal_gamma": 2.0, "label_smoothing": 0.0, "evaluation": "test",
                 "validation_fraction": 0.2},
    "augmentation": {"mode": "none", "rotation": 20.0, "shift": 0.2, "horizontal_flip": True, "views": 4},
}
_NOT_IDENTITY = ("name", "description", "run", "sampler")


def config_identity(config: Any) -> dict[str, Any]:
    """What of the config a stored study must agree on: all but run, sampler and prose."""
    d = config.as_json()
    for key in _NOT_IDENTITY:
        d.pop(key)
    for section, fields in LEGACY.items():
        if all(d[section][f] == legacy for f, legacy in fields.items()):
            for f in fields:
                del d[section][f]
            if not d[section]:
                del d[section]
    for objective in d["objectives"]:
        if objective.get("resolution") is None:  # added later; absent is the behaviour from before
            objective.pop("resolution", None)
    if not config.constraints.budgets():
        del d["constraints"]
    if not d.get("arms"):
        d.pop("arms", None)
    return d


def study_identity(config: Any, weights_identity: str, data_fingerprint: str,
                   runtime: dict[str, Any]) -> dict[str, Any]:
    """The identity recorded on a study: config identity, weights, data and runtime."""
    ident = config_identity(config)
    ident["backbone"] = {**ident["backbone"], "weights": weights_identity}
    ident["data_fingerprint"] = data_fingerprint
    ident["runtime"] = dict(runtime)
    return ident


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field: old -> new"`` for every dotted field where two identities differ."""
    a = _flatten(json.loads(json.dumps(stored)))
    b = _flatten(json.loads(json.dumps(current)))
    return [f"{k}: {json.dumps(a.get(k, '(absent)'))} -> {json.dumps(b.get(k, '(absent)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]
