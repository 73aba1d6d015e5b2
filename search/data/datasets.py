"""Datasets: find and read them, pool the official train and test sets, slice, split, unbalance.

Everything here is numpy only (no Keras import) so that the coordinating
process stays light.  Images come back as uint8 in their native shape:
(N, 28, 28) for Fashion-MNIST, (N, 32, 32, 3) for CIFAR-10; features.py makes
them backbone inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from search.config.choices import DATASETS, EVALUATIONS
from search.data import user_data
from search.errors import BadData, DataError, TrialFailed, UsageError, unknown

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# MD5 of the official batches (https://www.cs.toronto.edu/~kriz/cifar.html, as torchvision checks them).
# Batches are pickles: anything else must never reach pickle.load, which can run code.
CIFAR_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


@dataclass(frozen=True)
class Pooled:
    """Official train and test sets concatenated, in that order (a user's own data: as read)."""

    images: np.ndarray
    labels: np.ndarray
    source: str  # where the files were read from, or "keras download"
    class_names: tuple[str, ...] | None = None  # a user's own data: read from it (built-ins: the registry's)

    def fingerprint(self) -> str:
        """The data's content: images, labels and (a user's own data) class names."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)
        h.update(self.labels.astype(np.int64).data)
        if self.class_names is not None:
            h.update(json.dumps(list(self.class_names)).encode())
        return h.hexdigest()[:16]


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


# ---------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path}: damaged IDX file ({len(data) - offset} bytes of data, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _read_fashion_dir(d: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        xtr, ytr, xte, yte = (_read_idx(d / f) for f in FASHION_FILES)
    except (OSError, EOFError) as e:
        raise DataError(f"{d}: cannot read Fashion-MNIST files: {e}") from None
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte]).astype(np.int64)


def _download_fashion() -> tuple[np.ndarray, np.ndarray]:
    import keras

    (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte]).astype(np.int64)


def load_fashion_mnist(data_dir: Path | None) -> Pooled:
    places = [data_dir] if data_dir else [DEBIAN_FASHION_MNIST, keras_home() / "datasets" / "fashion-mnist"]
    return _first_found("fashion_mnist", places, FASHION_FILES, _read_fashion_dir, _download_fashion,
                        "apt-get install dataset-fashion-mnist, or pass --data-dir DIR holding "
                        + ", ".join(FASHION_FILES), explicit=data_dir is not None)


# ---------------------------------------------------------------- CIFAR-10

def _read_cifar_dir(d: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in CIFAR_FILES:
        try:
            raw = (d / name).read_bytes()
        except OSError as e:
            raise DataError(f"{d / name}: cannot read CIFAR-10 batch: {e.strerror}") from None
        if hashlib.md5(raw).hexdigest() != CIFAR_MD5[name]:
            raise DataError(f"{d / name}: not the official CIFAR-10 batch (MD5 {hashlib.md5(raw).hexdigest()}, "
                            f"expected {CIFAR_MD5[name]}); extract cifar-10-python.tar.gz again")
        try:
            batch = pickle.loads(raw, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DataError(f"{d / name}: cannot read CIFAR-10 batch: {e}") from None
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _download_cifar() -> tuple[np.ndarray, np.ndarray]:
    import keras

    (xtr, ytr), (xte, yte) = keras.datasets.cifar10.load_data()
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte]).reshape(-1).astype(np.int64)


def load_cifar10(data_dir: Path | None) -> Pooled:
    cache = keras_home() / "datasets"
    if data_dir:
        places = [data_dir, data_dir / "cifar-10-batches-py"]
    else:
        places = [cache / "cifar-10-batches-py-target" / "cifar-10-batches-py", cache / "cifar-10-batches-py"]
    return _first_found("cifar10", places, CIFAR_FILES, _read_cifar_dir, _download_cifar,
                        "pass --data-dir DIR holding the extracted cifar-10-batches-py folder "
                        "(from cifar-10-python.tar.gz)", explicit=data_dir is not None)


def _first_found(name: str, places: list[Path], files: tuple[str, ...],
                 read: Callable[[Path], tuple[np.ndarray, np.ndarray]],
                 download: Callable[[], tuple[np.ndarray, np.ndarray]], how: str,
                 explicit: bool = False) -> Pooled:
    """The first of ``places`` holding ``files``; else a download.  ``explicit``: only ``places``."""
    for d in places:
        if all((d / f).is_file() for f in files):
            x, y = read(d)
            return Pooled(x, y, str(d))
    if explicit:
        # The user named the place: reading other data instead would change what the study measures.
        raise DataError(f"{name} files not found in {', '.join(str(p) for p in places)}: {how}")
    if os.environ.get("SEARCH_OFFLINE") != "1":
        try:
            x, y = download()
            return Pooled(x, y, "keras download")
        except Exception as e:  # any network or extraction failure means "not available"
            reason = f"Keras download failed ({type(e).__name__})"
    else:
        reason = "downloads disabled by SEARCH_OFFLINE=1"
    looked = ", ".join(str(p) for p in places)
    raise DataError(f"{name} not found (looked in {looked}; {reason}): {how}")


def load_folder(path: Path | None) -> Pooled:
    x, y, names = user_data.read_folder(_given(path, "folder"))
    return Pooled(x, y, str(path), names)


def load_npz(path: Path | None) -> Pooled:
    x, y, names = user_data.read_npz(_given(path, "npz"))
    return Pooled(x, y, str(path), names)


def _given(path: Path | None, name: str) -> Path:
    if path is None:
        raise BadData(f"dataset.path: dataset {name!r} needs the path of your data")
    return path


# The reader of each dataset of search.config.choices.DATASETS: of a built-in dataset, from ``--data-dir`` or its
# usual places; of a user's own, from its ``[dataset] path`` (``location``).
LOADERS: dict[str, Callable[[Path | None], Pooled]] = {
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "folder": load_folder,
    "npz": load_npz,
}


def location(name: str, path: str | None, data_dir: Path | None) -> Path | None:
    """Where dataset ``name`` is read from: a user's own data from its ``path`` (made absolute), a built-in one
    from ``data_dir`` (None: its usual places)."""
    if not DATASETS[name].needs_path:
        return data_dir
    if data_dir is not None:
        raise UsageError(f"--data-dir: dataset {name!r} is read from its [dataset] path, not from --data-dir")
    return Path(path).expanduser().resolve() if path else None


def class_names(name: str, pooled: Pooled) -> tuple[str, ...]:
    """The class names of a dataset: a user's own data's, else the registry's."""
    return pooled.class_names or DATASETS[name].class_names


def check_class_sizes(pooled: Pooled, names: tuple[str, ...], need: int) -> None:
    """Every class must have ``need`` images (what the study's splits need to give each part one)."""
    counts = np.bincount(pooled.labels, minlength=len(names))
    small = int(np.argmin(counts))
    if counts[small] < need:
        raise BadData(f"{pooled.source}: class {names[small]!r} has {counts[small]} image(s); the study's splits "
                      f"need at least {need} per class (split_ratio and validation_fraction give each part one)")


def load_pooled(name: str, data_dir: Path | None = None, subset: int = 0, seed: int = 0) -> Pooled:
    """The pooled dataset, or a stratified seeded slice of ``subset`` images of it."""
    if name not in LOADERS:
        raise DataError(unknown("dataset", name, LOADERS))
    if data_dir is not None and not data_dir.is_dir() and not DATASETS[name].needs_path:
        raise DataError(f"data directory {data_dir} is not a directory")
    pooled = LOADERS[name](data_dir)
    if subset:
        if subset >= len(pooled.labels):
            raise DataError(f"dataset.subset: {subset} is not below the {len(pooled.labels)} images of {name}")
        if pooled.class_names is not None:  # a stratified slice needs 2 images of every class
            check_class_sizes(pooled, pooled.class_names, 2)
        idx, _ = split_indices(pooled.labels, subset / len(pooled.labels), seed)
        idx = np.sort(idx)
        pooled = Pooled(pooled.images[idx], pooled.labels[idx], pooled.source, pooled.class_names)
    return pooled


# ---------------------------------------------------------------- splits and balance

def split_indices(labels: np.ndarray, train_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/test split of ``range(len(labels))``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, train_size=train_ratio, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def imbalance(train_idx: np.ndarray, labels: np.ndarray, classes: tuple[int, ...],
              fraction: float, seed: int) -> np.ndarray:
    """Drop ``round(fraction * n_c)`` training samples of each class c in ``classes`` (the paper's imbalance)."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(train_idx), dtype=bool)
    train_labels = labels[train_idx]
    for c in classes:
        pos = np.flatnonzero(train_labels == c)
        n_drop = int(round(fraction * len(pos)))
        keep[rng.choice(pos, size=n_drop, replace=False)] = False
    return train_idx[keep]


def class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels, minlength=n_classes).tolist()


# ---------------------------------------------------------------- imbalance profiles and the evaluation protocol

def _paper_targets(counts: list[int], rho: float, paper_classes: tuple[int, ...], fraction: float) -> list[int]:
    return [c - int(round(fraction * c)) if i in paper_classes else c for i, c in enumerate(counts)]


def _long_tail_targets(counts: list[int], rho: float, paper_classes: tuple[int, ...], fraction: float) -> list[int]:
    n = len(counts)
    return [int(math.floor(c * rho ** (-i / (n - 1)) + 1e-9)) if n > 1 else c for i, c in enumerate(counts)]


def _step_targets(counts: list[int], rho: float, paper_classes: tuple[int, ...], fraction: float) -> list[int]:
    n = len(counts)
    return [int(math.floor(c / rho + 1e-9)) if i >= n // 2 else c for i, c in enumerate(counts)]


def _upper_half(n_classes: int, paper_classes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(n_classes // 2, n_classes))


@dataclass(frozen=True)
class Profile:
    targets: Callable[[list[int], float, tuple[int, ...], float], list[int]]
    reduced: Callable[[int, tuple[int, ...]], tuple[int, ...]]


# How an imbalanced training part is made.  ``reduced``: the classes the profile makes minorities (what
# ``reduced_recall`` averages over; the same classes are used for a balanced trial, so arms compare alike).
PROFILE_RULES: dict[str, Profile] = {
    "paper": Profile(_paper_targets, lambda n, paper: tuple(paper)),
    "long_tail": Profile(_long_tail_targets, _upper_half),
    "step": Profile(_step_targets, _upper_half),
}


def reduced_classes(profile: str, n_classes: int, paper_classes: tuple[int, ...]) -> tuple[int, ...]:
    """The classes a profile makes minorities (what the ``reduced_recall`` metric averages over)."""
    if profile not in PROFILE_RULES:
        raise ValueError(unknown("imbalance profile", profile, PROFILE_RULES))
    return PROFILE_RULES[profile].reduced(n_classes, tuple(paper_classes))


def profile_targets(counts: list[int], profile: str, *, rho: float = 10.0,
                    paper_classes: tuple[int, ...] = (0, 1, 2), fraction: float = 0.1) -> list[int]:
    """How many training samples of each class a profile keeps, given the class counts ``counts``.

    Every class keeps at least one sample (when it had one).
    """
    if profile not in PROFILE_RULES:
        raise ValueError(unknown("imbalance profile", profile, PROFILE_RULES))
    out = PROFILE_RULES[profile].targets(list(counts), rho, tuple(paper_classes), fraction)
    return [max(t, min(c, 1)) for t, c in zip(out, counts)]


def apply_profile(train_idx: np.ndarray, labels: np.ndarray, n_classes: int, profile: str, seed: int, *,
                  rho: float = 10.0, paper_classes: tuple[int, ...] = (0, 1, 2),
                  fraction: float = 0.1) -> np.ndarray:
    """Keep a seeded random ``profile_targets`` subset of each class of ``train_idx`` (sorted indices)."""
    if profile == "paper":  # the original code path: same samples dropped as before profiles existed
        return imbalance(train_idx, labels, tuple(paper_classes), fraction, seed)
    counts = class_counts(labels[train_idx], n_classes)
    targets = profile_targets(counts, profile, rho=rho, paper_classes=paper_classes, fraction=fraction)
    rng = np.random.default_rng(seed)
    train_labels = labels[train_idx]
    keep = np.zeros(len(train_idx), dtype=bool)
    for c, t in enumerate(targets):
        pos = np.flatnonzero(train_labels == c)
        keep[rng.choice(pos, size=t, replace=False)] = True
    return train_idx[keep]


def protocol_split(labels: np.ndarray, train_ratio: float, seed: int, evaluation: str,
                   validation_fraction: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(fit, validation, test) indices.

    The train/test split is the same as ``split_indices`` in both protocols, so the
    held-out test set of a ``validation`` study equals that of a ``test`` study with
    the same ratio and seed.  With ``validation``, a stratified, seeded
    ``validation_fraction`` of the training part becomes the validation set (before
    any imbalance, so validation and test keep the original class distribution);
    with ``test`` there is no validation set (None).
    """
    train, test = split_indices(labels, train_ratio, seed)
    if evaluation == "test":
        return train, None, test
    if evaluation not in EVALUATIONS:
        raise ValueError(unknown("evaluation", evaluation, EVALUATIONS))
    from sklearn.model_selection import train_test_split

    # A seed of its own for the inner split, so it is not a function of the outer one's draw.
    fit, val = train_test_split(train, test_size=validation_fraction, stratify=labels[train],
                                random_state=(seed * 7919 + 1) % (2 ** 32))
    return np.sort(fit), np.sort(val), test


def _random_oversampler(y: np.ndarray, seed: int, k_neighbors: int) -> Any:
    from imblearn.over_sampling import RandomOverSampler

    return RandomOverSampler(random_state=seed)


def _smote(y: np.ndarray, seed: int, k_neighbors: int) -> Any:
    from imblearn.over_sampling import SMOTE

    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    if smallest < 2:
        raise TrialFailed("smote needs at least 2 training samples in every class")
    return SMOTE(k_neighbors=min(k_neighbors, smallest - 1), random_state=seed)


# The imbalanced-learn sampler of each handling that changes the training rows (search.config.choices.HANDLINGS).
RESAMPLERS: dict[str, Callable[[np.ndarray, int, int], Any]] = {"oversample": _random_oversampler, "smote": _smote}


def resample(x: np.ndarray, y: np.ndarray, method: str, seed: int, k_neighbors: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Oversample cached features with imbalanced-learn: every class up to the largest class's count.

    ``oversample``: RandomOverSampler (duplicates of existing rows); ``smote``: SMOTE
    (new rows interpolated between a sample and one of its ``k_neighbors`` nearest
    same-class neighbours; k is lowered to the smallest class's count - 1).
    """
    if method not in RESAMPLERS:
        raise ValueError(f"not a resampling method: {method!r}")
    xr, yr = RESAMPLERS[method](y, seed, k_neighbors).fit_resample(x, y)
    return np.asarray(xr, dtype=np.float32), np.asarray(yr, dtype=np.int64)
