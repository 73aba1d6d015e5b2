"""search.features.backbones: the Keras backbones by name, their weights, preprocessing and input size."""

from __future__ import annotations

import numpy as np
import pytest

import search
from search.config.identity import config_identity
from search.errors import ConfigError
from search.features import backbones, feature_cache

from .conftest import ROOT, without_keras_backend, write_image_folder

SMOKE = (ROOT / "study_configs" / "smoke.toml").read_text()


def _config(tmp_path, **backbone: object):
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in backbone.items())
    f = tmp_path / "b.toml"
    f.write_text(SMOKE.replace('weights = "random"', 'weights = "random"\n' + lines))
    return search.load_config(f)


def test_a_backbone_is_chosen_by_name_and_input_size_and_checked_at_load(tmp_path):
    c = _config(tmp_path, name="densenet121", input_size=48)
    assert (c.backbone.name, c.backbone.input_size) == ("densenet121", 48)
    with pytest.raises(ConfigError, match=r"backbone\.name: unknown backbone 'vgg16'; valid: resnet50, resnet101"):
        _config(tmp_path, name="vgg16")
    with pytest.raises(ConfigError, match=r"backbone\.input_size: 16 is below resnet50's minimum input size 32"):
        _config(tmp_path, input_size=16)


def test_the_papers_backbone_keeps_the_identity_and_cache_key_of_studies_made_before_the_registry(tmp_path):
    c = _config(tmp_path)
    # As stored by every study made before the registry (whose schema had the one name "resnet50").
    assert config_identity(c)["backbone"] == {"name": "resnet50", "weights": "random"}
    assert config_identity(_config(tmp_path, input_size=64))["backbone"]["input_size"] == 64
    assert config_identity(_config(tmp_path, name="resnet101"))["backbone"]["name"] == "resnet101"
    rt = {"extraction_backend": "tensorflow", "keras": "3", "tensorflow": "2"}
    paper = feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", backbones.resolve_weights("random"), "f", rt)
    others = {feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", backbones.resolve_weights("random", b, s),
                                 "f", rt) for b, s in (("resnet101", 32), ("resnet50", 64), ("resnet101", 64))}
    assert paper.startswith("fashion_mnist-all-unit-plain-") and len(others | {paper}) == 4
    assert all("resnet" in k for k in others)


def test_input_size_and_preprocessing_make_the_backbone_input():
    gray = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    x = backbones.to_backbone_input(gray, "unit", size=48)
    assert x.shape == (2, 48, 48, 3) and 0.0 <= x.min() and x.max() <= 1.0
    native = backbones.to_backbone_input(gray, "native", backbone="resnet50_v2")
    assert -1.0 <= native.min() < 0.0 and native.max() <= 1.0  # ResNetV2's own: pixels to [-1, 1]
    assert np.array_equal(backbones.to_backbone_input(gray, "native"), backbones.to_backbone_input(gray, "caffe"))


def test_spread_tells_informative_features_from_collapsed_ones():
    rng = np.random.default_rng(0)
    assert backbones.spread(rng.normal(size=(100, 8))) > 0.5
    assert backbones.spread(np.ones((100, 8)) + 1e-14 * rng.normal(size=(100, 8))) < backbones.COLLAPSED_SPREAD


def test_the_cost_of_an_extraction_is_estimated_from_pixels_and_flops():
    base = backbones.extraction_estimate_s("resnet50", 32, 70_000)
    assert 90 < base < 130  # the measured 95-116 s
    assert backbones.extraction_estimate_s("resnet50", 224, 70_000) == pytest.approx(base * 49)
    assert backbones.extraction_estimate_s("mobilenet_v3_small", 32, 70_000) < base / 10


