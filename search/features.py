"""Frozen-backbone features, computed once per (dataset, slice, preprocessing, weights) and cached on disk.

A trial never runs the backbone: it reads the cached (N, 2048) matrix.  The
cache is one directory per key holding ``features.npy``, ``labels.npy`` and
``meta.json`` (shapes and SHA-256 of both arrays).  A build writes a temporary
directory and renames it into place, so a reader sees a whole entry or none;
an exclusive file lock per key makes a second process wait for the first
build instead of repeating it.  A damaged entry is rebuilt with a warning.

Preprocessing (``unit``, the paper's): pixels scaled to [0, 1], grayscale
repeated to three channels, 28x28 resized to 32x32.  ImageNet weights were
trained on ``caffe`` inputs (BGR, mean-subtracted 0-255): choose
``preprocessing.name = "caffe"`` for inputs that match the weights.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from search.errors import CacheError, WeightsError

IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
INPUT_SHAPE = (32, 32, 3)
RANDOM_WEIGHTS_SEED = 0
EXTRACT_BATCH = 256


def default_cache_dir() -> Path:
    if "SEARCH_CACHE_DIR" in os.environ:
        return Path(os.environ["SEARCH_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "optuna-tl-search" / "features"


# ---------------------------------------------------------------- weights

@dataclass(frozen=True)
class Weights:
    """Resolved backbone weights: what to load and the identity recorded with the study."""

    kind: str  # "imagenet" | "random" | "file"
    path: str | None
    identity: str


def resolve_weights(weights: str) -> Weights:
    if weights == "random":
        return Weights("random", None, f"random(seed={RANDOM_WEIGHTS_SEED})")
    if weights == "imagenet":
        return Weights("imagenet", None, f"imagenet:{IMAGENET_FILE}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"--weights: {weights} is neither 'imagenet', 'random' nor an existing file")
    return Weights("file", str(path.resolve()), f"file:sha256={_sha256(path)[:16]}")


def build_backbone(weights: Weights):
    """ResNet50 without its top, average-pooled, frozen, for 32x32x3 inputs."""
    import keras

    if weights.kind == "random":
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    arg = {"imagenet": "imagenet", "random": None, "file": weights.path}[weights.kind]
    try:
        model = keras.applications.ResNet50(include_top=False, weights=arg,
                                            input_shape=INPUT_SHAPE, pooling="avg")
    except Exception as e:
        if weights.kind == "imagenet":
            where = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / IMAGENET_FILE
            raise WeightsError(
                f"ImageNet weights for ResNet50 are not at {where} and could not be downloaded "
                f"({str(e).split(' -- ')[-1][:120] or type(e).__name__}); put the file there, or use --weights random or --weights PATH"
            ) from None
        raise WeightsError(f"--weights: cannot load {weights.path}: {e}") from None
    model.trainable = False
    return model


# ---------------------------------------------------------------- preprocessing

def to_backbone_input(images: np.ndarray, preprocessing: str, resize: str = "bilinear") -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, 3) -> float32 (N, 32, 32, 3) in the chosen preprocessing."""
    import keras

    x = images.astype("float32")
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[1:3] != INPUT_SHAPE[:2]:
        x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, INPUT_SHAPE[:2], interpolation=resize))
    if preprocessing == "unit":
        return x / 255.0
    if preprocessing == "caffe":
        return keras.applications.resnet50.preprocess_input(x)
    raise ValueError(f"unknown preprocessing {preprocessing!r}")


# ---------------------------------------------------------------- cache

def cache_key(dataset: str, subset: int, preprocessing: str, resize: str, weights: Weights,
              data_fingerprint: str) -> str:
    parts = dict(dataset=dataset, subset=subset, preprocessing=preprocessing, resize=resize,
                 backbone="resnet50", weights=weights.identity, data=data_fingerprint)
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{dataset}-{subset or 'all'}-{preprocessing}-{digest}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _verify(entry: Path) -> dict | None:
    """The entry's metadata if every file is whole, else None."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        for name in ("features", "labels"):
            if _sha256(entry / f"{name}.npy") != meta["sha256"][name]:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_cached(cache_dir: Path | str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (memory-mapped, read-only) and labels of a verified entry."""
    entry = Path(cache_dir) / key
    return (np.load(entry / "features.npy", mmap_mode="r"), np.load(entry / "labels.npy"))


@contextlib.contextmanager
def _locked(cache_dir: Path, key: str) -> Iterator[None]:
    with open(cache_dir / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_cached(cache_dir: Path, key: str, build: Callable[[Path], None]) -> dict:
    """Return the metadata of entry ``key``, calling ``build(tmp_dir)`` first if it is missing or damaged.

    ``build`` must write ``features.npy`` and ``labels.npy`` into ``tmp_dir``.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"--cache-dir: cannot create {cache_dir}: {e.strerror}") from None
    entry = cache_dir / key
    with _locked(cache_dir, key):
        if entry.exists():
            meta = _verify(entry)
            if meta is not None:
                return meta
            warnings.warn(f"feature cache {entry} is damaged; rebuilding it", stacklevel=2)
            shutil.rmtree(entry)
        tmp = cache_dir / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            build(tmp)
            meta = {"key": key, "sha256": {n: _sha256(tmp / f"{n}.npy") for n in ("features", "labels")}}
            meta["shape"] = list(np.load(tmp / "features.npy", mmap_mode="r").shape)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, entry)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            what = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise CacheError(f"cannot write feature cache in {cache_dir}: {what}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta


def extract(images: np.ndarray, labels: np.ndarray, preprocessing: str, resize: str, weights: Weights,
            out_dir: Path, on_progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Run the frozen backbone over ``images`` once and write features and labels to ``out_dir``."""
    backbone = build_backbone(weights)
    n = len(images)
    dim = backbone.output_shape[-1]
    path = out_dir / "features.npy"
    feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    # Reserve the blocks now: a full disk must fail here with ENOSPC, not later with SIGBUS.
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    chunk = EXTRACT_BATCH * 8
    for start in range(0, n, chunk):
        x = to_backbone_input(images[start:start + chunk], preprocessing, resize)
        feats[start:start + len(x)] = backbone.predict(x, batch_size=EXTRACT_BATCH, verbose=0)
        on_progress(min(start + chunk, n), n)
    feats.flush()
    del feats
    np.save(out_dir / "labels.npy", labels.astype(np.int64))


def extract_job(spec: dict, report: Callable[..., None]) -> dict:
    """Child-process entry (see isolate.py): read the dataset, extract, write to ``spec['out_dir']``."""
    from search import data

    pooled = data.load_pooled(spec["dataset"], Path(spec["data_dir"]) if spec["data_dir"] else None,
                              spec["subset"], spec["subset_seed"])
    weights = Weights(**spec["weights"])
    report(stage="extracting features", done=0, total=len(pooled.labels))
    extract(pooled.images, pooled.labels, spec["preprocessing"], spec["resize"], weights, Path(spec["out_dir"]),
            on_progress=lambda done, total: report(stage="extracting features", done=done, total=total))
    return {"n": len(pooled.labels)}
