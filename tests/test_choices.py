"""search.config.choices: every named choice, and the implementations keyed by the same names agree with it."""

import pytest

from search.config import choices
from search.data import datasets
from search.features import backbones
from search.study import samplers
from search.training import augment, head


@pytest.mark.parametrize("names, implementations", [
    (choices.DATASETS, datasets.LOADERS),
    (choices.PROFILES, datasets.PROFILE_RULES),
    (choices.PREPROCESSINGS, backbones.PREPROCESS),
    (choices.SAMPLERS, samplers.FACTORIES),
    (choices.BACKBONES, backbones.APPLICATIONS),
], ids=["datasets", "profiles", "preprocessings", "samplers", "backbones"])
def test_each_registry_has_one_implementation_per_name(names, implementations):
    assert set(implementations) == set(names)


def test_every_handling_is_a_loss_or_a_resampler_as_its_choice_says():
    loss = {k for k, h in choices.HANDLINGS.items() if h.changes == "loss"}
    rows = {k for k, h in choices.HANDLINGS.items() if h.changes == "data"}
    assert set(head.LOSSES) == loss and set(datasets.RESAMPLERS) == rows


def test_every_augmentation_mode_but_none_brings_its_training_input():
    assert set(augment.TRAINING_INPUTS) == set(choices.AUGMENTATIONS) - {"none"}


def test_every_metric_has_a_kind_and_a_direction_and_quality_is_stored_per_split():
    assert {m.kind for m in choices.METRICS.values()} == {"quality", "resource"}
    assert all(m.direction in ("maximize", "minimize") and m.doc for m in choices.METRICS.values())
    assert choices.stored_name("accuracy", "test") == "test_accuracy"
    assert set(choices.SPLIT_PREFIX) == set(choices.EVALUATIONS)


def test_every_built_in_dataset_names_its_classes_and_a_users_own_reads_them_from_its_path():
    built_in = [d for d in choices.DATASETS.values() if not d.needs_path]
    assert built_in and all(d.n_classes == len(set(d.class_names)) >= 2 for d in built_in)
    assert all(d.class_names is None for d in choices.DATASETS.values() if d.needs_path)
