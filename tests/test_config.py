"""search.config: shipped configs load; every bad field, huge value and unsafe study name is refused in one
line naming the file and the field; the identity holds what a study's numbers depend on."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from search import config as cfg
from search.config.identity import config_identity
from search.errors import ConfigError, UsageError

from .conftest import ROOT

SMOKE = (ROOT / "study_configs" / "smoke.toml").read_text()


def _load(tmp_path: Path, text: str) -> cfg.StudyConfig:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return cfg.load_config(str(path))


def _refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'bad.toml'}: ") and "\n" not in message
    return message


# ---------------------------------------------------------------- shipped configs

@pytest.mark.parametrize("name", cfg.available_studies(ROOT / "study_configs"))
def test_shipped_configs_load(name):
    c = cfg.load_config(name, ROOT / "study_configs")
    assert c.name == name and c.objectives


def test_the_papers_studies_are_shipped_with_the_papers_protocol():
    names = set(cfg.available_studies(ROOT / "study_configs"))
    assert {"smoke", "fmnist_reg", "fmnist_splits", "cifar10_splits", "fmnist_balance", "cifar10_balance",
            "fmnist_imbalance", "cifar10_imbalance"} <= names
    for name in ("smoke", "fmnist_reg", "fmnist_splits", "cifar10_splits", "fmnist_balance", "cifar10_balance"):
        assert cfg.load_config(name, ROOT / "study_configs").objective_split == "test", name
    for name in ("fmnist_imbalance", "cifar10_imbalance"):
        c = cfg.load_config(name, ROOT / "study_configs")
        assert c.objective_split == "validation" and c.balance.profile == "step"
        assert {"balance", "handling"} <= set(c.search_space) and c.constraints.budgets()


def test_fmnist_reg_is_table_10_as_a_search():
    c = cfg.load_config("fmnist_reg", ROOT / "study_configs")
    assert c.search_space["split_ratio"].choices == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert (c.search_space["dropout"].low, c.search_space["dropout"].high) == (0.0, 0.7)  # 0: no dropout
    assert (c.search_space["epochs"].low, c.search_space["epochs"].high) == (5, 25)
    assert 0.0 in c.search_space["l1"].choices and 0.0 in c.search_space["l2"].choices
    assert c.training.batch_size == 32 and c.backbone.weights == "imagenet"
    # Objectives say their split: the quality ones were measured on the held-out test split.
    assert c.metric_names[:2] == ["test_accuracy", "test_roc_auc"]
    assert c.metric_names[2] == "train_time_s"


def test_objective_names_say_the_split_of_the_study(tmp_path):
    val = _load(tmp_path, SMOKE.replace('evaluation = "test"', 'evaluation = "validation"'))
    assert val.metric_names == ["val_accuracy", "val_roc_auc", "train_time_s", "peak_memory_mb"]
    assert cfg.load_config("smoke", ROOT / "study_configs").metric_names == [
        "test_accuracy", "test_roc_auc", "train_time_s", "peak_memory_mb"]


def test_an_objective_with_a_resolution_reaches_the_sampler_in_its_steps(tmp_path):
    c = _load(tmp_path, SMOKE.replace('metric = "peak_memory_mb"\ndirection = "minimize"',
                                      'metric = "peak_memory_mb"\ndirection = "minimize"\nresolution = 16.0'))
    measured = {"test_accuracy": 0.8123, "test_roc_auc": 0.97, "train_time_s": 12.34, "peak_memory_mb": 1105.9}
    assert c.objective_values(measured) == [0.8123, 0.97, 12.34, 1104.0]
    assert c.objective_values({**measured, "peak_memory_mb": 1104.4}) == [0.8123, 0.97, 12.34, 1104.0]
    assert c.objective_values({**measured, "peak_memory_mb": 1121.0})[3] == 1120.0
    assert c.objective_values({**measured, "peak_memory_mb": float("nan")})[3] != 1104.0  # NaN stays NaN
    # Without a resolution the value is the measured one, and the identity of stored studies is unchanged.
    plain = cfg.load_config("smoke", ROOT / "study_configs")
    assert plain.objective_values(measured) == [0.8123, 0.97, 12.34, 1105.9]
    assert all("resolution" not in o for o in config_identity(plain)["objectives"])
    assert config_identity(c)["objectives"][3]["resolution"] == 16.0


def test_new_studies_default_to_the_validation_protocol(tmp_path):
    c = _load(tmp_path, SMOKE.replace('evaluation = "test"      #', "#"))
    assert c.objective_split == "validation"


# ---------------------------------------------------------------- bad fields

BAD = [
    # (replace this, with this, the message must contain)
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.7, high = 0.1 }',
     "search_space.dropout: low (0.7) must be below high (0.1)"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.3, high = 0.3 }',
     "search_space.dropout: low (0.3) must be below high"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = nan, high = 0.7 }',
     "search_space.dropout.low: Input should be a finite number (got nan)"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.1, high = inf }',
     "search_space.dropout.high: Input should be a finite number (got inf)"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }',
     'dropout = { type = "float", low = 0.0, high = 0.5, log = true }', "search_space.dropout: log scale needs low > 0"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.1, high = 1.0 }',
     "search_space.dropout.high: Input should be less than 1"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "floaty", low = 0.1, high = 0.7 }',
     "search_space.dropout"),
    ('choices = [0.7, 0.8]', 'choices = [0.7, 0.7]', "search_space.split_ratio.choices: choices must not repeat"),
    ('choices = [0.7, 0.8]', 'choices = []', "search_space.split_ratio.choices: choices must not be empty"),
    ('choices = [0.7, 0.8]', 'choices = [0.7, 1.0]', "search_space.split_ratio.choices[1]: Input should be less than 1"),
    ('choices = [0.7, 0.8]', 'choices = [0.0, 0.8]',
     "search_space.split_ratio.choices[0]: Input should be greater than 0"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'epochs = { type = "float", low = 1, high = 2 }',
     "search_space.epochs.type: must be 'int' or 'categorical'"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'momentum = { type = "float", low = 0.1, high = 0.2 }',
     "search_space.momentum: not searchable; valid: arm, split_ratio"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'handling = { type = "float", low = 0.0, high = 1.0 }',
     "search_space.handling.type: must be 'categorical'"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'profile = { type = "categorical", choices = ["step", "zipf"] }',
     "search_space.profile.choices[1]: unknown imbalance profile 'zipf'; valid: paper, long_tail, step"),
    ("n_trials = 3", "n_trials = 0", "run.n_trials: Input should be greater than 0"),
    ("n_trials = 3", "n_trials = 3\ntimeout = -5", "run.timeout: Input should be greater than 0"),
    ('name = "fashion_mnist"', 'name = "mnist"', "dataset.name: unknown dataset 'mnist'; valid: fashion_mnist, cifar10"),
    ('name = "tpe"', 'name = "bayes"', "sampler.name: unknown sampler 'bayes'; valid: tpe, random, grid, nsga2, qmc"),
    ('metric = "roc_auc"', 'metric = "auc"', "objectives.1.metric: unknown metric 'auc'; valid: accuracy, "),
    ('direction = "minimize"', 'direction = "down"', "objectives.2.direction: Input should be 'maximize' or 'minimize'"),
    ('direction = "minimize"', 'direction = "minimize"\nresolution = 0', "objectives.2.resolution: Input should be "
     "greater than or equal to 0.000000001 (got 0)"),
    ('direction = "minimize"', 'direction = "minimize"\nresolution = nan', "objectives.2.resolution: Input should be "
     "a finite number"),
    ('metric = "roc_auc"', 'metric = "accuracy"', "objectives: an objective's metric appears twice"),
    ("[training]", "[training]\nbatchsize = 64", "training.batchsize: unknown key"),
    ("[run]", "[runs]", "runs: unknown key"),
    ('weights = "random"', 'weights = "random"\ndropout = 0.2', "backbone.dropout: unknown key"),
    ('name = "tpe"', 'name = "grid"', "search_space.dropout: the grid sampler needs categorical"),
    ("batch_size = 32", "batch_size = 0", "training.batch_size: Input should be greater than or equal to 1"),
    ("[training]", "[head]\ndropout = 1.0\n[training]", "head.dropout: Input should be less than 1"),
    ("[training]", "[training]\nsplit_ratio = 1.5", "training.split_ratio: Input should be less than 1"),
    ("[training]", "[training]\nhandling = 'undersample'", "training.handling: unknown handling 'undersample'"),
    ("[training]", "[training]\nlabel_smoothing = 1.0", "training.label_smoothing: Input should be less than 1"),
    ('evaluation = "test"', 'evaluation = "train"', "training.evaluation: unknown evaluation 'train'; valid: validation, test"),
    ("[training]", "[balance]\nrho = nan\n[training]", "balance.rho: Input should be a finite number"),
    ("[training]", "[balance]\nreduce_classes = [3, 10]\n[training]",
     "balance.reduce_classes: class 10 does not exist in fashion_mnist (classes 0-9)"),
    ("[run]", "[constraints]\nmax_train_time_s = inf\n[run]",
     "constraints.max_train_time_s: Input should be a finite number"),
    ("[run]", "[augmentation]\nmode = 'mixup'\n[run]", "augmentation.mode: unknown augmentation mode 'mixup'"),
    ("n_trials = 3", "n_trials = 3\nearly_stopping = 'moasha'",
     "run.early_stopping: needs run.epoch_snapshots = true"),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_field_is_refused_naming_file_and_field(tmp_path, old, new, message):
    assert old in SMOKE
    assert message in _refused(tmp_path, SMOKE.replace(old, new, 1))


# Values that would make a run take days (issue 15): refused like any other bad field.
HUGE = [
    ("epochs = 1\n", "epochs = 1000000000000\n", "training.epochs: Input should be less than or equal to 1000"),
    ("[backbone]", "[head]\nunits = 1000000000\n[backbone]", "head.units: Input should be less than or equal to 16384"),
    ("n_trials = 3", "n_trials = 3\ntimeout = inf", "run.timeout: Input should be a finite number (got inf)"),
    ("n_trials = 3", "n_trials = 3\ntrial_timeout = inf", "run.trial_timeout: Input should be a finite number"),
    ("n_trials = 3", "n_trials = 1000000000", "run.n_trials: Input should be less than or equal to 100000"),
    ("batch_size = 32", "batch_size = 1000000000", "training.batch_size: Input should be less than or equal to 65536"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'epochs = { type = "int", low = 1, high = 1000000000000 }',
     "search_space.epochs.high: Input should be less than or equal to 1000"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'units = { type = "int", low = 16, high = 1000000000 }',
     "search_space.units.high: Input should be less than or equal to 16384"),
    ("n_trials = 3", "n_trials = 3\nmax_retries = 100", "run.max_retries: Input should be less than or equal to 10"),
    ("[run]", "[augmentation]\nviews = 100000\n[run]", "augmentation.views: Input should be less than or equal to 64"),
]


@pytest.mark.parametrize("old,new,message", HUGE, ids=[h[2][:30] for h in HUGE])
def test_values_that_would_run_for_days_are_refused(tmp_path, old, new, message):
    assert old in SMOKE
    assert message in _refused(tmp_path, SMOKE.replace(old, new, 1))


def test_not_toml_and_reserved_name_key(tmp_path):
    assert ": not valid TOML" in _refused(tmp_path, "[dataset\nname=")
    assert "name: unknown key (the study name is the file name)" in _refused(tmp_path, 'name = "x"\n' + SMOKE)


def test_unknown_study_lists_the_available_ones():
    with pytest.raises(UsageError, match=r"--study: unknown study 'nope'; available: .*fmnist_reg.*smoke"):
        cfg.load_config("nope", ROOT / "study_configs")
    with pytest.raises(UsageError, match="--study: no such config file"):
        cfg.load_config("/no/such/file.toml")


def test_configs_directory_is_read_when_asked_not_at_import(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text(SMOKE)
    monkeypatch.setenv("SEARCH_CONFIGS_DIR", str(tmp_path))  # set after search.config was imported
    assert cfg.configs_dir() == tmp_path and cfg.available_studies() == ["mine"]
    assert cfg.load_config("mine").name == "mine"


def test_a_new_registry_entry_is_valid_at_once(tmp_path, monkeypatch):
    """Validation derives from the registries: nothing else needs to learn a new dataset's name."""
    from search.config import choices

    monkeypatch.setitem(choices.DATASETS, "kmnist", choices.DATASETS["fashion_mnist"])
    assert _load(tmp_path, SMOKE.replace('name = "fashion_mnist"', 'name = "kmnist"')).dataset.name == "kmnist"


