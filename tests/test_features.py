"""search.features.feature_cache: the cache is built once, verified by every reader (a damaged one is never used), shareable
read-only, and keyed by everything that changes the features; the cached head equals the backbone in the loop."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from search.errors import CacheError, WeightsError
from search.features import backbones, feature_cache

from .conftest import ROOT, as_user_without_overrides, cli_env


def _builder(calls: list, n: int = 8, dim: int = 4):
    def build(tmp):
        calls.append(tmp)
        np.save(tmp / "features.npy", np.arange(n * dim, dtype=np.float32).reshape(n, dim))
        np.save(tmp / "labels.npy", np.arange(n) % 2)
    return build


def _flip(path, offset: int = -1) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_miss_builds_then_hit_reads_without_building(tmp_path):
    calls: list = []
    feature_cache.ensure_cached(tmp_path, "k", _builder(calls))
    feature_cache.ensure_cached(tmp_path, "k", _builder(calls))
    assert len(calls) == 1
    store = feature_cache.FeatureStore(tmp_path, "k")
    assert store.take(np.array([1, 3])).tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert store.labels.tolist() == [0, 1] * 4 and store.n == 8 and store.n_views == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.lock"]  # no leftover temporary build


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete meta", "delete labels"])
def test_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    calls: list = []
    feature_cache.ensure_cached(tmp_path, "k", _builder(calls))
    entry = tmp_path / "k"
    if damage == "flip a byte":
        _flip(entry / "features.npy")
    elif damage == "truncate":
        (entry / "features.npy").write_bytes((entry / "features.npy").read_bytes()[:50])
    elif damage == "delete meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "labels.npy").unlink()
    with pytest.warns(UserWarning, match="damaged; rebuilding"):
        feature_cache.ensure_cached(tmp_path, "k", _builder(calls))
    assert len(calls) == 2
    assert feature_cache.FeatureStore(tmp_path, "k").take(np.array([7]))[0, -1] == 31.0


def test_a_reader_refuses_rows_damaged_after_the_cache_was_checked(tmp_path):
    """What a trial process or search.confirm meets when the cache changes under a running command."""
    feature_cache.ensure_cached(tmp_path, "k", _builder([], n=3 * feature_cache.BLOCK_ROWS, dim=2))
    store = feature_cache.FeatureStore(tmp_path, "k")
    good = store.take(np.array([0, 1]))
    # Zero the last block on disk (the "overwritten with zeros" of issue 10).
    feats = np.load(tmp_path / "k" / "features.npy", mmap_mode="r+")
    feats[2 * feature_cache.BLOCK_ROWS:] = 0
    feats.flush()
    del feats
    with pytest.raises(CacheError, match=r"is damaged \(rows 8192-12287 fail their checksum\); it was not used"):
        store.take(np.array([0, 2 * feature_cache.BLOCK_ROWS + 5]))
    assert store.take(np.array([0, 1])).tolist() == good.tolist()  # verified blocks stay usable
    with pytest.raises(CacheError):
        feature_cache.FeatureStore(tmp_path, "k").verify_all()


def test_prefetch_asks_for_the_whole_file_and_a_missing_entry_is_no_error(tmp_path, monkeypatch):
    """A trial's head start for the next one: every byte of the features file is requested, not the first
    read-ahead window only; nothing is mapped; a missing entry (or a platform without fadvise) is silent."""
    feature_cache.ensure_cached(tmp_path, "k", _builder([], n=2 * feature_cache.BLOCK_ROWS + 7, dim=256))
    size = (tmp_path / "k" / "features.npy").stat().st_size
    asked: list[tuple[int, int, int]] = []
    monkeypatch.setattr(feature_cache.os, "posix_fadvise", lambda fd, offset, length, advice: asked.append(
        (offset, length, advice)))
    feature_cache.prefetch(tmp_path, "k")
    assert {a for _, _, a in asked} == {feature_cache.os.POSIX_FADV_WILLNEED}
    covered = sorted((o, o + n) for o, n, _ in asked)
    assert covered[0][0] == 0 and covered[-1][1] >= size > feature_cache.PREFETCH_BYTES
    assert all(a[1] >= b[0] for a, b in zip(covered, covered[1:]))  # no gap
    feature_cache.prefetch(tmp_path, "missing")  # no error
    monkeypatch.delattr(feature_cache.os, "posix_fadvise")
    feature_cache.prefetch(tmp_path, "k")  # no error


def test_damaged_labels_or_metadata_are_refused_on_open(tmp_path):
    feature_cache.ensure_cached(tmp_path, "k", _builder([]))
    _flip(tmp_path / "k" / "labels.npy")
    with pytest.raises(CacheError, match="damaged \\(labels checksum\\)"):
        feature_cache.FeatureStore(tmp_path, "k")
    (tmp_path / "k" / "meta.json").write_text(json.dumps({"key": "k"}))
    with pytest.raises(CacheError, match="damaged or from an older version"):
        feature_cache.FeatureStore(tmp_path, "k")
    with pytest.raises(CacheError, match="cannot be read"):
        feature_cache.FeatureStore(tmp_path, "missing")


def test_full_disk_leaves_no_partial_entry(tmp_path):
    def build(tmp):
        np.save(tmp / "labels.npy", np.arange(3))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError, match="cannot write feature cache in .*: no space left on device"):
        feature_cache.ensure_cached(tmp_path, "k", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock"]


def test_concurrent_processes_build_once(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from search.features import backbones, feature_cache
        def build(tmp):
            with open(Path({str(tmp_path)!r}) / "builds.log", "a") as f:
                f.write("build\\n")
            time.sleep(1.0)
            np.save(tmp / "features.npy", np.ones((4, 2), np.float32))
            np.save(tmp / "labels.npy", np.zeros(4, np.int64))
        feature_cache.ensure_cached(Path({str(tmp_path)!r}) / "cache", "k", build)
        print(feature_cache.FeatureStore(Path({str(tmp_path)!r}) / "cache", "k").take([0, 3]).tolist())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert all(o.strip() == "[[1.0, 1.0], [1.0, 1.0]]" for o in outs)
    assert (tmp_path / "builds.log").read_text().count("build") == 1


def test_a_complete_cache_in_a_read_only_directory_is_used_without_writing(tmp_path):
    cache = tmp_path / "shared"
    feature_cache.ensure_cached(cache, "k", _builder([]))
    (cache / "k.lock").unlink()
    for p in (cache / "k", cache):
        p.chmod(0o555)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from search.features import backbones, feature_cache
        def build(tmp):
            raise SystemExit("must not build")
        feature_cache.ensure_cached(Path({str(cache)!r}), "k", build)
        print(feature_cache.FeatureStore(Path({str(cache)!r}), "k").take([1]).tolist())
        try:
            feature_cache.ensure_cached(Path({str(cache)!r}), "other", build)
        except feature_cache.CacheError as e:
            print(e)
    """)
    try:
        r = subprocess.run([*as_user_without_overrides(), sys.executable, "-c", script], env=cli_env(),
                           capture_output=True, text=True, timeout=120)
    finally:
        for p in (cache, cache / "k"):
            p.chmod(0o755)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "[[4.0, 5.0, 6.0, 7.0]]"
    # Building in a read-only directory is the one thing that needs write access: said in one line.
    assert out[1].startswith(f"cannot build feature cache in {cache}: Permission denied")
    assert sorted(p.name for p in cache.iterdir()) == ["k"]  # no lock file, nothing written


