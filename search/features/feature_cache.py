"""Frozen-backbone features, computed once per key and cached on disk; verified by every process that reads them.

A trial never runs the backbone: it reads rows of the cached (N, 2048) matrix
(or of a (V, N, 2048) matrix of augmented views, search.training.augment).  An entry is
one directory holding ``features.npy``, ``labels.npy`` and ``meta.json``; the
metadata carries a CRC-32 per block of rows, so a reader verifies exactly the
rows it reads, once per process (``FeatureStore``), and a damaged entry is
refused (``CacheError``), never used.  Pages a reader has checked or gathered
are released from its memory (``release``), so walking a view cache several
times the size of a trial's rows does not count against the trial.  A build writes a temporary directory and
renames it into place, so a reader sees a whole entry or none; an exclusive
file lock per key makes a second builder wait for the first instead of
repeating it.  Reading a complete entry takes no lock and no write access, so a
prebuilt cache can be shared read-only.

The key holds everything that changes the features: dataset, slice,
preprocessing, the weights' content, the data's fingerprint, and the runtime
that extracts them (Keras backend and the versions of Keras and that backend).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from search.data import datasets
from search.errors import CacheError
from search.features.backbones import (DEFAULT_SIZE, Weights, augmenter, build_backbone, spread, to_backbone_input,
                                       view_seed)
from search.runtime import runtime_identity

EXTRACT_BATCH = 256
BLOCK_ROWS = 4096          # rows per checksummed block (32 MB of float32 features)
PREFETCH_BYTES = 4 << 20   # read-ahead request size of ``prefetch``
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def default_cache_dir() -> Path:
    if "SEARCH_CACHE_DIR" in os.environ:
        return Path(os.environ["SEARCH_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "optuna-tl-search" / "features"


# ---------------------------------------------------------------- cache keys

def cache_key(dataset: str, subset: int, preprocessing: str, resize: str, weights: Weights,
              data_fingerprint: str, runtime: dict[str, str] | None = None,
              augmentation: dict[str, Any] | None = None) -> str:
    """The entry name; ``runtime``: the extraction's backend and versions; ``augmentation``: for a view cache."""
    rt = runtime or runtime_identity("jax")
    ext = rt["extraction_backend"]
    parts = dict(dataset=dataset, subset=subset, preprocessing=preprocessing, resize=resize,
                 backbone=weights.backbone, weights=weights.identity, data=data_fingerprint,
                 extraction_backend=ext, keras=rt["keras"], backend_version=rt.get(ext, "?"))
    if weights.input_size != DEFAULT_SIZE:  # absent at the paper's size, so the keys made before it stay
        parts["input_size"] = weights.input_size
    if augmentation:
        parts["augmentation"] = augmentation
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    kind = "views" if augmentation else "plain"
    model = "" if (weights.backbone, weights.input_size) == ("resnet50", DEFAULT_SIZE) else \
        f"{weights.backbone}{weights.input_size}-"
    return f"{dataset}-{subset or 'all'}-{preprocessing}-{model}{kind}-{digest}"


def study_key(config: Any, weights: Weights, data_fingerprint: str, runtime: dict[str, str],
              augmentation: dict[str, Any] | None = None) -> str:
    """``cache_key`` of a study's config (a search.config.StudyConfig): its dataset, slice and preprocessing."""
    return cache_key(config.dataset.name, config.dataset.subset, config.preprocessing.name,
                     config.preprocessing.resize, weights, data_fingerprint, runtime, augmentation=augmentation)


def job_spec(config: Any, weights: Weights, data_dir: Path | None) -> dict[str, Any]:
    """The spec of ``extract_job`` for a study's config (add ``out_dir``)."""
    return {"dataset": config.dataset.name, "data_dir": str(data_dir) if data_dir else None,
            "subset": config.dataset.subset, "subset_seed": 0, "preprocessing": config.preprocessing.name,
            "resize": config.preprocessing.resize, "weights": vars(weights)}


# ---------------------------------------------------------------- reading, verified

def _block_crcs(rows: np.ndarray, block_rows: int) -> list[int]:
    crcs = []
    for i in range(0, len(rows), block_rows):
        crcs.append(zlib.crc32(np.ascontiguousarray(rows[i:i + block_rows]).data))
        _release(rows, i, i + block_rows)
    return crcs