def test_config_is_frozen():
    c = cfg.load_config("smoke", ROOT / "study_configs")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        c.run.n_trials = 5  # type: ignore[misc]
    assert c.with_run(n_trials=5).run.n_trials == 5 and c.run.n_trials == 3


# ---------------------------------------------------------------- arms

ARMS = SMOKE.replace("[search_space]", """[arms.balanced]
balance = "balanced"
[arms.imbalanced]
balance = "imbalanced"
epochs = 2

[search_space]
arm = { type = "categorical", choices = ["balanced", "imbalanced"] }""").replace(
    'epochs = { type = "int", low = 1, high = 2 }', "")


def test_arms_are_named_sets_of_fixed_values(tmp_path):
    c = _load(tmp_path, ARMS)
    assert c.arms == {"balanced": {"balance": "balanced"}, "imbalanced": {"balance": "imbalanced", "epochs": 2}}


@pytest.mark.parametrize("old,new,message", [
    ('choices = ["balanced", "imbalanced"]', 'choices = ["balanced", "tail"]',
     "search_space.arm.choices: no [arms.tail] section; arms: balanced, imbalanced"),
    ("epochs = 2", "epochs = 0", "arms.imbalanced.epochs: Input should be greater than or equal to 1"),
    ("epochs = 2", "momentum = 2", "arms.imbalanced.momentum: not a searchable setting"),
    ('balance = "balanced"\n', 'balance = "balanced"\ndropout = 0.2\n',
     "arms.balanced.dropout: is also in search_space; set it in one place"),
    ('arm = { type = "categorical", choices = ["balanced", "imbalanced"] }', "",
     "search_space: arms are defined but search_space has no `arm` entry"),
])
def test_bad_arms_are_refused(tmp_path, old, new, message):
    assert old in ARMS
    assert message in _refused(tmp_path, ARMS.replace(old, new, 1))


