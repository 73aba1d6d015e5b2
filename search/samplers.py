"""Sampler registry: config name -> Optuna sampler, built from the study's search space and seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import optuna

if TYPE_CHECKING:
    from search.config import StudyConfig


def grid_values(dist: Any) -> list:
    """The points of one search-space entry on a grid (categorical choices, int range, stepped float range)."""
    if dist.type == "categorical":
        return list(dist.choices)
    if dist.type == "int":
        return list(range(dist.low, dist.high + 1, dist.step))
    assert dist.type == "float" and dist.step is not None
    n = int(np.floor((dist.high - dist.low) / dist.step + 1e-9)) + 1
    return [float(dist.low + i * dist.step) for i in range(n)]


def grid_space(config: "StudyConfig") -> dict[str, list]:
    return {name: grid_values(d) for name, d in config.search_space.items()}


def grid_size(config: "StudyConfig") -> int:
    return int(np.prod([len(v) for v in grid_space(config).values()]))


@dataclass(frozen=True)
class SamplerInfo:
    make: Callable[["StudyConfig", int | None], optuna.samplers.BaseSampler]
    doc: str


SAMPLERS: dict[str, SamplerInfo] = {
    "tpe": SamplerInfo(lambda c, seed: optuna.samplers.TPESampler(seed=seed),
                       "Optuna's multi-objective TPE (the default)"),
    "random": SamplerInfo(lambda c, seed: optuna.samplers.RandomSampler(seed=seed), "independent random draws"),
    "grid": SamplerInfo(lambda c, seed: optuna.samplers.GridSampler(grid_space(c), seed=seed),
                        "every point of the grid exactly once (failed points retried with the same parameters)"),
    "nsga2": SamplerInfo(lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed), "NSGA-II genetic algorithm"),
    "qmc": SamplerInfo(lambda c, seed: optuna.samplers.QMCSampler(seed=seed), "quasi-Monte Carlo (Sobol)"),
}


def make_sampler(config: "StudyConfig") -> optuna.samplers.BaseSampler:
    return SAMPLERS[config.sampler.name].make(config, config.sampler.seed)


def target(config: "StudyConfig") -> int:
    """The study's target number of COMPLETE trials: run.n_trials, and for a grid at most its points."""
    if config.sampler.name == "grid":
        return min(config.run.n_trials or grid_size(config), grid_size(config))
    assert config.run.n_trials is not None  # the schema requires it for every other sampler
    return config.run.n_trials
