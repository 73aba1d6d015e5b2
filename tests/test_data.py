"""search.data.datasets: readers of the real on-disk formats (CIFAR-10 checked before unpickling), where data is looked
for, pooling and slicing, exact split and imbalance counts, the evaluation protocol, resampling."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from search.config.choices import DATASETS
from search.data import datasets
from search.errors import DataError, TrialFailed

from .conftest import needs_real_fashion, write_cifar_dir, write_fashion_dir

LABELS = np.repeat(np.arange(10), 100)  # 100 per class; a 0.5 split leaves 50 per class for training


# ---------------------------------------------------------------- Fashion-MNIST

def test_fashion_idx_files_are_pooled_train_then_test(tmp_path):
    d = write_fashion_dir(tmp_path / "f", n_train=30, n_test=10)
    pooled = datasets.load_pooled("fashion_mnist", d)
    assert pooled.images.shape == (40, 28, 28) and pooled.images.dtype == np.uint8
    with gzip.open(d / "train-labels-idx1-ubyte.gz") as f:
        train_labels = list(f.read()[8:])
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz") as f:
        test_labels = list(f.read()[8:])
    assert pooled.labels.tolist() == train_labels + test_labels
    assert pooled.source == str(d)


def test_damaged_idx_file_is_named(tmp_path):
    d = write_fashion_dir(tmp_path / "f", n_train=20, n_test=10)
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: damaged IDX file"):
        datasets.load_pooled("fashion_mnist", d)


def test_fingerprint_follows_the_content(tmp_path):
    a = datasets.load_pooled("fashion_mnist", write_fashion_dir(tmp_path / "a"))
    b = datasets.load_pooled("fashion_mnist", write_fashion_dir(tmp_path / "b"))
    c = datasets.load_pooled("fashion_mnist", write_fashion_dir(tmp_path / "c", seed=1))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


# ---------------------------------------------------------------- CIFAR-10: official files only

def test_cifar_batches_are_read_when_they_match_the_official_checksums(tmp_path, monkeypatch):
    d = write_cifar_dir(tmp_path / "cifar-10-batches-py", per_batch=20)
    monkeypatch.setattr(datasets, "CIFAR_MD5", {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in d.iterdir()})
    pooled = datasets.load_pooled("cifar10", tmp_path)  # the parent of cifar-10-batches-py works too
    assert pooled.images.shape == (120, 32, 32, 3)
    assert np.bincount(pooled.labels).tolist() == [12] * 10
    # Channel-major rows become HWC images: row 0 of the red channel is the first 32 bytes.
    raw = pickle.loads((d / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    assert pooled.images[0, 0, :, 0].tolist() == raw[0, :32].tolist()


class _Payload:
    """A pickle that runs code when loaded: it would create ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_batches_that_are_not_the_official_files_are_refused_before_unpickling(tmp_path):
    d = write_cifar_dir(tmp_path / "cifar-10-batches-py", per_batch=20)
    marker = tmp_path / "code-ran"
    (d / "data_batch_1").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(DataError) as e:
        datasets.load_pooled("cifar10", d)
    assert not marker.exists()  # never unpickled
    assert str(e.value).startswith(f"{d / 'data_batch_1'}: not the official CIFAR-10 batch (MD5 ")
    assert f"expected {datasets.CIFAR_MD5['data_batch_1']}" in str(e.value)


# ---------------------------------------------------------------- where data is looked for

def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"^cifar10 files not found in {tmp_path / 'empty'}, "):
        datasets.load_pooled("cifar10", tmp_path / "empty")
    with pytest.raises(DataError) as e:  # without a directory: the Keras cache, then (offline: no) a download
        datasets.load_pooled("cifar10")
    assert f"cifar10 not found (looked in {tmp_path / 'keras'}" in str(e.value)
    assert "downloads disabled by SEARCH_OFFLINE=1" in str(e.value) and "--data-dir" in str(e.value)


