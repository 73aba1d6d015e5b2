"""A trial's pictures, drawn inside the trial's own process (matplotlib Agg, no display).

Per evaluated split (``validation`` and/or ``test``): the confusion matrix
(scikit-learn's ConfusionMatrixDisplay, counts and row-normalised), per-class
recall and per-class ROC curves; and once per trial the learning curves.
Every title names the split, the number of images and the trial, so a picture
can never be mistaken for another split's.  The coordinating process only
uploads the files (search.study.artifacts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

SPLIT_TITLE = {"validation": "validation split", "test": "held-out test split"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def confusion_matrix_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str) -> Path:
    """Counts and row-normalised (recall) confusion matrix side by side, rows = true class."""
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(cm, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _figure(13, 6)
    axes = fig.subplots(1, 2)
    for ax, mat, what, fmt in ((axes[0], counts.astype(int), "counts", "d"), (axes[1], norm, "row-normalised", ".2f")):
        ConfusionMatrixDisplay(mat, display_labels=list(class_names)).plot(
            ax=ax, cmap="Blues", values_format=fmt, xticks_rotation=45, colorbar=False)
        ax.set_title(what)
        for text in ax.texts:
            text.set_fontsize(7)
    fig.suptitle(title)
    fig.savefig(path, format="png")
    return path


def per_class_recall_png(recall: Sequence[float], class_names: Sequence[str], path: Path, title: str,
                         train_counts: Sequence[int] | None = None) -> Path:
    """One bar per class with the class's training count in its label.

    Hand-drawn: no library plots per-class recall next to the training counts that explain it.
    """
    n = len(recall)
    labels = [f"{c} (train {train_counts[i]})" if train_counts else str(c) for i, c in enumerate(class_names)]
    fig = _figure(7, 0.4 * n + 1.4)
    ax = fig.subplots()
    y = list(range(n))[::-1]
    bars = ax.barh(y, recall, color=["tab:red" if r == min(recall) else "tab:blue" for r in recall])
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("recall")
    mean = sum(recall) / n
    ax.axvline(mean, color="grey", ls="--", lw=1, label=f"macro recall {mean:.3f}")
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, format="png")
    return path


def roc_curves_png(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> Path:
    """One-vs-rest ROC curve of every class (scikit-learn's RocCurveDisplay), AUC in the legend."""
    from sklearn.metrics import RocCurveDisplay

    fig = _figure(7, 6)
    ax = fig.subplots()
    for c, name in enumerate(class_names):
        if (y_true == c).any() and (y_true != c).any():
            RocCurveDisplay.from_predictions(y_true == c, proba[:, c], name=name, ax=ax, plot_chance_level=c == 0,
                                             curve_kwargs={"lw": 1})
    ax.set_xlabel("false positive rate (one class vs the rest)")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, format="png")
    return path


def learning_curves_png(history: dict[str, list[float]], eval_key: str, path: Path, title: str,
                        eval_label: str | None = None) -> Path:
    """Training loss, training accuracy and accuracy on the evaluation split per epoch (the paper's curves).

    ``eval_label`` names the evaluation curve in the legend (it says when the curve is on a sample).
    """
    epochs = list(range(1, len(history["loss"]) + 1))
    fig = _figure(10, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, history["loss"], marker="o", ms=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_acc.plot(epochs, history["accuracy"], marker="o", ms=3, label="training accuracy")
    if history.get(eval_key):
        ax_acc.plot(epochs[:len(history[eval_key])], history[eval_key], marker="s", ms=3,
                    label=eval_label or eval_key)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, format="png")
    return path


def draw_trial(out_dir: Path, splits: dict[str, dict[str, Any]], history: dict[str, list[float]], eval_key: str,
               curve_label: str, class_names: Sequence[str], header: str,
               train_counts: Sequence[int] | None) -> list[str]:
    """Every picture of one trial into ``out_dir``; returns the file paths.

    ``splits``: split name -> {"y": labels, "proba": probabilities, "measures": metrics.evaluate(...)}.
    """
    import matplotlib

    matplotlib.use("Agg")
    out: list[Path] = []
    prefix = {"validation": "val", "test": "test"}
    for split, d in splits.items():
        m = d["measures"]
        what = f"{header}\n{SPLIT_TITLE[split]} ({len(d['y'])} images)"
        out.append(confusion_matrix_png(m["confusion_matrix"], class_names,
                                        out_dir / f"{prefix[split]}_confusion_matrix.png",
                                        f"{what}, accuracy {m['accuracy']:.3f}"))
        out.append(per_class_recall_png(m["per_class_recall"], class_names,
                                        out_dir / f"{prefix[split]}_per_class_recall.png",
                                        f"{what}: per-class recall", train_counts))
        out.append(roc_curves_png(d["y"], d["proba"], class_names, out_dir / f"{prefix[split]}_roc_curves.png",
                                  f"{what}: ROC, macro AUC {m['roc_auc']:.3f}"))
    out.append(learning_curves_png(history, eval_key, out_dir / "learning_curves.png", f"{header}\nlearning curves",
                                   curve_label))
    return [str(p) for p in out]
