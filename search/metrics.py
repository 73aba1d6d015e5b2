"""Classification metrics of one trial, all from scikit-learn.

``evaluate`` returns every measure the paper reports (and a few for minority
classes); any of the scalar ones can be an objective, the rest are stored on
the trial as user attributes.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

# Scalar metrics a config may name as objectives, besides the resource ones the
# objective measures itself (train_time_s, test_time_s, peak_memory_mb).
# f1 is macro F1; reduced_recall is the mean recall over the classes the imbalance profile reduces
# (search.data.reduced_classes), computed the same way for balanced trials.
QUALITY_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc",
                   "worst_class_recall", "reduced_recall")
RESOURCE_METRICS = ("train_time_s", "test_time_s", "peak_memory_mb")
METRICS = QUALITY_METRICS + RESOURCE_METRICS


def evaluate(y_true: np.ndarray, proba: np.ndarray, n_classes: int,
             reduced: tuple[int, ...] | list[int] = ()) -> dict:
    labels = list(range(n_classes))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_class_recall = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    # Rows must sum to one for roc_auc_score; softmax output does up to float error.
    proba = proba / proba.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)),
        "worst_class_recall": float(per_class_recall.min()),
        "reduced_recall": float(np.mean(per_class_recall[list(reduced)])) if len(reduced) else float("nan"),
        "per_class_recall": [float(r) for r in per_class_recall],
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
