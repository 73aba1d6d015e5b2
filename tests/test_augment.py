"""Augmentation (search.training.augment): the view cache, per-epoch view draws, online trials, and only training rows augmented.

Self-contained: it imports only the on-disk writers of tests/conftest.py.  The
view-extraction and end-to-end tests run the real jobs in child processes on a
tiny synthetic Fashion-MNIST with random backbone weights.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.config import StudyConfig
from search.config.spec import TrialSpec
from search.errors import CacheError, DataError, TrialFailed
from search.features import backbones, feature_cache
from search.runtime import extraction_backend
from search.study.objective import Context, resolve_params, trial_spec
from search.training import augment
from tests.conftest import write_fashion_dir

ROOT = Path(__file__).resolve().parent.parent
D = 16  # feature width of the synthetic caches (the head does not care that it is not 2048)


# ---------------------------------------------------------------- helpers

def _config(**sections) -> StudyConfig:
    raw = {"name": "t", "dataset": {"name": "fashion_mnist"}, "backbone": {"weights": "random"},
           "head": {"units": 16}, "training": {"epochs": 2, "batch_size": 32, "evaluation": "validation"},
           "objectives": [{"metric": "accuracy", "direction": "maximize"}], "run": {"n_trials": 1}}
    raw.update(sections)
    return StudyConfig.model_validate(raw)


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 10


def _write_entry(cache_dir: Path, key: str, n: int, views: int | None = None) -> None:
    """A synthetic cache entry whose rows say what they are: column 0 the row, column 1 the view (-1: plain).

    Columns 2.. carry the class (so a head can learn) plus noise.
    """
    labels = _labels(n)
    rng = np.random.default_rng(0)

    def rows(view: int) -> np.ndarray:
        x = rng.normal(0.0, 0.1, size=(n, D)).astype(np.float32)
        x[np.arange(n), 2 + labels % (D - 2)] += 3.0
        x[:, 0] = np.arange(n)
        x[:, 1] = view
        return x

    def build(tmp: Path) -> None:
        shape = (n, D) if views is None else (views, n, D)
        f = feature_cache.open_features(tmp / "features.npy", shape)
        if views is None:
            f[:] = rows(-1)
        else:
            for v in range(views):
                f[v] = rows(v)
        f.flush()
        del f
        np.save(tmp / "labels.npy", labels.astype(np.int64))

    feature_cache.ensure_cached(cache_dir, key, build)


def _spec(cache_dir: Path, n: int, views: int, mode: str = "views", **params) -> TrialSpec:
    config = _config(augmentation={"mode": mode, "views": views})
    resolved = {**resolve_params(config, {}), **params}
    ctx = Context(config=config, cache_dir=cache_dir, cache_key="plain", n_classes=10, target=1,
                  extra_spec={"views_key": "views"})
    return trial_spec(ctx, resolved)


# ---------------------------------------------------------------- which modes a study uses, and its spec

def test_modes_used_fixed_searched_and_per_arm():
    assert augment.modes_used(_config()) == {"none"}
    assert augment.modes_used(_config(augmentation={"mode": "views"})) == {"views"}
    searched = _config(search_space={"augmentation": {"type": "categorical", "choices": ["none", "online"]}})
    assert augment.modes_used(searched) == {"none", "online"}
    arms = _config(arms={"a": {"augmentation": "views"}, "b": {"epochs": 3}},
                   search_space={"arm": {"type": "categorical", "choices": ["a", "b"]}})
    assert augment.modes_used(arms) == {"views", "none"}   # arm b keeps the fixed mode


def test_extra_spec_and_trial_backend(tmp_path):
    config = _config(search_space={"augmentation": {"type": "categorical", "choices": ["views", "online"]}})
    w = backbones.resolve_weights("random")
    extra = augment.extra_spec(config, views_key="vk", weights=w, fingerprint="f00", data_dir=tmp_path)
    assert extra["views_key"] == "vk"
    assert extra["online"]["fingerprint"] == "f00" and extra["online"]["data_dir"] == str(tmp_path.resolve())
    assert extra["online"]["backend"] == extraction_backend()
    assert augment.extra_spec(_config(), views_key=None, weights=w, fingerprint="f", data_dir=None) == {}
    spec = _spec(tmp_path, 0, views=2, mode="online").replace(online=extra["online"])
    assert augment.trial_backend(spec, "jax") == extraction_backend()
    assert augment.trial_backend(_spec(tmp_path, 0, views=2).replace(online=extra["online"]), "jax") == "jax"


def test_view_cache_key_holds_the_settings():
    w = backbones.resolve_weights("random")
    rt = {"extraction_backend": "tensorflow", "keras": "3", "tensorflow": "2"}
    base = augment.view_key(_config(augmentation={"views": 4}), w, "fp", rt)
    assert "views" in base and base == augment.view_key(_config(augmentation={"views": 4}), w, "fp", rt)
    assert base != augment.view_key(_config(augmentation={"views": 8}), w, "fp", rt)
    assert base != augment.view_key(_config(augmentation={"views": 4, "rotation": 10.0}), w, "fp", rt)
    assert base != feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "fp", rt)


# ---------------------------------------------------------------- seeded views

def test_view_draws_are_seeded_per_trial_and_epoch():
    a = augment.draw_views(1000, 4, seed=0, epoch=0)
    assert np.array_equal(a, augment.draw_views(1000, 4, seed=0, epoch=0))
    assert not np.array_equal(a, augment.draw_views(1000, 4, seed=1, epoch=0))
    assert not np.array_equal(a, augment.draw_views(1000, 4, seed=0, epoch=1))
    assert set(a.tolist()) == {0, 1, 2, 3}
    assert backbones.view_seed(0, 0) != backbones.view_seed(0, 1) != backbones.view_seed(1, 1)


def _extract_views(data_dir: Path, out: Path, seed: int, views: int = 2, paper: bool = True) -> np.ndarray:
    """A view cache (or, with ``views=0``, the plain cache) of the images in ``data_dir``, by the service's jobs."""
    from search.isolate import run_isolated

    out.mkdir()
    aug = (20.0, 0.2, True) if paper else (0.0, 0.0, False)
    settings = augment.view_settings({"rotation": aug[0], "shift": aug[1], "horizontal_flip": aug[2],
                                      "views": views}, seed=seed)
    spec = {"dataset": "fashion_mnist", "data_dir": str(data_dir), "subset": 0, "subset_seed": 0,
            "preprocessing": "unit", "resize": "bilinear", "weights": vars(backbones.resolve_weights("random")),
            "views": settings, "out_dir": str(out)}
    job = "search.features.feature_cache:extract_views_job" if views else "search.features.feature_cache:extract_job"
    run_isolated(job, spec, env={"KERAS_BACKEND": "tensorflow"})
    return np.load(out / "features.npy")


