"""Every named choice a config can make, with what validation, the catalog and the report need to know of it.

The config layer imports nothing else of the service, so the names live here; the
implementations sit beside their behaviour, in dicts keyed by the same names:

=================  =====================================  =============================================
choice             names (here)                           implementations
=================  =====================================  =============================================
dataset            ``DATASETS``                           ``search.data.datasets.LOADERS``
imbalance profile  ``PROFILES``                           ``search.data.datasets.PROFILE_RULES``
handling           ``HANDLINGS`` (loss or data)           ``search.training.head.LOSSES``,
                                                          ``search.data.datasets.RESAMPLERS``
preprocessing      ``PREPROCESSINGS``                     ``search.features.backbones.PREPROCESS``
backbone           ``BACKBONES``                          ``search.features.backbones.APPLICATIONS``
augmentation mode  ``AUGMENTATIONS``                      ``search.training.augment.TRAINING_INPUTS`` (and "none")
sampler            ``SAMPLERS``                           ``search.study.samplers.FACTORIES``
Keras backend      ``BACKENDS`` (the package to import)   ``search.runtime``
=================  =====================================  =============================================

A test per registry checks that the two key sets agree (tests/test_choices.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DatasetChoice:
    class_names: tuple[str, ...] | None   # None: a user's own data, whose classes are read from the data
    doc: str
    needs_path: bool = False              # read from ``[dataset] path``, not from --data-dir

    @property
    def n_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


DATASETS: dict[str, DatasetChoice] = {
    "fashion_mnist": DatasetChoice(
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "70,000 28x28 grayscale images (Debian dataset-fashion-mnist, the Keras cache, or a Keras download)"),
    "cifar10": DatasetChoice(
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "60,000 32x32 colour images (cifar-10-batches-py via --data-dir, the Keras cache, or a Keras download)"),
    "folder": DatasetChoice(
        None, "your images: `path` to a folder with one subfolder per class (PNG, JPEG, BMP, GIF; classes "
              "sorted by name)", needs_path=True),
    "npz": DatasetChoice(
        None, "your arrays: `path` to an .npz with `x` (N x H x W [x C], uint8 or floats in [0, 1]), `y` (N integer "
              "labels) and optionally `class_names`", needs_path=True),
}

# How an imbalanced training part is made.
PROFILES: dict[str, str] = {
    "paper": "reduce_classes lose round(reduce_fraction * n_c) samples (the paper's imbalance)",
    "long_tail": "class i keeps floor(n_i * rho^(-i/(C-1))): exponential decay to 1/rho",
    "step": "classes C//2 .. C-1 keep floor(n_i / rho)",
}


@dataclass(frozen=True)
class HandlingChoice:
    # "loss": search.training.head.LOSSES; "data": the training rows (search.data.datasets.RESAMPLERS)
    changes: Literal["loss", "data"]
    doc: str


HANDLINGS: dict[str, HandlingChoice] = {
    "none": HandlingChoice("loss", "plain cross-entropy"),
    "class_weight": HandlingChoice("loss", "cross-entropy weighted by scikit-learn's 'balanced' class weights"),
    "focal": HandlingChoice("loss", "focal loss with gamma focal_gamma"),
    "oversample": HandlingChoice("data", "imbalanced-learn RandomOverSampler on the cached training features"),
    "smote": HandlingChoice("data", "imbalanced-learn SMOTE on the cached training features"),
}

EVALUATIONS: dict[str, str] = {
    "validation": "objectives on a stratified, seeded validation_fraction of the training part; the held-out "
                  "test split's metrics are stored as test_* and never reach the sampler",
    "test": "objectives on the held-out test split (the paper's protocol)",
}

PREPROCESSINGS: dict[str, str] = {
    "unit": "pixels scaled to [0, 1] (the paper's)",
    "caffe": "BGR, ImageNet-mean-subtracted 0-255 (what Keras' ImageNet ResNet50 was trained on)",
    "native": "the backbone's own keras.applications preprocess_input (ResNet50's is caffe; MobileNetV3, "
              "EfficientNet and ConvNeXt take 0-255 pixels into their own rescaling layers)",
}


@dataclass(frozen=True)
class BackboneChoice:
    doc: str
    min_size: int = 32   # the smallest input_size the model accepts


BACKBONES: dict[str, BackboneChoice] = {
    "resnet50": BackboneChoice("ResNet50, 2048 features (the paper's)"),
    "resnet101": BackboneChoice("ResNet101, 2048 features"),
    "resnet50_v2": BackboneChoice("ResNet50V2, 2048 features"),
    "mobilenet_v3_small": BackboneChoice("MobileNetV3Small, 576 features; with random weights at 32 px its features "
                                         "collapse (use imagenet)"),
    "efficientnet_b0": BackboneChoice("EfficientNetB0, 1280 features; with random weights at 32 px its features "
                                      "collapse (use imagenet)"),
    "densenet121": BackboneChoice("DenseNet121, 1024 features"),
    "convnext_tiny": BackboneChoice("ConvNeXtTiny, 768 features"),
}

AUGMENTATIONS: dict[str, str] = {
    "none": "no augmentation: the plain feature cache",
    "views": "V augmented views of every image extracted once; each epoch draws one view per training row",
    "online": "the frozen backbone in the loop, augmentation per batch (the paper's way; slow)",
}

SAMPLERS: dict[str, str] = {
    "tpe": "Optuna's multi-objective TPE (the default)",
    "random": "independent random draws",
    "grid": "every point of the grid exactly once (failed points retried with the same parameters)",
    "nsga2": "NSGA-II genetic algorithm",
    "qmc": "quasi-Monte Carlo (Sobol)",
}

EARLY_STOPPING: dict[str, str] = {
    "none": "every trial trains its full number of epochs",
    "moasha": "at each rung, a trial whose snapshot is dominated (on the quality objectives) by more than half "
              "of the earlier trials' snapshots at that rung stops; it is recorded PRUNED with its rung",
}

# Keras backend -> the package that provides it.
BACKENDS: dict[str, str] = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


@dataclass(frozen=True)
class Metric:
    kind: Literal["quality", "resource"]  # quality: measured on a split, stored as val_<name>; resource: per trial
    direction: Literal["maximize", "minimize"]
    doc: str


METRICS: dict[str, Metric] = {
    "accuracy": Metric("quality", "maximize", "fraction of correct predictions"),
    "balanced_accuracy": Metric("quality", "maximize", "mean per-class recall"),
    "precision": Metric("quality", "maximize", "macro precision"),
    "recall": Metric("quality", "maximize", "macro recall"),
    "f1": Metric("quality", "maximize", "macro F1"),
    "roc_auc": Metric("quality", "maximize", "macro one-vs-rest ROC AUC of the predicted probabilities"),
    "roc_auc_hard": Metric("quality", "maximize",
                           "macro one-vs-rest ROC AUC of one-hot argmax predictions (the paper's Table 7 'ROC')"),
    "worst_class_recall": Metric("quality", "maximize", "recall of the worst class"),
    "reduced_recall": Metric("quality", "maximize", "mean recall of the classes the imbalance profile reduces"),
    "train_time_s": Metric("resource", "minimize", "wall seconds of the whole fit (per-epoch evaluation excluded)"),
    "epoch_time_s": Metric("resource", "minimize", "wall seconds of a steady epoch (compilation excluded)"),
    "cpu_time_s": Metric("resource", "minimize", "CPU seconds of the trial process"),
    "test_time_s": Metric("resource", "minimize", "wall seconds to predict the held-out test split"),
    "peak_memory_mb": Metric("resource", "minimize", "resident-memory high-water mark of the trial process"),
    "trial_memory_mb": Metric("resource", "minimize",
                              "peak_memory_mb minus the process's baseline before the trial's work"),
}
QUALITY = tuple(name for name, m in METRICS.items() if m.kind == "quality")
# The prefix of a quality metric's stored name per split: val_accuracy, test_accuracy.
SPLIT_PREFIX = {"validation": "val", "test": "test"}


def stored_name(metric: str, split: str) -> str:
    """The attribute (and objective) name of ``metric`` measured on ``split``: ``val_accuracy``, ``train_time_s``."""
    return f"{SPLIT_PREFIX[split]}_{metric}" if METRICS[metric].kind == "quality" else metric
