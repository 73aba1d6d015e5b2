"""The runtime a study's times depend on: the Keras backends of trials and extraction, their versions, and the
training steps per compiled call.  Recorded with every study (search.config.identity) and every feature cache key.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from importlib import metadata

from search.config.choices import BACKENDS
from search.errors import UsageError, unknown

# JAX is the default trial backend: on these 2-core machines it trains the fmnist_reg head 2.2x faster than
# TensorFlow with 31% less peak memory (benchmarks/RESULTS.md).
DEFAULT_BACKEND = "jax"
DEFAULT_EXTRACTION_BACKEND = "tensorflow"   # ResNet50 forward is 2.5x faster on TF than JAX on these CPUs
# Training steps per call of Keras' compiled train function (its ``steps_per_execution``): the same steps on the
# same batches in the same order, so the same weights; but Keras' per-call work (callbacks, the NaN check that
# waits for the step, the epoch iterator) runs once per 32 steps, not once per step.  At batch 32 that work was
# 3-9% of a steady epoch on these 2-core machines (python -m benchmarks.dispatch, benchmarks/RESULTS.md).
# Training time depends on it, so it is part of the runtime identity.
STEPS_PER_CALL = 32


def resolve_backend(name: str | None) -> str:
    """The Keras backend trials train on: ``name``, else $KERAS_BACKEND, else JAX; it must be installed."""
    name = name or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise UsageError(unknown("Keras backend", name, BACKENDS))
    if importlib.util.find_spec(BACKENDS[name]) is None:
        raise UsageError(f"Keras backend {name} is not installed (pip install {BACKENDS[name]}); "
                         f"backends: {', '.join(BACKENDS)}")
    return name


def extraction_backend() -> str:
    """The Keras backend the one-time extraction runs on: $KERAS_BACKEND, else TensorFlow."""
    return os.environ.get("KERAS_BACKEND") or DEFAULT_EXTRACTION_BACKEND


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # reads every installed package's metadata: 0.3 s


def package_version(module: str) -> str:
    """The installed version of the distribution that provides ``module`` (tensorflow may be tensorflow-cpu)."""
    for dist in _distributions().get(module, [module]):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def runtime_identity(trial_backend: str) -> dict[str, str]:
    """Backends of the trials and of the extraction, the versions of Keras and of both backends, and the
    training steps per compiled call (training time depends on it)."""
    ext = extraction_backend()
    out = {"trial_backend": trial_backend, "extraction_backend": ext, "keras": package_version("keras"),
           "train_steps_per_call": str(STEPS_PER_CALL)}
    for b in dict.fromkeys((trial_backend, ext)):
        out[b] = package_version(BACKENDS.get(b, b))
    return out
