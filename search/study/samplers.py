"""Sampler registry: config name -> Optuna sampler, built from the study's search space and seed."""

from __future__ import annotations

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


# The Optuna sampler of each name of search.config.choices.SAMPLERS, from the config and a seed.
FACTORIES: dict[str, Callable[["StudyConfig", int | None], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c, seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda c, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda c, seed: optuna.samplers.GridSampler(grid_space(c), seed=seed),
    "nsga2": lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed),
    "qmc": lambda c, seed: optuna.samplers.QMCSampler(seed=seed),
}


def make_sampler(config: "StudyConfig") -> optuna.samplers.BaseSampler:
    """The config's sampler with the config's seed (one process, or a test)."""
    return FACTORIES[config.sampler.name](config, config.sampler.seed)


class ProcessSeeded(optuna.samplers.BaseSampler):
    """The study's sampler, seeded per process: the config's seed plus the number of this process's first trial.

    Optuna numbers trials in the storage, so no two processes on a study, on one machine or many, start at the
    same number and none draws with another's seed; a new study's first process keeps the config's seed, and a
    resumed one does not repeat the draws of the run before it.  ``seed`` is recorded on every trial
    (``sampler_seed``), so a run can be reproduced.
    """

    def __init__(self, config: "StudyConfig"):
        self._config = config
        self._inner: optuna.samplers.BaseSampler | None = None
        self.seed: int | None = None

    def _sampler(self, trial_number: int) -> optuna.samplers.BaseSampler:
        if self._inner is None:
            base = self._config.sampler.seed
            self.seed = None if base is None else (base + trial_number) % 2**32
            self._inner = FACTORIES[self._config.sampler.name](self._config, self.seed)
        return self._inner

    def before_trial(self, study, trial) -> None:
        self._sampler(trial.number).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._sampler(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._sampler(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._sampler(trial.number).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        if self._inner is not None:
            self._inner.reseed_rng()


def target(config: "StudyConfig") -> int:
    """The study's target number of COMPLETE trials: run.n_trials, and for a grid at most its points."""
    if config.sampler.name == "grid":
        return min(config.run.n_trials or grid_size(config), grid_size(config))
    assert config.run.n_trials is not None  # the schema requires it for every other sampler
    return config.run.n_trials