@pytest.mark.slow  # real extraction / end-to-end runs: CI runs it (--slow)
def test_extracted_views_are_seeded(tmp_path):
    """Same seed, same views (another process); another seed, other views; views differ from each other."""
    data_dir = write_fashion_dir(tmp_path / "fm", n_train=24, n_test=8)
    a = _extract_views(data_dir, tmp_path / "a", seed=0)
    b = _extract_views(data_dir, tmp_path / "b", seed=0)
    c = _extract_views(data_dir, tmp_path / "c", seed=1)
    assert a.shape == (2, 32, 2048)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])
    assert np.array_equal(np.load(tmp_path / "a" / "labels.npy"), np.load(tmp_path / "c" / "labels.npy"))
    # Without augmentation a view is the plain feature of the same row: same images, order and preprocessing.
    plain = _extract_views(data_dir, tmp_path / "plain", seed=0, views=0)
    identity = _extract_views(data_dir, tmp_path / "identity", seed=0, views=1, paper=False)
    np.testing.assert_allclose(identity[0], plain, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the view cache is verified like the plain one

def test_view_cache_is_verified_per_block(tmp_path):
    n = 3000  # 2 views x 3000 rows = 6000 rows: block 0 holds view 0 and view 1's first 1096 rows
    _write_entry(tmp_path, "views", n, views=2)
    store = feature_cache.FeatureStore(tmp_path, "views")
    assert (store.n, store.n_views) == (n, 2)
    x = store.take(np.array([5, 2999]), np.array([0, 1]))
    assert x[:, 0].tolist() == [5, 2999] and x[:, 1].tolist() == [0, 1]
    store.close()

    entry = tmp_path / "views" / "features.npy"
    raw = bytearray(entry.read_bytes())
    raw[-4] ^= 0xFF   # the last row of view 1: block 1
    entry.write_bytes(bytes(raw))
    store = feature_cache.FeatureStore(tmp_path, "views")
    assert store.take(np.arange(n), 0).shape == (n, D)       # block 0 only: fine
    with pytest.raises(CacheError, match=r"rows 4096-8191 fail their checksum"):
        store.take(np.array([2999]), 1)
    store.close()
    with pytest.warns(UserWarning, match="damaged; rebuilding"):
        _write_entry(tmp_path, "views", n, views=2)
    feature_cache.FeatureStore(tmp_path, "views").verify_all()


def test_release_drops_the_map_from_memory(tmp_path):
    """Gathering from a view cache several times a trial's rows must not leave the file resident."""
    n, views = 16384, 4   # 16384 x 4 x 16 floats = 4 MB
    _write_entry(tmp_path, "views", n, views=views)
    store = feature_cache.FeatureStore(tmp_path, "views")

    def mapped_kb() -> int:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if line.endswith(str(tmp_path / "views" / "features.npy")):
                return next(int(x.split()[1]) for x in lines[i + 1:] if x.startswith("Rss:"))
        return 0

    store.verify_all()
    assert mapped_kb() < 1024   # every block was checked, none stays resident
    store.take(np.arange(n), np.arange(n) % views)
    assert mapped_kb() > 1024
    store.release()
    assert mapped_kb() < 64
    store.close()


# ---------------------------------------------------------------- epochs of views

def _hp(**kw):
    from search.training.head import HeadParams

    return HeadParams(**{"units": 16, "dropout": 0.0, "l1": 0.0, "l2": 0.0, "learning_rate": 1e-3,
                         "batch_size": 32, "epochs": 2, **kw})


def _epoch(batches) -> tuple[np.ndarray, np.ndarray, list]:
    out = [batches[i] for i in range(len(batches))]
    x = np.concatenate([b[0] for b in out])
    return x, np.concatenate([b[1] for b in out]), out


def test_each_epoch_draws_one_view_per_training_row(tmp_path):
    n, views = 500, 3
    _write_entry(tmp_path, "views", n, views=views)
    store = feature_cache.FeatureStore(tmp_path, "views")
    rows = np.sort(np.random.default_rng(1).choice(n, 300, replace=False))
    y = _labels(n)[rows]
    batches = augment.view_batches(store, rows, y, 10, _hp(), seed=7)
    seen = []
    for epoch in range(3):
        x, yy, _ = _epoch(batches)
        order = np.argsort(x[:, 0])
        assert x[order, 0].astype(int).tolist() == rows.tolist()           # every training row once, no other
        assert x[order, 1].astype(int).tolist() == augment.draw_views(len(rows), views, 7, epoch).tolist()
        assert np.array_equal(yy[order], y)                                 # labels travel with their rows
        seen.append(x[:, :2].copy())
        batches.on_epoch_end()
    assert not np.array_equal(seen[0], seen[1])                             # a new draw and order each epoch
    again = augment.view_batches(store, rows, y, 10, _hp(), seed=7)
    assert np.array_equal(_epoch(again)[0][:, :2], seen[0])                 # same seed, same epoch
    other = augment.view_batches(store, rows, y, 10, _hp(), seed=8)
    assert not np.array_equal(_epoch(other)[0][:, :2], seen[0])


def test_view_batches_carry_class_weights_one_hot_targets_and_resampling(tmp_path):
    n = 400
    _write_entry(tmp_path, "views", n, views=2)
    store = feature_cache.FeatureStore(tmp_path, "views")
    rows = np.flatnonzero((_labels(n) != 9) | (np.arange(n) < 20))   # class 9 rare: 2 rows
    y = _labels(n)[rows]
    _, _, out = _epoch(augment.view_batches(store, rows, y, 10, _hp(handling="class_weight"), seed=0))
    assert len(out[0]) == 3 and out[0][2].shape == (32,)
    _, yy, _ = _epoch(augment.view_batches(store, rows, y, 10, _hp(handling="focal"), seed=0))
    assert yy.shape == (len(rows), 10)
    x, yy, _ = _epoch(augment.view_batches(store, rows, y, 10, _hp(), seed=0, handling="oversample"))
    assert np.bincount(yy).tolist() == [40] * 10 and set(x[:, 1].astype(int)) == {0, 1}


# ---------------------------------------------------------------- only training rows are augmented

def test_only_training_rows_are_augmented(tmp_path, monkeypatch):
    """A views trial reads its training rows from the view cache only, and every other row from the plain one."""
    from search.trial import child

    n = 600
    _write_entry(tmp_path, "plain", n)
    _write_entry(tmp_path, "views", n, views=3)
    spec = _spec(tmp_path, n, views=3, balance="imbalanced")
    taken: list[tuple[str, np.ndarray, np.ndarray]] = []
    take = feature_cache.FeatureStore.take

    def spy(self, idx, view=0):
        out = take(self, idx, view)
        taken.append((self.entry.name, out[:, 0].astype(int), out[:, 1].astype(int)))
        return out

    monkeypatch.setattr(feature_cache.FeatureStore, "take", spy)
    result = child.run_trial(spec.as_dict(), lambda **kw: None)
    split = child.split_rows(spec, _labels(n))
    fit, others = set(split.fit.tolist()), set(split.val.tolist()) | set(split.test.tolist())
    from_views = np.concatenate([r for name, r, _ in taken if name == "views"])
    from_plain = np.concatenate([r for name, r, _ in taken if name == "plain"])
    assert set(from_views.tolist()) == fit                                          # training rows only, all
    assert np.bincount(from_views, minlength=n)[split.fit].min() >= 2                # each in both epochs
    assert set(from_plain.tolist()) == others                                       # validation and test: plain
    assert all((v >= 0).all() for name, _, v in taken if name == "views")
    assert result["augmentation"] == "views" and result["views"] == 3
    assert len(fit) < 0.64 * n   # the imbalance removed training rows, and only those were augmented
    assert result["n_train"] == len(fit) and sum(result["fit_class_counts"]) == len(fit)


# ---------------------------------------------------------------- online: checks before it trains

def test_online_refuses_other_data_and_resampling(tmp_path):
    data_dir = write_fashion_dir(tmp_path / "fm", n_train=40, n_test=10)
    _write_entry(tmp_path, "plain", 50)
    store = feature_cache.FeatureStore(tmp_path, "plain")
    online = {"dataset": "fashion_mnist", "subset": 0, "data_dir": str(data_dir), "fingerprint": "0" * 16,
              "preprocessing": "unit", "resize": "bilinear", "weights": vars(backbones.resolve_weights("random")),
              "backend": "tensorflow"}
    spec = _spec(tmp_path, 50, views=2, mode="online").replace(online=online)
    with pytest.raises(DataError, match="not the study's data"):
        augment.training(spec, np.arange(40), store, lambda **kw: None)
    smote = spec.replace(params=dataclasses.replace(spec.params, handling="smote"))
    with pytest.raises(TrialFailed, match="resamples cached features"):
        augment.training(smote, np.arange(40), store, lambda **kw: None)
    no_views = _spec(tmp_path, 50, views=2).replace(views_key=None)
    with pytest.raises(TrialFailed, match="needs the view cache"):
        augment.training(no_views, np.arange(40), store, lambda **kw: None)


def test_online_backbone_must_reproduce_the_cached_features():
    class Backbone:
        def __init__(self, shift):
            self.shift = shift

        def predict(self, x, batch_size, verbose):
            return x.reshape(len(x), -1)[:, :4] + self.shift

    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    cached = x.reshape(3, -1)[:, :4]
    augment._check_backbone(Backbone(1e-7), x, cached)
    with pytest.raises(TrialFailed, match="does not reproduce the cached features"):
        augment._check_backbone(Backbone(0.1), x, cached)


# ---------------------------------------------------------------- end to end: a views trial and an online trial

E2E = """
[dataset]
name = "fashion_mnist"

[backbone]
weights = "random"

[head]
units = 16

[augmentation]
views = 2

[training]
epochs = 2
batch_size = 32
evaluation = "validation"

[search_space]
augmentation = { type = "categorical", choices = ["views", "online"] }

[[objectives]]
metric = "accuracy"
direction = "maximize"

[[objectives]]
metric = "peak_memory_mb"
direction = "minimize"

[sampler]
name = "grid"
"""


@pytest.mark.slow  # real extraction / end-to-end runs: CI runs it (--slow)
def test_views_and_online_trials_complete_through_the_cli(tmp_path):
    import optuna

    data_dir = write_fashion_dir(tmp_path / "fm", n_train=150, n_test=50)
    (tmp_path / "aug.toml").write_text(E2E)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(PYTHONPATH=str(ROOT), SEARCH_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "search.run", "--study", str(tmp_path / "aug.toml"),
                        "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "--data-dir", str(data_dir),
                        "--cache-dir", str(tmp_path / "cache")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2 augmented views cached" in r.stdout + r.stderr
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert [e.split("-")[3] for e in entries] == ["plain", "views"]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="aug", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    trials = {t.params["augmentation"]: t for t in study.trials}
    assert set(trials) == {"views", "online"}
    for mode, t in trials.items():
        a = t.user_attrs
        assert t.state == optuna.trial.TrialState.COMPLETE, a.get("fail_reason")
        assert a["augmentation"] == mode and a["views"] == (2 if mode == "views" else 0)
        assert a["objective_split"] == "validation" and t.values[0] == a["val_accuracy"]
        assert 0 <= a["test_accuracy"] <= 1 and 0 <= a["test_roc_auc"] <= 1
        assert "accuracy" not in a                               # every quality metric names its split
        assert len(a["history"]["loss"]) == 2 and len(a["history"]["val_accuracy"]) == 2
        assert a["train_time_s"] > 0 and a["peak_memory_mb"] > 0 and a["n_train"] == 128
        assert a["resolved_params"]["augmentation"] == mode
    # the online trial ran its backbone on the extraction backend, the views trial on the trials' (JAX)
    assert trials["online"].user_attrs["keras_backend"] == extraction_backend()
    assert trials["views"].user_attrs["keras_backend"] == "jax"

    # search.confirm repeats a views trial with another seed: it finds the view cache too
    c = subprocess.run([sys.executable, "-m", "search.confirm", "--study", "aug", "--storage",
                        f"sqlite:///{tmp_path / 'db.sqlite'}", "--cache-dir", str(tmp_path / "cache"),
                        "--trials", str(trials["views"].number), "--seeds", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stdout[-2000:] + c.stderr[-2000:]
    assert "FAILED" not in c.stderr