def test_a_named_data_dir_is_never_replaced_by_other_data(tmp_path):
    """A directory without the files fails even where Debian's Fashion-MNIST exists."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="fashion_mnist files not found in .*apt-get install dataset-fashion-mnist"):
        datasets.load_pooled("fashion_mnist", tmp_path / "empty")


def test_unknown_dataset_and_oversized_slice(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'; valid: fashion_mnist, cifar10"):
        datasets.load_pooled("mnist")
    d = write_fashion_dir(tmp_path / "f", n_train=20, n_test=10)
    with pytest.raises(DataError, match="dataset.subset: 30 is not below the 30 images of fashion_mnist"):
        datasets.load_pooled("fashion_mnist", d, subset=30)


def test_class_names_come_from_the_registry_for_built_in_datasets():
    assert DATASETS["fashion_mnist"].class_names[:2] == ("T-shirt/top", "Trouser")
    assert DATASETS["cifar10"].class_names[0] == "airplane"
    assert DATASETS["fashion_mnist"].n_classes == DATASETS["cifar10"].n_classes == 10


# ---------------------------------------------------------------- splits, slices, imbalance

def test_split_is_stratified_and_seeded():
    tr, te = datasets.split_indices(LABELS, 0.8, seed=3)
    assert np.bincount(LABELS[tr]).tolist() == [80] * 10 and np.bincount(LABELS[te]).tolist() == [20] * 10
    assert not set(tr) & set(te)
    assert np.array_equal(tr, datasets.split_indices(LABELS, 0.8, seed=3)[0])
    assert not np.array_equal(tr, datasets.split_indices(LABELS, 0.8, seed=4)[0])


@pytest.mark.parametrize("profile, rho, expected", [
    # paper: round(0.1 * 50) = 5 removed from classes 0, 1, 2
    ("paper", 10.0, [45, 45, 45] + [50] * 7),
    # long_tail: floor(50 * rho ** (-i / 9)); 50 * 10 ** (-1/9) = 38.7 -> 38, ..., class 9: 50 / 10 = 5
    ("long_tail", 10.0, [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]),
    # rho 100: class 9 would keep 0.5 -> floor 0, raised to the minimum of one sample
    ("long_tail", 100.0, [50, 29, 17, 10, 6, 3, 2, 1, 1, 1]),
    # step: classes 5-9 keep floor(50 / rho)
    ("step", 10.0, [50] * 5 + [5] * 5),
    ("step", 4.0, [50] * 5 + [12] * 5),
])
def test_imbalance_profiles_keep_exact_counts_of_the_training_part(profile, rho, expected):
    tr, te = datasets.split_indices(LABELS, 0.5, seed=0)
    kept = datasets.apply_profile(tr, LABELS, 10, profile, seed=0, rho=rho, paper_classes=(0, 1, 2), fraction=0.1)
    assert datasets.class_counts(LABELS[kept], 10) == expected
    assert set(kept) <= set(tr) and len(set(kept)) == len(kept)  # a subset of the training part, no repeats
    assert datasets.class_counts(LABELS[te], 10) == [50] * 10  # the test part is untouched
    assert np.array_equal(kept, datasets.apply_profile(tr, LABELS, 10, profile, seed=0, rho=rho))  # seeded


def test_reduced_classes_are_the_profiles_minorities():
    assert datasets.reduced_classes("paper", 10, (0, 1, 2)) == (0, 1, 2)
    assert datasets.reduced_classes("step", 10, (0, 1, 2)) == (5, 6, 7, 8, 9)
    assert datasets.reduced_classes("long_tail", 10, (0, 1, 2)) == (5, 6, 7, 8, 9)
    with pytest.raises(ValueError, match="unknown imbalance profile 'zipf'; valid: paper, long_tail, step"):
        datasets.reduced_classes("zipf", 10, ())


def test_validation_split_is_carved_from_the_training_part():
    fit, val, test = datasets.protocol_split(LABELS, 0.8, seed=0, evaluation="validation", validation_fraction=0.25)
    assert not set(fit) & set(val) and not set(fit) & set(test) and not set(val) & set(test)
    assert sorted([*fit, *val, *test]) == list(range(len(LABELS)))
    # stratified: 80 training per class -> 60 fit + 20 validation; 20 test
    assert datasets.class_counts(LABELS[fit], 10) == [60] * 10 and datasets.class_counts(LABELS[val], 10) == [20] * 10
    # the held-out test split is the paper protocol's, so test metrics of both protocols compare
    tr, te = datasets.split_indices(LABELS, 0.8, seed=0)
    assert np.array_equal(test, te) and sorted([*fit, *val]) == tr.tolist()
    fit_t, val_t, test_t = datasets.protocol_split(LABELS, 0.8, seed=0, evaluation="test", validation_fraction=0.25)
    assert val_t is None and np.array_equal(fit_t, tr) and np.array_equal(test_t, te)
    assert not np.array_equal(val, datasets.protocol_split(LABELS, 0.8, 1, "validation", 0.25)[1])  # seeded


# ---------------------------------------------------------------- resampling the cached features

def test_random_oversampling_brings_every_class_to_the_largest_with_copies():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [40, 20, 10, 5])
    x = rng.normal(size=(len(y), 8)).astype(np.float32)
    xr, yr = datasets.resample(x, y, "oversample", seed=0)
    assert datasets.class_counts(yr, 4) == [40] * 4
    assert {r.tobytes() for r in xr} == {r.tobytes() for r in x}  # only duplicates, every original kept


def test_smote_makes_new_rows_between_same_class_neighbours():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [30, 6, 3])
    x = (rng.normal(size=(len(y), 8)) + 10 * y[:, None]).astype(np.float32)
    xr, yr = datasets.resample(x, y, "smote", seed=0)
    assert datasets.class_counts(yr, 3) == [30] * 3
    assert not {r.tobytes() for r in xr[len(y):]} <= {r.tobytes() for r in x}  # synthetic, not copies
    for c in (1, 2):  # interpolations stay inside their class's bounding box
        own, made = x[y == c], xr[len(y):][yr[len(y):] == c]
        assert np.all(made >= own.min(0) - 1e-5) and np.all(made <= own.max(0) + 1e-5)


def test_smote_with_a_single_sample_class_fails_the_trial_clearly():
    with pytest.raises(TrialFailed, match="smote needs at least 2 training samples in every class"):
        datasets.resample(np.zeros((11, 3), np.float32), np.array([0] * 10 + [1]), "smote", 0)


# ---------------------------------------------------------------- the real dataset (a small real slice)

@needs_real_fashion
def test_real_fashion_mnist_pools_70000_and_the_papers_imbalance_counts():
    pooled = datasets.load_pooled("fashion_mnist")
    assert pooled.source == str(datasets.DEBIAN_FASHION_MNIST)
    assert pooled.images.shape == (70000, 28, 28)
    assert datasets.class_counts(pooled.labels, 10) == [7000] * 10
    tr, te = datasets.split_indices(pooled.labels, 0.8, seed=0)
    assert datasets.class_counts(pooled.labels[tr], 10) == [5600] * 10
    assert datasets.class_counts(pooled.labels[te], 10) == [1400] * 10
    kept = datasets.imbalance(tr, pooled.labels, (0, 1, 2), 0.1, seed=0)
    # The paper's imbalance on the training part only: 10% of classes 0-2 removed.
    assert datasets.class_counts(pooled.labels[kept], 10) == [5040] * 3 + [5600] * 7


@needs_real_fashion
def test_real_slice_is_stratified_and_stable():
    a = datasets.load_pooled("fashion_mnist", subset=2000)
    b = datasets.load_pooled("fashion_mnist", subset=2000)
    assert datasets.class_counts(a.labels, 10) == [200] * 10
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != datasets.load_pooled("fashion_mnist", subset=2000, seed=1).fingerprint()
