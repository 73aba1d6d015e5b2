"""The shipped study configs: each loads, and the paper-mirroring ones resolve, arm by arm, to the paper's settings.

Self-contained (the tests/ tree is being migrated): it reads study_configs/ beside this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config import available_studies, load_config
from search.study import samplers
from search.study.objective import resolve_params
from search.training import augment

CONFIGS = Path(__file__).resolve().parent.parent / "study_configs"
PAPER = ["fmnist_balance", "cifar10_balance", "fmnist_splits", "cifar10_splits", "fmnist_reg", "fmnist_reg_paper"]
TABLE10 = {  # Table 10's rows: (l1, l2, dropout); 0.01 is our choice for the unstated L1/L2 rate
    "l1": (0.01, 0.0, 0.0), "l2": (0.0, 0.01, 0.0),
    "dropout_0.3": (0.0, 0.0, 0.3), "dropout_0.5": (0.0, 0.0, 0.5), "dropout_0.7": (0.0, 0.0, 0.7),
}


def _load(name: str):
    return load_config(name, CONFIGS)


def _arms(name: str) -> dict[str, dict]:
    c = _load(name)
    return {arm: resolve_params(c, {"arm": arm}) for arm in c.search_space["arm"].choices}


@pytest.mark.parametrize("name", available_studies(CONFIGS))
def test_each_shipped_config_loads_with_a_target(name):
    c = _load(name)
    assert c.name == name and c.objectives
    assert samplers.target(c) >= 1
    if c.sampler.name == "grid":   # a grid runs its points once: the target defaults to their number
        assert samplers.target(c) == samplers.grid_size(c)


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_say_what_is_their_own_choice(name):
    text = (CONFIGS / f"{name}.toml").read_text()
    assert "our choice" in text and "line" in text
    c = _load(name)
    assert c.training.evaluation == "test" and c.training.batch_size == 32 and c.head.units == 1024
    assert c.preprocessing.name == "unit" and c.training.learning_rate == 1e-3
    assert (c.augmentation.rotation, c.augmentation.shift, c.augmentation.horizontal_flip) == (20.0, 0.2, True)


def test_fmnist_balance_follows_tables_5_and_6_per_arm():
    arms = _arms("fmnist_balance")
    assert set(arms) == {"balanced", "imbalanced"}
    b, i = arms["balanced"], arms["imbalanced"]
    assert (b["balance"], b["augmentation"], b["epochs"]) == ("balanced", "views", 5)      # Table 5
    assert (i["balance"], i["augmentation"], i["epochs"]) == ("imbalanced", "none", 7)     # Table 6
    for p in (b, i):
        assert (p["dropout"], p["l1"], p["l2"], p["split_ratio"], p["handling"]) == (0.0, 0.0, 0.0, 0.8, "none")
    c = _load("fmnist_balance")
    assert c.balance.reduce_classes == (0, 1, 2) and c.balance.reduce_fraction == 0.1
    assert samplers.target(c) == 2 and augment.modes_used(c) == {"views", "none"}


def test_cifar10_balance_augments_the_balanced_arm_only():
    arms = _arms("cifar10_balance")
    b, i = arms["balanced"], arms["imbalanced"]
    assert (b["balance"], b["augmentation"], b["epochs"]) == ("balanced", "views", 25)     # Table 3
    assert (i["balance"], i["augmentation"], i["epochs"]) == ("imbalanced", "none", 25)    # Table 4
    assert b["dropout"] == i["dropout"] == 0.0
    c = _load("cifar10_balance")
    assert c.dataset.name == "cifar10" and c.balance.reduce_fraction == 0.1


def test_table9_studies_run_the_five_splits_without_dropout():
    for name, epochs in (("fmnist_splits", 5), ("cifar10_splits", 25)):
        c = _load(name)
        assert c.search_space["split_ratio"].choices == (0.5, 0.6, 0.7, 0.8, 0.9)
        p = resolve_params(c, {"split_ratio": 0.5})
        assert (p["epochs"], p["dropout"], p["augmentation"]) == (epochs, 0.0, "views")
        assert samplers.target(c) == 5


def test_fmnist_reg_paper_runs_exactly_table_10s_rows():
    c = _load("fmnist_reg_paper")
    arms = _arms("fmnist_reg_paper")
    assert {a: (p["l1"], p["l2"], p["dropout"]) for a, p in arms.items()} == TABLE10
    assert all(p["epochs"] == 5 and p["split_ratio"] == 0.8 and p["augmentation"] == "views" for p in arms.values())
    assert c.sampler.name == "grid" and samplers.target(c) == 5 and c.run.n_trials is None


def test_fmnist_reg_can_reach_table_10s_settings():
    c = _load("fmnist_reg")
    dropouts = samplers.grid_values(c.search_space["dropout"])
    assert dropouts[0] == 0.0 and all(any(abs(d - r) < 1e-9 for d in dropouts) for r in (0.1, 0.3, 0.5, 0.7))
    assert max(dropouts) <= 0.7 + 1e-9
    for reg in ("l1", "l2"):
        assert {0.0, 1e-2} <= set(c.search_space[reg].choices)
    assert (c.search_space["epochs"].low, c.search_space["epochs"].high) == (5, 25)
    assert c.search_space["split_ratio"].choices == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert [o.metric for o in c.objectives] == ["accuracy", "roc_auc", "train_time_s", "trial_memory_mb"]
    # The search leaves augmentation off (its 45-minute budget); the paper's augmented rows are fmnist_reg_paper's.
    assert augment.modes_used(c) == {"none"} and augment.modes_used(_load("fmnist_reg_paper")) == {"views"}
