"""search.trial.child: one trial on cached features: every measure named by its split, the protocol's rows, the
imbalance and its handling on the training rows only, its pictures, and a cache damaged under it refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from search.config.choices import QUALITY
from search.config.spec import TrialSpec
from search.errors import CacheError
from search.features import feature_cache
from search.isolate import run_isolated
from search.trial.child import curve_first, head_params, run_trial, split_rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[str, str]:
    """600 informative 16-dimensional feature rows, 60 per class, as a verified cache entry."""
    d = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 60)
    x = (rng.normal(size=(10, 16))[y] * 1.2 + rng.normal(size=(600, 16))).astype(np.float32)

    def build(tmp: Path) -> None:
        np.save(tmp / "features.npy", x)
        np.save(tmp / "labels.npy", y)

    feature_cache.ensure_cached(d, "k", build)
    return str(d), "k"


def spec(cache: tuple[str, str], evaluation: str = "validation", **params) -> dict:
    p = dict(split_ratio=0.8, epochs=3, batch_size=32, learning_rate=3e-3, dropout=0.1, l1=0.0, l2=0.0,
             units=16, balance="balanced", profile="step", rho=4.0, handling="none", focal_gamma=2.0,
             label_smoothing=0.0, augmentation="none", backbone="resnet50", input_size=32)
    p.update(params)
    return {"cache_dir": cache[0], "key": cache[1], "n_classes": 10, "class_names": [f"c{i}" for i in range(10)],
            "params": p, "seed": 0, "reduce_classes": [0, 1, 2], "reduce_fraction": 0.1,
            "evaluation": evaluation, "validation_fraction": 0.25, "augmentation": {"mode": "none"},
            "curve_rows": 0}


def _run(s: dict) -> dict:
    return run_trial(s, lambda **kw: None)


@pytest.fixture(scope="module")
def validation_trial(cache) -> dict:
    return _run(spec(cache))


def test_validation_protocol_names_every_metric_by_its_split(validation_trial):
    r = validation_trial
    assert r["objective_split"] == "validation"
    for m in QUALITY:
        assert f"val_{m}" in r and f"test_{m}" in r, m
        assert m not in r  # no unprefixed quality attribute: none can be mistaken for another split's
    # 600 images: 480 training (48/class) -> 360 fit + 120 validation; 120 held-out test
    assert (r["n_train"], r["n_val"], r["n_test"]) == (360, 120, 120)
    assert sum(map(sum, r["val_confusion_matrix"])) == 120 and sum(map(sum, r["test_confusion_matrix"])) == 120
    assert r["val_class_counts"] == [12] * 10 and r["test_class_counts"] == [12] * 10
    assert len(r["val_per_class_recall"]) == len(r["test_per_class_recall"]) == 10
    # validation and test are different samples
    assert (r["val_accuracy"], r["val_roc_auc"]) != (r["test_accuracy"], r["test_roc_auc"])
    assert r["val_time_s"] > 0 and r["test_time_s"] > 0


def test_validation_trial_records_its_curves_and_times(validation_trial):
    r = validation_trial
    h = r["history"]
    assert len(h["loss"]) == len(h["accuracy"]) == len(h["val_accuracy"]) == len(h["epoch_time_s"]) == 3
    assert "test_accuracy" not in h  # the test split is never looked at during training
    assert r["epochs_run"] == 3 and r["train_time_s"] > 0 and r["epoch_time_s"] > 0 and r["compile_time_s"] >= 0
    assert r["threads"] == len(os.sched_getaffinity(0))
    assert r["keras_backend"] in ("jax", "tensorflow", "torch")


def test_test_protocol_is_the_papers(cache):
    r = _run(spec(cache, evaluation="test"))
    assert r["objective_split"] == "test" and (r["n_train"], r["n_test"]) == (480, 120) and "n_val" not in r
    assert not [k for k in r if k.startswith("val_")]
    assert sum(map(sum, r["test_confusion_matrix"])) == 120
    assert len(r["history"]["test_accuracy"]) == 3


@pytest.mark.parametrize("handling, fit_counts", [
    ("none", [36] * 5 + [9] * 5),          # step rho 4 on 36 per class: floor(36 / 4) = 9
    ("class_weight", [36] * 5 + [9] * 5),  # the loss is weighted, the rows unchanged
    ("smote", [36] * 10),                  # every class up to the largest (RandomOverSampler: tests/test_data.py)
])
def test_imbalance_and_its_handling_touch_the_training_rows_only(cache, handling, fit_counts):
    r = _run(spec(cache, balance="imbalanced", handling=handling, epochs=1))
    assert r["train_class_counts"] == [36] * 5 + [9] * 5 and r["fit_class_counts"] == fit_counts
    assert r["reduced_classes"] == [5, 6, 7, 8, 9] and r["imbalance_profile"] == "step" and r["handling"] == handling
    assert r["val_class_counts"] == [12] * 10 and r["test_class_counts"] == [12] * 10
    assert 0.0 <= r["test_reduced_recall"] <= 1.0


def test_rows_are_split_without_overlap_and_seeded():
    labels = np.repeat(np.arange(10), 60)
    s = TrialSpec.from_dict({**spec(("unused", "k"), balance="imbalanced", profile="paper"), "reduce_fraction": 0.5})
    split = split_rows(s, labels)
    assert not set(split.fit) & set(split.val) and not set(split.fit) & set(split.test)
    assert not set(split.val) & set(split.test)
    assert split.train_counts == [18] * 3 + [36] * 7 and split.reduced == (0, 1, 2)
    again = split_rows(s, labels)
    assert np.array_equal(split.fit, again.fit) and np.array_equal(split.test, again.test)


def test_the_learning_curve_sample_is_stratified_seeded_and_leaves_the_split_whole():
    labels = np.repeat(np.arange(10), 60)
    idx = np.random.default_rng(1).permutation(600)[:400]
    ordered, k = curve_first(idx, labels, 100, seed=0)
    assert k == 100 and sorted(ordered) == sorted(idx)  # every row of the split stays, once
    counts = np.bincount(labels[ordered[:k]], minlength=10)
    assert counts.min() >= np.bincount(labels[idx], minlength=10).min() * 100 // 400 - 1  # each class in proportion
    assert np.array_equal(ordered, curve_first(idx, labels, 100, seed=0)[0])
    assert not np.array_equal(ordered[:k], curve_first(idx, labels, 100, seed=1)[0][:k])
    for whole in (0, 400, 10_000):
        assert np.array_equal(curve_first(idx, labels, whole, seed=0)[0], idx)


def test_a_curve_on_a_sample_changes_the_curve_only(cache):
    """The learning curve on 40 of the 120 validation rows: the trial's measures are those of the whole split."""
    whole, sampled = _run(spec(cache, epochs=2)), _run({**spec(cache, epochs=2), "curve_rows": 40})
    assert (whole["curve_rows"], sampled["curve_rows"]) == (120, 40)
    assert len(sampled["history"]["val_accuracy"]) == 2
    assert all(abs(a * 40 - round(a * 40)) < 1e-9 for a in sampled["history"]["val_accuracy"])  # accuracies of 40 rows
    assert whole["history"]["val_accuracy"][-1] == pytest.approx(whole["val_accuracy"])
    for m in ("val_accuracy", "val_roc_auc", "test_accuracy", "test_f1"):
        assert sampled[m] == pytest.approx(whole[m], abs=1e-6), m
    assert sampled["n_val"] == whole["n_val"] == 120