def test_cache_key_separates_what_changes_features():
    w = backbones.resolve_weights("random")
    rt = {"trial_backend": "jax", "extraction_backend": "tensorflow", "keras": "3.15.1", "tensorflow": "2.21.0",
          "jax": "0.10.2"}
    base = feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc", rt)
    assert base == feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc", rt)
    assert base.startswith("fashion_mnist-all-unit-plain-")
    for other in (
        feature_cache.cache_key("fashion_mnist", 0, "caffe", "bilinear", w, "abc", rt),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "nearest", w, "abc", rt),
        feature_cache.cache_key("fashion_mnist", 2000, "unit", "bilinear", w, "abc", rt),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abd", rt),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", backbones.Weights("file", "/w", "file:sha256=1"),
                           "abc", rt),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc", {**rt, "extraction_backend": "jax"}),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc", {**rt, "keras": "3.16.0"}),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc", {**rt, "tensorflow": "2.22.0"}),
        feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc", rt, augmentation={"views": 4}),
    ):
        assert other != base
    # The trials' backend does not change the features: one cache serves studies on any trial backend.
    assert feature_cache.cache_key("fashion_mnist", 0, "unit", "bilinear", w, "abc",
                              {**rt, "trial_backend": "tensorflow"}) == base


def test_weights_files_are_identified_by_content(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    c.write_bytes(b"other weights")
    ida, idb, idc = (backbones.resolve_weights(str(p)).identity for p in (a, b, c))
    assert ida.startswith("file:sha256=") and ida == idb != idc  # a renamed copy is the same weights
    with pytest.raises(WeightsError, match="weights '.*missing.h5' are neither 'imagenet', 'random' nor an existing"):
        backbones.resolve_weights(str(tmp_path / "missing.h5"))
    assert backbones.resolve_weights("random").identity == "random(seed=0)"


@pytest.mark.slow  # a Keras process that tries the download (~10 s)
@pytest.mark.parametrize("backbone, cls", [("resnet50", "ResNet50"), ("densenet121", "DenseNet121")])
def test_offline_imagenet_says_what_is_missing_and_the_ways_out(tmp_path, monkeypatch, backbone, cls):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for proxy in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):  # Keras' download goes nowhere
        monkeypatch.setenv(proxy, "http://127.0.0.1:1")
    with pytest.raises(WeightsError) as e:
        backbones.resolve_weights("imagenet", backbone)
    expected = tmp_path / "keras" / "models" / backbones.APPLICATIONS[backbone].imagenet_file
    assert str(e.value).startswith(f"ImageNet weights for {cls} are not at {expected} and could not be downloaded")
    assert str(e.value).endswith("put the file there, or use --weights random or --weights PATH")


