"""Study configs: every shipped config loads; every bad field is refused with file and field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from search import config as cfg
from search.errors import ConfigError, UsageError

SMOKE = (cfg.CONFIGS_DIR / "smoke.toml").read_text()


@pytest.mark.parametrize("name", cfg.available_studies())
def test_shipped_configs_load(name):
    c = cfg.load_config(name)
    assert c.name == name
    assert c.objectives and c.run.n_trials > 0


def test_required_studies_are_shipped():
    assert {"smoke", "fmnist_reg", "fmnist_splits", "cifar10_splits", "fmnist_balance",
            "cifar10_balance"} <= set(cfg.available_studies())


def test_fmnist_reg_matches_the_paper():
    c = cfg.load_config("fmnist_reg")
    assert c.search_space["split_ratio"].choices == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert (c.search_space["dropout"].low, c.search_space["dropout"].high) == (0.1, 0.7)
    assert (c.search_space["epochs"].low, c.search_space["epochs"].high) == (5, 25)
    assert 0.0 in c.search_space["l1"].choices and 0.0 in c.search_space["l2"].choices
    assert [(o.metric, o.direction) for o in c.objectives] == [
        ("accuracy", "maximize"), ("roc_auc", "maximize"), ("train_time_s", "minimize"),
        ("peak_memory_mb", "minimize")]
    assert c.training.batch_size == 32 and c.backbone.weights == "imagenet"


def test_registries_match_config_names():
    from search import data, metrics, samplers

    assert set(cfg.DATASET_NAMES) == set(data.DATASETS)
    assert set(cfg.SAMPLER_NAMES) == set(samplers.SAMPLERS)
    assert set(cfg.METRIC_NAMES) == set(metrics.METRICS)


def _load(tmp_path: Path, text: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return cfg.load_config(str(path))


BAD = [
    # (replace this, with this, message must contain)
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.7, high = 0.1 }',
     "search_space.dropout: low (0.7) must be below high (0.1)"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.3, high = 0.3 }',
     "search_space.dropout: low (0.3) must be below high"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = nan, high = 0.7 }',
     "search_space.dropout: low and high must be finite"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.1, high = inf }',
     "search_space.dropout: low and high must be finite"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.0, high = 0.5, log = true }',
     "search_space.dropout: log scale needs low > 0"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.1, high = 1.0 }',
     "search_space.dropout.high: Input should be less than 1"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "floaty", low = 0.1, high = 0.7 }',
     "search_space.dropout"),
    ('choices = [0.7, 0.8]', 'choices = [0.7, 0.7]', "search_space.split_ratio.choices: choices must not repeat"),
    ('choices = [0.7, 0.8]', 'choices = []', "search_space.split_ratio.choices: choices must not be empty"),
    ('choices = [0.7, 0.8]', 'choices = [0.7, 1.0]', "search_space.split_ratio.choices[1]: Input should be less than 1"),
    ('choices = [0.7, 0.8]', 'choices = [0.0, 0.8]', "search_space.split_ratio.choices[0]: Input should be greater than 0"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'epochs = { type = "float", low = 1, high = 2 }',
     "search_space.epochs.type: must be 'int' or 'categorical'"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'momentum = { type = "float", low = 0.1, high = 0.2 }',
     "search_space.momentum: not searchable; valid: split_ratio"),
    ("n_trials = 3", "n_trials = 0", "run.n_trials: Input should be greater than 0"),
    ("n_trials = 3", "n_trials = -2", "run.n_trials: Input should be greater than 0"),
    ("n_trials = 3", "n_trials = 3\ntimeout = -5", "run.timeout: Input should be greater than 0"),
    ('name = "fashion_mnist"', 'name = "mnist"', "dataset.name: unknown dataset 'mnist'; valid: fashion_mnist, cifar10"),
    ('name = "tpe"', 'name = "bayes"', "sampler.name: unknown sampler 'bayes'; valid: tpe, random, grid"),
    ('metric = "roc_auc"', 'metric = "auc"', "objectives.1.metric: unknown metric 'auc'; valid: accuracy"),
    ('direction = "minimize"', 'direction = "down"', "objectives.2.direction: Input should be 'maximize' or 'minimize'"),
    ('metric = "roc_auc"', 'metric = "accuracy"', "objectives: an objective's metric appears twice"),
    ("[training]", "[training]\nbatchsize = 64", "training.batchsize: unknown key"),
    ("[run]", "[runs]", "runs: unknown key"),
    ('weights = "random"', 'weights = "random"\ndropout = 0.2', "backbone.dropout: unknown key"),
    ('name = "tpe"', 'name = "grid"', "search_space.dropout: the grid sampler needs categorical"),
    ("batch_size = 32", "batch_size = 0", "training.batch_size: Input should be greater than or equal to 1"),
    ("[training]", "[head]\ndropout = 1.0\n[training]", "head.dropout: Input should be less than 1"),
    ("[training]", "[training]\nsplit_ratio = 1.5", "training.split_ratio: Input should be less than 1"),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_config_names_file_and_field(tmp_path, old, new, message):
    assert old in SMOKE
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, SMOKE.replace(old, new, 1))
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 'bad.toml'}: ")
    assert message in text
    assert "\n" not in text


def test_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        _load(tmp_path, "[dataset\nname=")


def test_unknown_study_lists_available():
    with pytest.raises(UsageError, match=r"--study: unknown study 'nope'; available: .*fmnist_reg.*smoke"):
        cfg.load_config("nope")


def test_config_is_frozen():
    c = cfg.load_config("smoke")
    with pytest.raises(Exception):
        c.run.n_trials = 5  # type: ignore[misc]


def test_identity_ignores_run_and_sampler_but_not_space():
    c = cfg.load_config("smoke")
    assert c.with_run(n_trials=99).identity() == c.identity()
    assert c.with_weights("imagenet").identity() != c.identity()


@pytest.mark.parametrize("name,ok", [("x", True), ("", False), ("   ", False), ("a" * 129, False)])
def test_study_name(name, ok):
    if ok:
        assert cfg.check_study_name(name) == name
    else:
        with pytest.raises(UsageError, match="--study-name"):
            cfg.check_study_name(name)
