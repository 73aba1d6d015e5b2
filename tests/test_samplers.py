"""search.study.samplers: every registered sampler builds from a config; grid points and a grid study's target."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.config import load_config
from search.study import samplers
from search.study.objective import suggest

from .conftest import TINY_CONFIG

GRID = TINY_CONFIG.format(n_trials=100).replace('name = "random"', 'name = "grid"').replace(
    'dropout = { type = "float", low = 0.1, high = 0.7 }',
    'dropout = { type = "float", low = 0.1, high = 0.5, step = 0.2 }\nepochs = { type = "int", low = 1, high = 5, step = 2 }')


def _config(tmp_path: Path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(str(path))


def test_grid_points_of_each_kind_of_entry(tmp_path):
    c = _config(tmp_path, GRID)
    space = samplers.grid_space(c)
    assert space["dropout"] == pytest.approx([0.1, 0.3, 0.5])
    assert space["epochs"] == [1, 3, 5] and space["l2"] == [0.0, 1e-4]
    assert samplers.grid_size(c) == 18


def test_a_grid_study_targets_its_points_unless_set_lower(tmp_path):
    assert samplers.target(_config(tmp_path, GRID)) == 18  # n_trials = 100 is capped at the grid
    assert samplers.target(_config(tmp_path, GRID.replace("n_trials = 100", "n_trials = 4"))) == 4
    assert samplers.target(_config(tmp_path, GRID.replace("n_trials = 100", ""))) == 18
    assert samplers.target(_config(tmp_path, TINY_CONFIG.format(n_trials=7))) == 7


@pytest.mark.parametrize("name", samplers.FACTORIES)
def test_every_sampler_suggests_inside_the_space_and_a_seed_repeats_it(tmp_path, name):
    c = _config(tmp_path, GRID.replace('name = "grid"', f'name = "{name}"'))

    def first_params() -> dict:
        study = optuna.create_study(directions=c.directions, sampler=samplers.make_sampler(c))
        return suggest(study.ask(), c)

    a = first_params()
    assert set(a) == {"dropout", "epochs", "l2"}
    assert 0.1 <= a["dropout"] <= 0.5 and a["epochs"] in (1, 3, 5) and a["l2"] in (0.0, 1e-4)
    assert first_params() == a