def test_preprocessing_unit_and_caffe():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x = backbones.to_backbone_input(gray, "unit")
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x[..., 0], x[..., 2])  # grayscale repeated on three channels
    c = backbones.to_backbone_input(gray, "caffe")
    assert c.min() < -50  # mean-subtracted 0-255 inputs, as the ImageNet weights expect


@pytest.mark.slow  # builds ResNet50 in this process (~15 s)
def test_cached_head_equals_backbone_in_the_loop():
    """The cache changes the cost, not the result: same seed, same predictions."""
    import keras

    from search.training import head

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 28, 28), dtype=np.uint8)
    y = np.arange(48) % 10
    x = backbones.to_backbone_input(images, "unit")
    backbone = backbones.build_backbone(backbones.resolve_weights("random"))
    feats = backbone.predict(x, batch_size=16, verbose=0)
    p = head.HeadParams(units=64, dropout=0.3, l1=1e-5, l2=1e-4, learning_rate=1e-3, batch_size=16, epochs=2)

    cached = head.build_head(feats.shape[1], 10, p, seed=7)
    head.fit(cached, feats, y, p, seed=7)
    in_loop = head.full_model(backbone, head.build_head(feats.shape[1], 10, p, seed=7))
    head.fit(in_loop, x, y, p, seed=7)

    a = cached.predict(feats, verbose=0)
    b = in_loop.predict(x, verbose=0)
    assert not np.allclose(a, np.full_like(a, 0.1), atol=1e-3)  # it learned something
    np.testing.assert_allclose(a, b, atol=1e-4)
    keras.backend.clear_session()