def test_head_params_take_every_setting_of_the_trial():
    p = TrialSpec.from_dict(spec(("unused", "k"), units=64, dropout=0.3, l1=1e-5, l2=0.0, learning_rate=1e-3,
                                 batch_size=32, epochs=4, handling="focal", focal_gamma=3.0, label_smoothing=0.1)).params
    hp = head_params(p)
    assert (hp.units, hp.epochs, hp.handling, hp.focal_gamma, hp.label_smoothing) == (64, 4, "focal", 3.0, 0.1)
    assert hp.one_hot


def test_a_trial_draws_its_pictures_for_both_splits(cache, tmp_path):
    s = {**spec(cache, epochs=1), "pictures": {"header": "trial 3", "backend": "jax", "weights": "random(seed=0)",
                                               "tmp_dir": str(tmp_path)}}
    r = _run(s)
    names = sorted(Path(p).name for p in r["pictures"])
    assert names == sorted(["val_confusion_matrix.png", "val_per_class_recall.png", "val_roc_curves.png",
                            "test_confusion_matrix.png", "test_per_class_recall.png", "test_roc_curves.png",
                            "learning_curves.png"])
    assert all(Path(p).stat().st_size > 5_000 for p in r["pictures"])


def test_a_cache_damaged_after_it_was_checked_is_never_used(cache, tmp_path):
    import shutil

    d = tmp_path / "cache"
    shutil.copytree(Path(cache[0]) / cache[1], d / cache[1])
    feats = np.load(d / cache[1] / "features.npy", mmap_mode="r+")
    feats[:] = 0  # "overwritten with zeros" (issue 10)
    feats.flush()
    del feats
    with pytest.raises(CacheError, match="fail their checksum\\); it was not used"):
        _run({**spec(cache), "cache_dir": str(d)})


def test_a_trial_in_its_own_process_records_its_time_cpu_threads_and_memory(cache):
    """The real trial process on one core: train/compile/steady epoch times, CPU time, threads, memory."""
    core = sorted(os.sched_getaffinity(0))[0]
    out = run_isolated("search.trial.child:run_trial", spec(cache, epochs=2), env={"KERAS_BACKEND": "jax"}, cpus=[core])
    r = out.result
    assert r["keras_backend"] == "jax" and r["threads"] == 1
    assert r["train_time_s"] > 0 and r["epoch_time_s"] > 0 and r["compile_time_s"] >= 0
    assert r["train_time_s"] >= r["epoch_time_s"]
    assert out.cpu_time_s > r["train_time_s"] * 0.5  # the process's own CPU seconds, start-up included
    assert 0 < out.trial_memory_mb < out.peak_memory_mb and out.baseline_memory_mb > 100  # the backend is loaded