# ---------------------------------------------------------------- identity

def test_identity_is_what_the_numbers_depend_on(tmp_path):
    c = cfg.load_config("smoke", ROOT / "study_configs")
    ident = config_identity(c)
    # Run limits, the sampler and the prose do not change a trial's measurements ...
    assert config_identity(c.with_run(n_trials=99, timeout=60.0)) == ident
    assert config_identity(c.model_copy(update={"sampler": c.sampler.model_copy(update={"seed": 7})})) == ident
    assert not {"run", "sampler", "name", "description"} & set(ident)
    # ... the search space, the weights and the protocol do.
    assert config_identity(c.with_weights("imagenet")) != ident
    assert ident["search_space"]["dropout"] == {"type": "float", "low": 0.1, "high": 0.7, "log": False, "step": None}
    validation = _load(tmp_path, SMOKE.replace('evaluation = "test"', 'evaluation = "validation"'))
    assert config_identity(validation)["training"]["evaluation"] == "validation"


def test_study_identity_holds_weights_data_and_runtime():
    c = cfg.load_config("smoke", ROOT / "study_configs")
    runtime = {"trial_backend": "jax", "extraction_backend": "tensorflow", "keras": "3.15.1", "jax": "0.10.2",
               "tensorflow": "2.21.0"}
    ident = cfg.study_identity(c, "file:sha256=abc", "fp123", runtime)
    assert ident["backbone"]["weights"] == "file:sha256=abc"
    assert ident["data_fingerprint"] == "fp123" and ident["runtime"] == runtime
    other = cfg.study_identity(c, "file:sha256=abc", "fp123", {**runtime, "trial_backend": "tensorflow"})
    assert cfg.differences(ident, other) == ['runtime.trial_backend: "jax" -> "tensorflow"']
    assert cfg.differences(ident, ident) == []


