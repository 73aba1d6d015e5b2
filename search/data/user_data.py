"""A user's own labelled images: a folder of class subfolders, or an .npz of arrays.

Both come back as uint8 images of one size, (N, H, W) grayscale or (N, H, W, 3) colour, integer labels
0..K-1 and the K class names, exactly as the built-in datasets do (search.data.datasets wraps them), so they are
pooled, sliced and split the same way.  Every problem is one line that names the file or folder and what
is wrong (``BadData``, exit 2); nothing is read twice and nothing is written.
"""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path

import numpy as np

from search.errors import BadData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


# ---------------------------------------------------------------- a folder of class subfolders

def read_folder(path: Path) -> Arrays:
    """Keras' ``image_dataset_from_directory`` layout: ``path/CLASS/IMAGE``, classes sorted by name.

    Grayscale, RGB, RGBA and palette images are made RGB; images of other sizes than the most common one are
    resized to it (bilinear).
    """
    if not path.is_dir():
        raise BadData(f"dataset.path: {path} is not a directory (expected one subfolder of images per class)")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {c: sorted(f for f in (path / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    if not classes or not any(files.values()):
        raise BadData(f"dataset.path: {path} holds no class subfolders of images "
                      f"({path}/CLASS/NAME.png; {', '.join(IMAGE_SUFFIXES)})")
    if empty := [c for c in classes if not files[c]]:
        raise BadData(f"dataset.path: class folder {path / empty[0]} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    _at_least_two(classes, path)
    images = [_read_image(f) for c in classes for f in files[c]]
    labels = np.repeat(np.arange(len(classes)), [len(files[c]) for c in classes])
    return _one_size(images), labels.astype(np.int64), tuple(classes)


def _read_image(f: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            im.seek(0)  # a GIF: its first frame
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise BadData(f"{f}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def _one_size(images: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    (h, w), _ = collections.Counter(im.shape[:2] for im in images).most_common(1)[0]
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = im if im.shape[:2] == (h, w) else np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))
    return out


# ---------------------------------------------------------------- arrays in an .npz file

def read_npz(path: Path) -> Arrays:
    """Arrays ``x`` (N x H x W or N x H x W x C; uint8, or floats in [0, 1]) and ``y`` (N integer labels), and
    optionally ``class_names``; labels are renumbered 0..K-1 in their sorted order."""
    if not path.is_file():
        raise BadData(f"dataset.path: {path} is not a file (expected an .npz with arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BadData(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise BadData(f"{path}: holds no array {name!r} (arrays: {', '.join(arrays) or 'none'})")
    x, y = _images(arrays["x"], path), _labels(arrays["y"], path)
    if len(x) != len(y):
        raise BadData(f"{path}: x holds {len(x)} images but y {len(y)} labels")
    values, labels = np.unique(y, return_inverse=True)
    names = _class_names(arrays.get("class_names"), values, path)
    _at_least_two(names, path)
    return x, labels.astype(np.int64), names


def _images(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3]  # grayscale stays 2-D; alpha is dropped
    elif x.ndim != 3:
        raise BadData(f"{path}: x has shape {x.shape}; expected N x H x W or N x H x W x C (C = 1, 3 or 4)")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise BadData(f"{path}: x holds floats outside [0, 1] (min {np.nanmin(x):.3g}, max {np.nanmax(x):.3g}); "
                          f"give uint8 pixels or floats in [0, 1]")
        return np.round(x * 255).astype(np.uint8)
    raise BadData(f"{path}: x has dtype {x.dtype}; expected uint8, or floats in [0, 1]")


def _labels(y: np.ndarray, path: Path) -> np.ndarray:
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise BadData(f"{path}: y has shape {y.shape}; expected N integer labels")
    if y.dtype.kind not in "iu":
        raise BadData(f"{path}: y holds {y.dtype} values; labels must be integers")
    return y.astype(np.int64)


def _class_names(given: np.ndarray | None, values: np.ndarray, path: Path) -> tuple[str, ...]:
    if given is None:
        return tuple(str(v) for v in values)
    names = [str(n) for n in np.asarray(given).reshape(-1)]
    if len(names) == len(values):
        return tuple(names)
    if values.min() >= 0 and values.max() < len(names):
        return tuple(names[v] for v in values)  # names indexed by label, some labels unused
    raise BadData(f"{path}: class_names holds {len(names)} names for the {len(values)} labels of y "
                  f"({', '.join(map(str, values[:10]))})")


def _at_least_two(classes: tuple[str, ...] | list[str], path: Path) -> None:
    if len(classes) < 2:
        raise BadData(f"dataset.path: {path} holds a single class ({classes[0]!r}); a classifier needs at least 2")