@pytest.mark.slow  # builds MobileNetV3Small and extracts (~10 s)
def test_collapsed_features_are_said_in_one_line_after_extraction(tmp_path):
    """Random-weight MobileNetV3Small at 32 px: its features do not vary across images."""
    folder = write_image_folder(tmp_path / "imgs", n_per_class=10)
    f = tmp_path / "m.toml"
    f.write_text(SMOKE.replace('name = "fashion_mnist"\nsubset = 2000', f'name = "folder"\npath = "{folder}"')
                 .replace('weights = "random"', 'weights = "random"\nname = "mobilenet_v3_small"'))
    said: list[str] = []
    with without_keras_backend():
        s = search.Search(search.load_config(f), storage=f"sqlite:///{tmp_path / 's.db'}",
                          cache_dir=tmp_path / "cache", on_message=said.append)
        s.prepare()
    assert any(m.startswith("extracting features of 30 images with mobilenet_v3_small at 32 px: about") for m in said)
    warning = [m for m in said if m.startswith("warning: the features of mobilenet_v3_small")]
    assert len(warning) == 1 and "carry no information" in warning[0], said
    assert s.cache_key.startswith("folder-all-unit-mobilenet_v3_small32-plain-")
    assert feature_cache.FeatureStore(tmp_path / "cache", s.cache_key).n_features == 576


# resnet50 and mobilenet_v3_small are built by the tests above, resnet101 by the two-backbone study below.
@pytest.mark.slow  # builds each (~10 s)
@pytest.mark.parametrize("name", sorted(set(backbones.APPLICATIONS) - {"resnet50", "mobilenet_v3_small", "resnet101"}))
def test_every_other_backbone_builds_with_random_weights_at_32_px(name):
    model = backbones.build_backbone(backbones.resolve_weights("random", name))
    x = backbones.to_backbone_input(np.zeros((2, 28, 28), dtype=np.uint8), "native", backbone=name)
    assert model.predict(x, verbose=0).shape[1] == model.output_shape[-1] > 0
    assert not model.trainable


# ---------------------------------------------------------------- a searched backbone

SEARCHED = SMOKE.replace("[search_space]\n", "[search_space]\n" + 'backbone = { type = "categorical", choices = ["resnet50", "resnet101"] }\n')


def _searched(tmp_path, text: str):
    f = tmp_path / "searched.toml"
    f.write_text(text)
    return search.load_config(f)


def test_a_searched_backbone_is_categorical_and_each_choice_a_feature_set(tmp_path):
    c = _searched(tmp_path, SEARCHED)
    assert c.feature_sets() == [("resnet101", 32), ("resnet50", 32)]
    sizes = SEARCHED.replace("[search_space]\n", '[search_space]\ninput_size = { type = "categorical", choices = [32, 48] }\n')
    assert len(_searched(tmp_path, sizes).feature_sets()) == 4
    cases = {
        'backbone = { type = "float", low = 0.0, high = 1.0 }': r"search_space\.backbone\.type: must be 'categorical'",
        'input_size = { type = "int", low = 32, high = 64 }': r"search_space\.input_size\.type: must be 'categorical'",
        'input_size = { type = "categorical", choices = [16, 32] }': r"search_space\.input_size: 16 is below",
    }
    for line, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            _searched(tmp_path, SMOKE.replace("[search_space]\n", f"[search_space]\n{line}\n"))
    with pytest.raises(ConfigError, match=r"augmentation\.mode: augmented views and online augmentation take one"):
        _searched(tmp_path, SEARCHED.replace("[training]", '[augmentation]\nmode = "views"\n\n[training]'))


@pytest.mark.slow  # extracts the features of two backbones (~1 min)
def test_a_two_backbone_study_trains_each_on_its_own_features(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", n_per_class=30)
    text = (SEARCHED.replace('name = "fashion_mnist"\nsubset = 2000', f'name = "folder"\npath = "{folder}"')
            .replace('name = "tpe"', 'name = "grid"').replace("epochs = 1\n", "epochs = 5\nlearning_rate = 0.003\n"))
    for entry in ("split_ratio", "dropout", "l2", "epochs"):
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(f"{entry} = {{")) + "\n"
    with without_keras_backend():
        s = search.Search(_searched(tmp_path, text), storage=f"sqlite:///{tmp_path / 's.db'}",
                          cache_dir=tmp_path / "cache")
        summary = s.optimize()
    assert summary.complete_after == 2
    trials = {t.user_attrs["backbone"]: t for t in s.study.trials}
    assert set(trials) == {"resnet50", "resnet101"} and all(t.values[0] > 0.6 for t in trials.values())
    assert set(s.cache_keys) == {"resnet50@32", "resnet101@32"}
    assert all(feature_cache.FeatureStore(tmp_path / "cache", k).n_features == 2048 for k in s.cache_keys.values())
    assert "weights_by_set" in s.study.user_attrs["search:identity"]["backbone"]
