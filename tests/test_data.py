"""Datasets: readers for the real on-disk formats, search order, pooling, exact split and imbalance counts."""

from __future__ import annotations

import numpy as np
import pytest

from search import data
from search.errors import DataError

from .conftest import REAL_FASHION, needs_real_fashion, write_cifar_dir, write_fashion_dir


def test_fashion_idx_files_are_pooled_train_then_test(tmp_path):
    d = write_fashion_dir(tmp_path / "f", n_train=30, n_test=10)
    pooled = data.load_pooled("fashion_mnist", d)
    assert pooled.images.shape == (40, 28, 28) and pooled.images.dtype == np.uint8
    assert pooled.labels.tolist()[:30] == data._read_idx(d / "train-labels-idx1-ubyte.gz").tolist()
    assert pooled.source == str(d)


def test_data_dir_wins_over_system_copy(tmp_path):
    d = write_fashion_dir(tmp_path / "f", n_train=20, n_test=10)
    assert len(data.load_pooled("fashion_mnist", d).labels) == 30


def test_cifar_batches_layout(tmp_path):
    d = write_cifar_dir(tmp_path / "cifar-10-batches-py", per_batch=20)
    pooled = data.load_pooled("cifar10", tmp_path)  # the parent of cifar-10-batches-py works too
    assert pooled.images.shape == (120, 32, 32, 3)
    assert np.bincount(pooled.labels).tolist() == [12] * 10
    # Channel-major rows are turned into HWC images: row 0 of channel 0 is the first 32 bytes.
    import pickle

    raw = pickle.load(open(d / "data_batch_1", "rb"), encoding="bytes")[b"data"]
    assert pooled.images[0, 0, :, 0].tolist() == raw[0, :32].tolist()


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        data.load_pooled("cifar10", tmp_path / "empty")
    msg = str(e.value)
    assert msg.startswith(f"--data-dir: cifar10 files not found in {tmp_path / 'empty'}")
    with pytest.raises(DataError) as e:  # without --data-dir: the Keras cache, then (offline: no) download
        data.load_pooled("cifar10")
    msg = str(e.value)
    assert "cifar10 not found (looked in " + str(tmp_path / "keras") in msg
    assert "downloads disabled by SEARCH_OFFLINE=1" in msg and "--data-dir" in msg


def test_named_data_dir_is_never_replaced_by_other_data(tmp_path):
    """An explicit --data-dir without the files fails even though Debian's Fashion-MNIST exists."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--data-dir: fashion_mnist files not found"):
        data.load_pooled("fashion_mnist", tmp_path / "empty")


def test_damaged_idx_file_is_reported(tmp_path):
    d = write_fashion_dir(tmp_path / "f", n_train=20, n_test=10)
    import gzip

    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: damaged IDX file"):
        data.load_pooled("fashion_mnist", d)


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    tr, te = data.split_indices(labels, 0.8, seed=3)
    assert np.bincount(labels[tr]).tolist() == [80] * 10 and np.bincount(labels[te]).tolist() == [20] * 10
    assert not set(tr) & set(te)
    assert np.array_equal(tr, data.split_indices(labels, 0.8, seed=3)[0])
    assert not np.array_equal(tr, data.split_indices(labels, 0.8, seed=4)[0])


def test_imbalance_touches_only_named_classes():
    labels = np.repeat(np.arange(10), 100)
    tr, _ = data.split_indices(labels, 0.5, seed=0)
    kept = data.imbalance(tr, labels, (0, 1, 2), 0.1, seed=0)
    assert np.bincount(labels[kept]).tolist() == [45, 45, 45] + [50] * 7
    assert set(kept) <= set(tr)


@needs_real_fashion
def test_real_fashion_mnist_counts():
    pooled = data.load_pooled("fashion_mnist")
    assert pooled.source == str(REAL_FASHION)
    assert pooled.images.shape == (70000, 28, 28)
    assert data.class_counts(pooled.labels, 10) == [7000] * 10
    tr, te = data.split_indices(pooled.labels, 0.8, seed=0)
    assert data.class_counts(pooled.labels[tr], 10) == [5600] * 10
    assert data.class_counts(pooled.labels[te], 10) == [1400] * 10
    kept = data.imbalance(tr, pooled.labels, (0, 1, 2), 0.1, seed=0)
    # The paper's imbalance on the training part only: 10% of classes 0-2 removed, test untouched.
    assert data.class_counts(pooled.labels[kept], 10) == [5040] * 3 + [5600] * 7
    tr5, te5 = data.split_indices(pooled.labels, 0.5, seed=0)
    assert data.class_counts(pooled.labels[te5], 10) == [3500] * 10


@needs_real_fashion
def test_real_slice_is_stratified_and_stable():
    a = data.load_pooled("fashion_mnist", subset=2000)
    b = data.load_pooled("fashion_mnist", subset=2000)
    assert data.class_counts(a.labels, 10) == [200] * 10
    assert a.fingerprint() == b.fingerprint()
