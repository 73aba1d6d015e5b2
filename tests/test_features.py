"""Feature cache (miss, hit, damage, concurrency, full disk), preprocessing, and the cache-equivalence test."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from search import features
from search.errors import CacheError

from .conftest import ROOT


def _builder(calls: list, n: int = 8):
    def build(tmp):
        calls.append(tmp)
        np.save(tmp / "features.npy", np.arange(n * 4, dtype=np.float32).reshape(n, 4))
        np.save(tmp / "labels.npy", np.arange(n) % 2)
    return build


def test_miss_then_hit(tmp_path):
    calls: list = []
    meta = features.ensure_cached(tmp_path, "k", _builder(calls))
    assert len(calls) == 1 and meta["shape"] == [8, 4]
    features.ensure_cached(tmp_path, "k", _builder(calls))
    assert len(calls) == 1
    x, y = features.load_cached(tmp_path, "k")
    assert x.shape == (8, 4) and y.tolist() == [0, 1] * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".k.tmp")]


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete meta", "delete labels"])
def test_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    calls: list = []
    features.ensure_cached(tmp_path, "k", _builder(calls))
    entry = tmp_path / "k"
    if damage == "flip a byte":
        raw = bytearray((entry / "features.npy").read_bytes())
        raw[-1] ^= 0xFF
        (entry / "features.npy").write_bytes(bytes(raw))
    elif damage == "truncate":
        (entry / "features.npy").write_bytes((entry / "features.npy").read_bytes()[:50])
    elif damage == "delete meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "labels.npy").unlink()
    with pytest.warns(UserWarning, match="damaged; rebuilding"):
        features.ensure_cached(tmp_path, "k", _builder(calls))
    assert len(calls) == 2
    assert features.load_cached(tmp_path, "k")[0][-1, -1] == 31.0


def test_full_disk_leaves_no_partial_entry(tmp_path):
    def build(tmp):
        np.save(tmp / "labels.npy", np.arange(3))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError, match="cannot write feature cache in .*: no space left on device"):
        features.ensure_cached(tmp_path, "k", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock"]


def test_two_processes_build_once(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from search import features
        def build(tmp):
            with open(Path({str(tmp_path)!r}) / "builds.log", "a") as f:
                f.write("build\\n")
            time.sleep(1.0)
            np.save(tmp / "features.npy", np.ones((4, 2), np.float32))
            np.save(tmp / "labels.npy", np.zeros(4, np.int64))
        meta = features.ensure_cached(Path({str(tmp_path)!r}) / "cache", "k", build)
        print(meta["shape"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(o.strip() == "[4, 2]" for o in outs)
    assert (tmp_path / "builds.log").read_text().count("build") == 1


def test_cache_key_separates_what_changes_features():
    w = features.resolve_weights("random")
    base = features.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc")
    assert base != features.cache_key("fashion_mnist", 0, "caffe", "bilinear", w, "abc")
    assert base != features.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abd")
    assert base != features.cache_key("fashion_mnist", 0, "unit", "bilinear",
                                      features.resolve_weights("imagenet"), "abc")
    assert base == features.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc")


def test_weights_file_identity_and_missing_file(tmp_path):
    from search.errors import WeightsError

    f = tmp_path / "w.h5"
    f.write_bytes(b"weights")
    assert features.resolve_weights(str(f)).identity.startswith("file:sha256=")
    with pytest.raises(WeightsError, match="--weights: .* is neither 'imagenet', 'random' nor an existing file"):
        features.resolve_weights(str(tmp_path / "missing.h5"))


def test_preprocessing_unit_and_caffe():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x = features.to_backbone_input(gray, "unit")
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x[..., 0], x[..., 2])  # grayscale repeated on three channels
    c = features.to_backbone_input(gray, "caffe")
    assert c.min() < -50  # mean-subtracted 0-255 inputs, as the ImageNet weights expect


def test_cached_head_equals_backbone_in_the_loop():
    """The cache changes the cost, not the result: same seed, same predictions."""
    import keras

    from search import head

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 28, 28), dtype=np.uint8)
    y = np.arange(48) % 10
    x = features.to_backbone_input(images, "unit")
    backbone = features.build_backbone(features.resolve_weights("random"))
    feats = backbone.predict(x, batch_size=16, verbose=0)
    p = head.HeadParams(units=64, dropout=0.3, l1=1e-5, l2=1e-4, learning_rate=1e-3, batch_size=16, epochs=2)

    cached, _ = head.train_head(feats, y, 10, p, seed=7)
    in_loop = head.full_model(backbone, head.build_head(feats.shape[1], 10, p, seed=7))
    head.fit(in_loop, x, y, p, seed=7)

    a = cached.predict(feats, verbose=0)
    b = in_loop.predict(x, verbose=0)
    assert not np.allclose(a, np.full_like(a, 0.1), atol=1e-3)  # it learned something
    np.testing.assert_allclose(a, b, atol=1e-4)
    keras.backend.clear_session()
