"""Training-row augmentation: the paper's random rotation, width/height shift and horizontal flip (Keras 3 layers).

Modes (``[augmentation] mode``, searchable as ``augmentation``; a trial records
the mode it used as ``augmentation`` and the number of cached views as ``views``):

- ``none``: the plain feature cache.
- ``views``: an augmented-view feature cache: V augmented copies of every image
  extracted once through the frozen backbone (search.features.feature_cache.extract_views);
  each epoch draws one view per training row, seeded by the trial's seed and
  the epoch (``draw_views``), so trials stay on cached features.  Batches are
  gathered from the memory-mapped cache as Keras asks for them (``view_batches``):
  a trial holds a few batches of training rows, never all V views (nor even one).
- ``online``: the backbone in the loop with augmentation applied per batch,
  exactly as the paper (search.training.head.full_model); the trial reads the images
  itself.  Slow; it exists to validate ``views``.

Only training rows are ever augmented: validation and test rows are the plain
cached features in every mode (in ``online`` too: the same backbone and
preprocessing made them, which the trial checks on a few rows before training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from search.config.choices import HANDLINGS
from search.data import datasets
from search.errors import DataError, TrialFailed
from search.features import backbones, feature_cache
from search.features.feature_cache import augmenter
from search.runtime import extraction_backend
from search.training import head

if TYPE_CHECKING:
    from search.config import StudyConfig
    from search.config.spec import TrialSpec
    from search.features.feature_cache import FeatureStore, Weights
    from search.training.head import HeadParams

# What a view is made of; part of the view cache's key, so a change here never reuses old views.
METHOD = "keras3 RandomRotation, RandomTranslation (fill nearest), RandomFlip horizontal; on backbone input; v1"
# The views of a cache entry are one fixed draw, shared by every trial and study that uses the entry;
# trials differ in which view each row gets per epoch (seeded by the trial's seed), not in the views.
VIEW_SEED = 0
# Rows read from the view cache between releases of its pages.  Reading one 8 KB row maps up to 64 KB of
# the file into the process (the kernel's fault-around), so this bounds the map's share of a trial's memory
# to about 16 MB plus one checksum block (32 MB); a release costs about 0.25 ms.
RELEASE_ROWS = 256
IMAGE_CHUNK = 8192  # images converted to backbone input at a time (online)
# Rows on which an online trial checks that its backbone reproduces the cached features.
BACKBONE_CHECK_ROWS = 16


# ---------------------------------------------------------------- views: identity and draws

def view_settings(aug: Any, seed: int = VIEW_SEED) -> dict[str, Any]:
    """What makes a view cache (its key's ``augmentation`` part): the config's settings, V, the seed, the method.

    ``aug`` is the config's ``[augmentation]`` section or its dict.
    """
    d = aug if isinstance(aug, dict) else aug.model_dump()
    return {"rotation": float(d["rotation"]), "shift": float(d["shift"]),
            "horizontal_flip": bool(d["horizontal_flip"]), "views": int(d["views"]), "seed": int(seed),
            "method": METHOD}


def draw_views(n_rows: int, n_views: int, seed: int, epoch: int) -> np.ndarray:
    """Which view each of ``n_rows`` training rows uses in ``epoch`` (0-based): seeded by the trial's seed."""
    return np.random.default_rng([seed, epoch, 0]).integers(0, n_views, size=n_rows)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


# ---------------------------------------------------------------- the coordinator's side

def modes_used(config: "StudyConfig") -> set[str]:
    """The augmentation modes the trials of ``config`` can use: searched, set per arm, or fixed."""
    searched = config.search_space.get("augmentation")
    if searched is not None:
        return {str(c) for c in searched.values()}
    fixed = config.augmentation.mode
    arm = config.search_space.get("arm")
    if arm is None:
        return {fixed}
    return {str(config.arms[a].get("augmentation", fixed)) for a in arm.values()}


def view_key(config: "StudyConfig", weights: "Weights", fingerprint: str, runtime: dict[str, str]) -> str:
    """The view cache's entry: the plain cache's key plus the view settings."""
    return feature_cache.study_key(config, weights, fingerprint, runtime,
                                   augmentation=view_settings(config.augmentation))


def views_job_spec(config: "StudyConfig", weights: "Weights", data_dir: Path | None) -> dict[str, Any]:
    """The spec of ``search.features.feature_cache:extract_views_job`` (add ``out_dir``)."""
    return {**feature_cache.job_spec(config, weights, data_dir), "views": view_settings(config.augmentation)}


def extra_spec(config: "StudyConfig", *, views_key: str | None, weights: "Weights", fingerprint: str,
               data_dir: Path | None) -> dict[str, Any]:
    """What a trial needs beyond search.study.objective.trial_spec for the modes ``config`` can use.

    ``views_key``: the view cache entry; ``online``: where the images are (dataset, slice, data
    directory) and what they must be (the study's data fingerprint), and the backbone to put
    in the loop (the weights and the extraction backend, see ``trial_backend``).
    """
    modes = modes_used(config)
    out: dict[str, Any] = {}
    if "views" in modes:
        if views_key is None:
            raise ValueError("a config that can use views needs the view cache's key")
        out["views_key"] = views_key
    if "online" in modes:
        out["online"] = {"dataset": config.dataset.name, "subset": config.dataset.subset,
                         "data_dir": str(Path(data_dir).resolve()) if data_dir else None, "fingerprint": fingerprint,
                         "preprocessing": config.preprocessing.name, "resize": config.preprocessing.resize,
                         "weights": vars(weights), "backend": extraction_backend()}
    return out


def trial_backend(spec: "TrialSpec", default: str) -> str:
    """The Keras backend of a trial's process: an ``online`` trial runs on the extraction backend.

    Its backbone must be the one that made the cached evaluation features, and a random
    initialisation differs between backends (same seed, other generator); ResNet50 also runs
    2.5x faster on TensorFlow than on JAX on these CPUs.  Every other trial trains on ``default``.
    """
    if spec.params.augmentation == "online" and spec.online:
        return str(spec.online["backend"])
    return default


# ---------------------------------------------------------------- the trial's side

@dataclass
class Augmented:
    """A trial's augmented training input; it builds no head and trains nothing (search.trial.child.train does).

    ``inputs(hp, seed)`` gives what ``head.fit`` trains on: (batches, labels) or (images, labels);
    ``wrap(head, seed)`` the model it fits (``online``: the backbone in the loop behind the augmentation);
    ``close(x)`` lets go of the inputs.
    """

    mode: str
    views: int                      # cached views drawn from (0: none or online)
    fit_counts: list[int]           # class counts of the rows one epoch trains on (after any resampling)
    n_features: int                 # the head's input width: the cached features'
    inputs: Callable[["HeadParams", int], tuple[Any, np.ndarray]]
    wrap: Callable[[Any, int], Any] = lambda model, seed: model
    close: Callable[[Any], None] = lambda x: None


def training(spec: "TrialSpec", rows: np.ndarray, store: "FeatureStore", report: Callable[..., None]) -> Augmented:
    """The augmented training input of a trial whose training rows (of the plain cache ``store``) are ``rows``.

    Called while ``store`` is open; the returned object holds no reference to it.
    """
    mode = spec.params.augmentation
    if mode not in TRAINING_INPUTS:
        raise ValueError(f"not an augmentation with its own training input: {mode!r}")
    return TRAINING_INPUTS[mode](spec, rows, store, report)


def _views(spec: "TrialSpec", rows: np.ndarray, plain: "FeatureStore", report: Callable[..., None]) -> Augmented:
    handling = spec.params.handling
    if not spec.views_key:
        raise TrialFailed("augmentation 'views' needs the view cache, which this study did not build")
    labels = plain.labels
    store = feature_cache.FeatureStore(spec.cache_dir, spec.views_key)
    if store.n != len(labels) or not np.array_equal(store.labels, labels):
        raise TrialFailed(f"view cache {store.entry} does not hold the rows of the feature cache {spec.key}")
    n_views = store.n_views
    y = labels[rows]
    counts = datasets.class_counts(y, spec.n_classes)
    if HANDLINGS[handling].changes == "data":
        # Resampling runs per epoch on that epoch's views (view_batches); its class counts do not vary.
        present = [c for c in counts if c]
        counts = [max(present) if c else 0 for c in counts]

    def inputs(hp: "HeadParams", seed: int) -> tuple[Any, np.ndarray]:
        return view_batches(store, rows, y, spec.n_classes, hp, seed, handling), y

    return Augmented("views", n_views, counts, store.n_features, inputs, close=lambda batches: batches.close())


class ViewDraws:
    """The training batches of one trial, drawn from the view cache draw by draw (see ``view_batches``)."""

    def __init__(self, store: "FeatureStore", rows: np.ndarray, y: np.ndarray, n_classes: int, hp: "HeadParams",
                 seed: int, handling: str):
        self.store, self.rows, self.y, self.n_classes, self.hp = store, rows, y, n_classes, hp
        self.seed, self.handling = seed, handling
        self.weights = head.class_weights(y, n_classes) if hp.handling == "class_weight" else None
        counts = np.bincount(y, minlength=n_classes)
        # Both resamplers raise every class to the largest one's count: an epoch's length does not vary.
        self.n_epoch = (int(counts.max()) * int((counts > 0).sum()) if handling in ("oversample", "smote")
                        else len(y))
        self.draw = 0
        self._new_draw()

    def _new_draw(self) -> None:
        d, rows, y = self.draw, self.rows, self.y
        self._rows, self._y = rows, y
        if self.handling == "oversample":
            # RandomOverSampler only copies rows, so resampling the row numbers resamples the rows.
            r, self._y = datasets.resample(rows[:, None].astype(np.float32), y, self.handling,
                                           _epoch_seed(self.seed, d, 1))
            self._rows = r[:, 0].astype(np.int64)
        self._views = draw_views(len(self._rows), self.store.n_views, self.seed, d)
        self._order = np.random.default_rng(_epoch_seed(self.seed, d, 2)).permutation(self.n_epoch)
        self._x: np.ndarray | None = None      # smote only: this draw's resampled features
        self._since_release = 0

    def _smote_rows(self) -> None:
        x = np.empty((len(self.rows), self.store.n_features), dtype=np.float32)
        for start in range(0, len(self.rows), RELEASE_ROWS):
            part = slice(start, start + RELEASE_ROWS)
            x[part] = self.store.take(self.rows[part], self._views[part])
            self.store.release()
        self._x, self._y = datasets.resample(x, self.y, self.handling, _epoch_seed(self.seed, self.draw, 1))

    @property
    def num_batches(self) -> int:
        return math.ceil(self.n_epoch / self.hp.batch_size)

    def batch(self, i: int) -> tuple[np.ndarray, ...]:
        idx = self._order[i * self.hp.batch_size:(i + 1) * self.hp.batch_size]
        if self.handling == "smote":
            if self._x is None:
                self._smote_rows()
            xb = self._x[idx]
        else:
            xb = self.store.take(self._rows[idx], self._views[idx])
            self._since_release += len(idx)
            if self._since_release >= RELEASE_ROWS:
                self.store.release()
                self._since_release = 0
        yb = self._y[idx]
        target = head.targets(yb, self.n_classes, self.hp)
        if self.weights is None:
            return xb, target
        return xb, target, np.array([self.weights.get(int(c), 1.0) for c in yb], dtype=np.float32)

    def next_draw(self) -> None:
        self.draw += 1
        self._new_draw()

    def close(self) -> None:
        self._x = None
        self.store.close()


def view_batches(store: "FeatureStore", rows: np.ndarray, y: np.ndarray, n_classes: int, hp: "HeadParams",
                 seed: int, handling: str = "none"):
    """A ``keras.utils.PyDataset`` of training batches drawn from the view cache ``store``.

    Each epoch ("draw" d: the first is 0, then one per ``on_epoch_end``) trains on every
    training row once, in a seeded random order, row i on view ``draw_views(...)[i]``.  A batch
    is gathered from the memory map when Keras asks for it (``FeatureStore.take``, verified per
    block), and the map's pages are released every ``RELEASE_ROWS`` rows: the trial never holds
    more than a few batches of features, whatever V (a plain trial holds all its training rows).
    Keras may ask for a batch or two before the first epoch (to learn shapes); the draw counter
    follows its ``on_epoch_end`` calls, so which draw an epoch gets is deterministic, not its number.

    Handlings: "oversample" duplicates row numbers per draw (each copy draws its own view);
    "smote" interpolates features, so each draw's rows are gathered into one array and
    resampled at the draw's first batch (the memory of a plain trial); "class_weight" becomes
    sample weights; focal loss and label smoothing get one-hot targets (what search.training.head.fit
    does for arrays).
    """
    import keras

    class ViewBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.draws = ViewDraws(store, rows, y, n_classes, hp, seed, handling)

        @property
        def num_batches(self) -> int:
            return self.draws.num_batches

        def __len__(self) -> int:  # search.training.head.fit counts an epoch's steps with len()
            return self.draws.num_batches

        def __getitem__(self, i: int):
            return self.draws.batch(i)

        def on_epoch_end(self) -> None:
            self.draws.next_draw()

        def close(self) -> None:
            self.draws.close()

    return ViewBatches()


def _online(spec: "TrialSpec", rows: np.ndarray, store: "FeatureStore", report: Callable[..., None]) -> Augmented:
    handling = spec.params.handling
    if not spec.online:
        raise TrialFailed("augmentation 'online' needs the images, which this study's spec does not name")
    if HANDLINGS[handling].changes == "data":
        raise TrialFailed(f"handling {handling!r} resamples cached features; augmentation 'online' trains on "
                          f"images (use 'views', or a loss handling)")
    o = spec.online
    report(stage="loading images")
    pooled = datasets.load_pooled(o["dataset"], Path(o["data_dir"]) if o["data_dir"] else None, o["subset"])
    if pooled.fingerprint() != o["fingerprint"]:
        raise DataError(f"the images read from {pooled.source} are not the study's data (fingerprint "
                        f"{pooled.fingerprint()}, the study's {o['fingerprint']}); the online trial stops here")
    if not np.array_equal(pooled.labels, store.labels):
        raise DataError(f"the images read from {pooled.source} are not in the feature cache's order")
    check = rows[:BACKBONE_CHECK_ROWS]
    cached = store.take(check)
    y = pooled.labels[rows]
    weights = backbones.Weights(**o["weights"])
    images = _backbone_input(pooled.images, rows, o["preprocessing"], o["resize"], weights)
    check_x = _backbone_input(pooled.images, check, o["preprocessing"], o["resize"], weights)
    del pooled
    aug = spec.augmentation

    def wrap(model: Any, seed: int) -> Any:
        backbone = backbones.build_backbone(weights)
        _check_backbone(backbone, check_x, cached)
        return head.full_model(backbone, model, augmenter(aug["rotation"], aug["shift"], aug["horizontal_flip"],
                                                          seed, weights.input_size))

    return Augmented("online", 0, datasets.class_counts(y, spec.n_classes), cached.shape[1],
                     lambda hp, seed: (images, y), wrap)


def _backbone_input(images: np.ndarray, rows: np.ndarray, preprocessing: str, resize: str,
                    weights: "backbones.Weights") -> np.ndarray:
    """float32 backbone input of ``images[rows]``, converted in chunks (the full-size copies would triple it)."""
    size = weights.input_size
    out = np.empty((len(rows), size, size, 3), dtype=np.float32)
    for start in range(0, len(rows), IMAGE_CHUNK):
        part = slice(start, start + IMAGE_CHUNK)
        out[part] = backbones.to_backbone_input(images[rows[part]], preprocessing, resize, weights.backbone, size)
    return out


def _check_backbone(backbone: Any, x: np.ndarray, cached: np.ndarray) -> None:
    """The online backbone must be the one whose features the trial evaluates on; else the trial fails."""
    got = np.asarray(backbone.predict(x, batch_size=len(x), verbose=0), dtype=np.float32)
    diff = float(np.max(np.abs(got - cached))) if len(x) else 0.0
    scale = max(1e-6, float(np.max(np.abs(cached)))) if len(x) else 1.0
    if diff > 1e-3 * scale:
        raise TrialFailed(f"the online backbone does not reproduce the cached features (max difference {diff:.3g} "
                          f"on features up to {scale:.3g}): other weights or another backend than the extraction's")


# The training input of each augmentation mode of search.config.choices.AUGMENTATIONS but "none" (the plain
# cached rows, which the trial reads itself).
TRAINING_INPUTS: dict[str, Callable[..., Augmented]] = {"views": _views, "online": _online}