def test_settings_at_their_legacy_values_stay_out_of_the_identity(tmp_path):
    """Studies stored before profiles, handling and augmentation existed keep resuming."""
    c = cfg.load_config("smoke", ROOT / "study_configs")
    ident = config_identity(c)
    assert not {"profile", "rho"} & set(ident["balance"])
    assert not {"handling", "focal_gamma", "label_smoothing"} & set(ident["training"])
    assert "augmentation" not in ident and "constraints" not in ident and "arms" not in ident
    changed = _load(tmp_path, SMOKE.replace("[training]", "[training]\nhandling = 'focal'"))
    assert config_identity(changed)["training"]["handling"] == "focal"


# ---------------------------------------------------------------- study names (they become paths)

@pytest.mark.parametrize("name", ["smoke", "fmnist_reg-random", "a.b", "x" * 100, "A-1_b.2"])
def test_safe_study_names_pass(name):
    assert cfg.check_study_name(name) == name


@pytest.mark.parametrize("name,message", [
    ("../escape", "may hold only letters, digits"),
    ("a/b", "may hold only letters, digits"),
    (".hidden", "must not start with '.'"),
    ("..", "must not start with '.'"),
    ("a b", "may hold only letters"),
    ("a\\b", "may hold only letters"),
    ("", "must not be empty"),
    ("x" * 101, "longer than 100 characters"),
])
def test_study_names_that_could_leave_a_directory_are_refused(name, message):
    with pytest.raises(UsageError, match=f"^--study-name: .*{message}"):
        cfg.check_study_name(name)


def test_names_from_weights_files_are_made_safe():
    assert cfg.safe_name("../my weights/../x") == "_my_weights_.._x"
    assert cfg.safe_name("...") == "weights"
    for text in ("../x", ".hidden", "a/b", "x" * 300):
        cfg.check_study_name(cfg.safe_name(text))


def test_the_default_studys_identity_is_the_one_its_stored_studies_carry():
    """fmnist_reg's identity as the service stored it before the backbone registry, user data and searchable
    backbones (tests/fmnist_reg_identity.json, made by that code): a studies.db made then still resumes."""
    import json

    runtime = {"trial_backend": "jax", "extraction_backend": "tensorflow", "keras": "3", "tensorflow": "2", "jax": "1",
               "train_steps_per_call": "32"}
    stored = json.loads((Path(__file__).parent / "fmnist_reg_identity.json").read_text())
    now = cfg.study_identity(cfg.load_config("fmnist_reg", ROOT / "study_configs"), "w", "fp", runtime)
    assert cfg.differences(stored, now) == []
