"""Classification metrics of one trial (scikit-learn).

The measures a study can optimize are named in ``search.config.choices.METRICS``.  Quality metrics
are measured on a split and stored with that split's prefix (``val_accuracy``, ``test_accuracy``);
resource metrics belong to the trial as a whole.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from search.config.choices import SPLIT_PREFIX


def evaluate(y_true: np.ndarray, proba: np.ndarray, n_classes: int,
             reduced: tuple[int, ...] | list[int] = ()) -> dict:
    """Every quality metric plus per-class recall and the confusion matrix, unprefixed."""
    from sklearn import metrics as skm

    labels = list(range(n_classes))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_class_recall = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    # Rows must sum to one for roc_auc_score; softmax output does up to float error.
    proba = proba / proba.sum(axis=1, keepdims=True)
    one_hot = np.eye(n_classes)[y_pred]
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)),
        "roc_auc_hard": float(skm.roc_auc_score(y_true, one_hot, multi_class="ovr", average="macro",
                                                labels=labels)),
        "worst_class_recall": float(per_class_recall.min()),
        "reduced_recall": float(np.mean(per_class_recall[list(reduced)])) if len(reduced) else float("nan"),
        "per_class_recall": [float(r) for r in per_class_recall],
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def prefixed(measures: dict, split: str) -> dict:
    """``evaluate``'s result with every key prefixed by the split (``val_``/``test_``)."""
    return {f"{SPLIT_PREFIX[split]}_{k}": v for k, v in measures.items()}


def curve_sample_note(sample_rows: Iterable[int]) -> str:
    """What a learning-curve legend adds when curves were measured on a sample of their split (run.curve_rows).

    ``sample_rows``: the sample sizes in use (none: the curves cover their whole split, nothing is added).
    """
    sizes = sorted(set(sample_rows))
    return f" ({' / '.join(f'{r:,}' for r in sizes)}-row stratified sample)" if sizes else ""