def _release(rows: np.ndarray, start: int = 0, stop: int | None = None) -> None:
    """Drop this process's resident pages of rows ``start:stop`` of a memory-mapped (rows, D) array.

    The pages stay in the kernel's page cache (a later read is a minor fault, not a disk read),
    but no longer count in the process's RSS: without this, checking or gathering from a
    (V, N, 2048) view cache would leave the whole file resident in the trial's memory.
    Arrays that are not memory maps are left alone.
    """
    mm = getattr(rows, "_mmap", None)
    if mm is None or len(mm) == 0:
        return
    row_bytes = rows.shape[-1] * rows.itemsize
    stop = len(rows) if stop is None else min(stop, len(rows))
    first = rows.offset % mmap.ALLOCATIONGRANULARITY + start * row_bytes  # where the data begins in the map
    aligned = first - first % mmap.PAGESIZE
    length = min(first + (stop - start) * row_bytes, len(mm)) - aligned
    if length > 0:
        try:
            mm.madvise(mmap.MADV_DONTNEED, aligned, length)
        except (OSError, ValueError, AttributeError):  # only a memory optimisation
            pass


class FeatureStore:
    """A cache entry opened for reading: rows are verified block by block (CRC-32), once per process.

    ``take(idx)`` returns a float32 copy of the rows ``idx`` of the (N, D) features (of view
    ``view`` for a (V, N, D) view cache); a block whose checksum does not match raises
    CacheError.  ``close()`` drops the memory map (its pages count in the process's RSS).
    """

    def __init__(self, cache_dir: Path | str, key: str):
        self.entry = Path(cache_dir) / key
        try:
            self.meta = json.loads((self.entry / "meta.json").read_text())
            self._mm = np.load(self.entry / "features.npy", mmap_mode="r")
            labels = np.load(self.entry / "labels.npy")
        except (OSError, ValueError) as e:
            raise CacheError(f"feature cache {self.entry} cannot be read ({e}); run search.run to rebuild it") from None
        if "blocks" not in self.meta or list(self._mm.shape) != self.meta.get("shape"):
            raise CacheError(f"feature cache {self.entry} is damaged or from an older version; "
                             f"run search.run to rebuild it")
        if zlib.crc32(labels.astype(np.int64).data) != self.meta["labels_crc32"]:
            raise CacheError(f"feature cache {self.entry} is damaged (labels checksum); run search.run to rebuild it")
        self.labels = labels
        self._rows = self._mm.reshape(-1, self._mm.shape[-1])
        self._verified: set[int] = set()

    @property
    def n(self) -> int:
        return int(self._mm.shape[-2])

    @property
    def n_features(self) -> int:
        return int(self._mm.shape[-1])

    @property
    def n_views(self) -> int:
        return int(self._mm.shape[0]) if self._mm.ndim == 3 else 1

    def _verify(self, blocks: np.ndarray) -> None:
        size = self.meta["blocks"]["rows"]
        crcs = self.meta["blocks"]["crc32"]
        for b in blocks.tolist():
            if b in self._verified:
                continue
            if zlib.crc32(np.ascontiguousarray(self._rows[b * size:(b + 1) * size]).data) != crcs[b]:
                raise CacheError(f"feature cache {self.entry} is damaged (rows {b * size}-{(b + 1) * size - 1} "
                                 f"fail their checksum); it was not used; run search.run to rebuild it")
            _release(self._rows, b * size, (b + 1) * size)
            self._verified.add(b)

    def take(self, idx: np.ndarray, view: int | np.ndarray = 0) -> np.ndarray:
        """float32 copy of rows ``idx`` (of view ``view``: one int, or one per row)."""
        flat = np.asarray(idx, dtype=np.int64) + np.asarray(view, dtype=np.int64) * self.n
        self._verify(np.unique(flat // self.meta["blocks"]["rows"]))
        return np.asarray(self._rows[flat], dtype=np.float32)

    def verify_all(self) -> None:
        self._verify(np.arange((len(self._rows) + self.meta["blocks"]["rows"] - 1) // self.meta["blocks"]["rows"]))

    def release(self) -> None:
        """Drop the map's pages this process has touched from its memory (see ``_release``); reads go on."""
        _release(self._rows)

    def close(self) -> None:
        self._rows = self._mm = None  # type: ignore[assignment]


def prefetch(cache_dir: Path | str, key: str) -> None:
    """Ask the kernel to read a cache entry's features into its page cache, in the background.

    A trial calls this when its training is over: the next trial's process copies its rows from the
    same file seconds later, and a page the kernel reclaimed meanwhile (idle file pages are paged out:
    a fully cached 547 MB file lost 8 MB in 30 s on these machines; a cold copy of a trial's rows took
    2.3 s against 0.3 s warm) would be a disk read inside that copy.  It maps nothing, so no process's
    memory grows; a failure only loses the head start.
    """
    try:
        fd = os.open(Path(cache_dir) / key / "features.npy", os.O_RDONLY)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        for offset in range(0, size, PREFETCH_BYTES):  # one whole-file request reads only the first few MB
            os.posix_fadvise(fd, offset, PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):  # AttributeError: no posix_fadvise on this platform
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- building

@contextlib.contextmanager
def _locked(cache_dir: Path, key: str) -> Iterator[None]:
    try:
        lock = open(cache_dir / f"{key}.lock", "a+")
    except OSError as e:
        raise CacheError(f"cannot build feature cache in {cache_dir}: {e.strerror} (a shared read-only cache must "
                         f"be complete; build it where it is writable)") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _complete(entry: Path) -> bool:
    """True when ``entry`` opens and every block verifies."""
    if not entry.exists():
        return False
    try:
        FeatureStore(entry.parent, entry.name).verify_all()
        return True
    except CacheError:
        return False


def write_meta(out_dir: Path, key: str) -> dict:
    """Checksums of a freshly written entry (features.npy, labels.npy) into meta.json."""
    feats = np.load(out_dir / "features.npy", mmap_mode="r")
    labels = np.load(out_dir / "labels.npy")
    rows = feats.reshape(-1, feats.shape[-1])
    meta = {"key": key, "shape": list(feats.shape), "labels_crc32": zlib.crc32(labels.astype(np.int64).data),
            "blocks": {"rows": BLOCK_ROWS, "crc32": _block_crcs(rows, BLOCK_ROWS)}}
    (out_dir / "meta.json").write_text(json.dumps(meta))
    return meta


def ensure_cached(cache_dir: Path, key: str, build: Callable[[Path], None]) -> None:
    """Make entry ``key`` complete, calling ``build(tmp_dir)`` first if it is missing or damaged.

    ``build`` must write ``features.npy`` and ``labels.npy`` into ``tmp_dir``.  A complete
    entry is only read (no lock, no write access needed); a damaged one is rebuilt with a warning.
    """
    entry = cache_dir / key
    if _complete(entry):
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create feature cache directory {cache_dir}: {e.strerror}") from None
    with _locked(cache_dir, key):
        if entry.exists():
            if _complete(entry):  # another process built it while we waited
                return
            warnings.warn(f"feature cache {entry} is damaged; rebuilding it", stacklevel=2)
            shutil.rmtree(entry)
        tmp = cache_dir / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            build(tmp)
            write_meta(tmp, key)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, entry)
        except OSError as e:
            raise _write_error(cache_dir, e) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_error(cache_dir: Path, e: OSError) -> CacheError:
    full = e.errno in DISK_FULL
    what = "no space left on device; free space and re-run the same command" if full else (e.strerror or str(e))
    return CacheError(f"cannot write feature cache in {cache_dir}: {what}")


@contextlib.contextmanager
def _full_disk_named(out_dir: Path) -> Iterator[None]:
    """In the extraction process: a full disk is the cache's one line, naming the cache's directory."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise _write_error(out_dir.parent, e) from None


def open_features(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 .npy memory map of ``shape``, its blocks reserved now: a full disk fails here (ENOSPC),
    not later with SIGBUS."""
    feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    return feats


def extract(images: np.ndarray, labels: np.ndarray, preprocessing: str, resize: str, weights: Weights,
            out_dir: Path, on_progress: Callable[[int, int], None] = lambda done, total: None) -> float:
    """Run the frozen backbone over ``images`` once and write features and labels to ``out_dir``; returns the
    features' spread across images (search.features.backbones.spread, on the first chunk)."""
    backbone = build_backbone(weights)
    n = len(images)
    feats = open_features(out_dir / "features.npy", (n, backbone.output_shape[-1]))
    chunk = EXTRACT_BATCH * 8
    for start in range(0, n, chunk):
        x = _input(images[start:start + chunk], preprocessing, resize, weights)
        feats[start:start + len(x)] = backbone.predict(x, batch_size=EXTRACT_BATCH, verbose=0)
        on_progress(min(start + chunk, n), n)
    feats.flush()
    measured = spread(feats[:chunk])
    del feats
    np.save(out_dir / "labels.npy", labels.astype(np.int64))
    return measured


def _input(images: np.ndarray, preprocessing: str, resize: str, weights: Weights) -> np.ndarray:
    return to_backbone_input(images, preprocessing, resize, weights.backbone, weights.input_size)


def extract_views(images: np.ndarray, labels: np.ndarray, preprocessing: str, resize: str, weights: Weights,
                  settings: dict[str, Any], out_dir: Path,
                  on_progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """The augmented-view cache: ``settings["views"]`` augmented copies of every image through the backbone.

    Writes a (V, N, D) ``features.npy``; view v is the whole dataset augmented once by
    ``augmenter`` seeded with ``view_seed(settings["seed"], v)``, so an entry is
    one fixed, reproducible draw (``settings`` is ``search.training.augment.view_settings``, also in the key).
    The augmentation acts on the backbone's input, as ``search.training.head.full_model`` does in the
    ``online`` mode, so a view is exactly what an online batch could have seen.
    """
    import keras

    backbone = build_backbone(weights)
    n, n_views = len(images), int(settings["views"])
    feats = open_features(out_dir / "features.npy", (n_views, n, backbone.output_shape[-1]))
    chunk = EXTRACT_BATCH * 8
    for v in range(n_views):
        aug = augmenter(settings["rotation"], settings["shift"], settings["horizontal_flip"],
                        view_seed(settings["seed"], v), weights.input_size)
        for start in range(0, n, chunk):
            x = _input(images[start:start + chunk], preprocessing, resize, weights)
            x = keras.ops.convert_to_numpy(aug(x, training=True))
            feats[v, start:start + len(x)] = backbone.predict(x, batch_size=EXTRACT_BATCH, verbose=0)
            on_progress(v * n + min(start + chunk, n), n_views * n)
        feats.flush()
        _release(feats.reshape(-1, feats.shape[-1]))  # written pages need not stay in this process's memory
    del feats
    np.save(out_dir / "labels.npy", labels.astype(np.int64))


def extract_job(spec: dict, report: Callable[..., None]) -> dict:
    """Child-process entry (see isolate.py): read the dataset, extract, write to ``spec['out_dir']``."""
    pooled = datasets.load_pooled(spec["dataset"], Path(spec["data_dir"]) if spec["data_dir"] else None,
                                  spec["subset"], spec["subset_seed"])
    weights = Weights(**spec["weights"])
    report(stage="extracting features", done=0, total=len(pooled.labels))
    with _full_disk_named(Path(spec["out_dir"])):
        measured = extract(pooled.images, pooled.labels, spec["preprocessing"], spec["resize"], weights,
                           Path(spec["out_dir"]),
                           on_progress=lambda done, total: report(stage="extracting features", done=done, total=total))
    return {"n": len(pooled.labels), "spread": measured}


def extract_views_job(spec: dict, report: Callable[..., None]) -> dict:
    """Child-process entry for the augmented-view cache: ``extract_job``'s spec plus ``views`` (view_settings)."""
    pooled = datasets.load_pooled(spec["dataset"], Path(spec["data_dir"]) if spec["data_dir"] else None,
                                  spec["subset"], spec["subset_seed"])
    weights = Weights(**spec["weights"])
    total = len(pooled.labels) * int(spec["views"]["views"])
    report(stage="extracting augmented views", done=0, total=total)
    with _full_disk_named(Path(spec["out_dir"])):
        extract_views(pooled.images, pooled.labels, spec["preprocessing"], spec["resize"], weights, spec["views"],
                      Path(spec["out_dir"]), on_progress=lambda done, total: report(
                          stage="extracting augmented views", done=done, total=total))
    return {"n": len(pooled.labels), "views": int(spec["views"]["views"])}
