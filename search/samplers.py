"""Sampler registry: config name -> Optuna sampler, built from the study's search space and seed."""

from __future__ import annotations

from typing import Callable

import numpy as np
import optuna

from search.config import CategoricalDist, FloatDist, IntDist, StudyConfig


def grid_values(dist) -> list:
    if isinstance(dist, CategoricalDist):
        return list(dist.choices)
    if isinstance(dist, IntDist):
        return list(range(dist.low, dist.high + 1, dist.step))
    assert isinstance(dist, FloatDist) and dist.step is not None
    n = int(np.floor((dist.high - dist.low) / dist.step + 1e-9)) + 1
    return [float(dist.low + i * dist.step) for i in range(n)]


def grid_size(config: StudyConfig) -> int:
    return int(np.prod([len(grid_values(d)) for d in config.search_space.values()]))


def _grid(config: StudyConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    space = {name: grid_values(d) for name, d in config.search_space.items()}
    return optuna.samplers.GridSampler(space, seed=seed)


SAMPLERS: dict[str, Callable[[StudyConfig, int | None], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c, seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda c, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": _grid,
    "nsga2": lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed),
    "qmc": lambda c, seed: optuna.samplers.QMCSampler(seed=seed),
}


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    return SAMPLERS[config.sampler.name](config, config.sampler.seed)
