"""Per-trial pictures as Optuna artifacts: the confusion matrix and the per-class recall.

Each COMPLETE trial gets two PNGs (drawn with matplotlib's Agg canvas, no
display needed) uploaded with ``optuna.artifacts.upload_artifact`` to a
``FileSystemArtifactStore``.  The store lives next to the SQLite database by
default (``studies.db`` -> ``studies-artifacts/``); for PostgreSQL/MySQL it is
``./search-artifacts`` or ``--artifact-dir``.  Its absolute path is recorded on
the study (user attribute ``search:artifact_dir``) so that ``search.dashboard``
and ``search.report`` find it without being told.

A picture that cannot be drawn or stored never fails the trial: the error is
recorded as the trial's user attribute ``artifact_error``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from search.errors import UsageError

if TYPE_CHECKING:
    import optuna

ARTIFACT_DIR_ATTR = "search:artifact_dir"
NON_FILE_DEFAULT = "search-artifacts"
CONFUSION_PNG = "confusion_matrix.png"
RECALL_PNG = "per_class_recall.png"


# ---------------------------------------------------------------- where the store lives

def default_artifact_dir(storage_url: str) -> Path:
    """``<db stem>-artifacts/`` beside a SQLite file; ``./search-artifacts`` for a database server."""
    from sqlalchemy.engine import make_url

    u = make_url(storage_url)
    if u.get_backend_name() == "sqlite" and u.database:
        db = Path(u.database).resolve()
        return db.with_name(f"{db.stem}-artifacts")
    return (Path.cwd() / NON_FILE_DEFAULT).resolve()


def prepare(study: "optuna.Study", storage_url: str, requested: Path | None) -> Path:
    """The study's artifact directory, created and recorded on the study.

    A study keeps the directory it was first given: asking for another one
    while the recorded one still exists is refused, since the pictures would
    end up split over two places.
    """
    recorded = study.user_attrs.get(ARTIFACT_DIR_ATTR)
    wanted = requested.expanduser().resolve() if requested is not None else None
    if recorded and wanted is not None and Path(recorded) != wanted and Path(recorded).is_dir():
        raise UsageError(f"--artifact-dir: study {study.study_name!r} keeps its pictures in {recorded}; "
                         f"pass that directory or leave the flag out")
    if wanted is not None:
        path = wanted
    elif recorded and Path(recorded).is_dir():
        path = Path(recorded)
    else:
        path = default_artifact_dir(storage_url)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--artifact-dir: cannot create {path}: {e.strerror}") from None
    if recorded != str(path):
        study.set_user_attr(ARTIFACT_DIR_ATTR, str(path))
    return path


def store(path: Path | str):
    import optuna

    return optuna.artifacts.FileSystemArtifactStore(str(path))


# ---------------------------------------------------------------- pictures

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def confusion_matrix_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path,
                         title: str = "") -> Path:
    """Counts and row-normalised (recall) confusion matrix side by side, rows = true class."""
    import numpy as np

    counts = np.asarray(cm, dtype=float)
    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _figure(14, 6.4)
    axes = fig.subplots(1, 2)
    for ax, mat, what, fmt in ((axes[0], counts, "counts", "{:.0f}"),
                               (axes[1], norm, "row-normalised", "{:.2f}")):
        vmax = mat.max() if mat.max() > 0 else 1
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(what)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > 0.6 * vmax else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title or "confusion matrix")
    fig.savefig(path, format="png")
    return path


def per_class_recall_png(recall: Sequence[float], class_names: Sequence[str], path: Path,
                         train_counts: Sequence[int] | None = None, title: str = "") -> Path:
    """One bar per class (recall on the test set), with the class's training count in the label."""
    n = len(recall)
    labels = [f"{c} (train {train_counts[i]})" if train_counts else str(c) for i, c in enumerate(class_names)]
    fig = _figure(7, 0.4 * n + 1.4)
    ax = fig.subplots()
    y = list(range(n))[::-1]
    bars = ax.barh(y, recall, color=["tab:red" if r == min(recall) else "tab:blue" for r in recall])
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("recall on the test set")
    mean = sum(recall) / n
    ax.axvline(mean, color="grey", ls="--", lw=1, label=f"macro recall {mean:.3f}")
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "per-class recall")
    fig.savefig(path, format="png")
    return path


# ---------------------------------------------------------------- upload

def upload_trial_pictures(trial: "optuna.Trial", result: dict[str, Any], ctx: Any) -> list[str]:
    """Draw and upload the trial's pictures; return the artifact ids.  Never raises."""
    artifact_dir = getattr(ctx, "artifact_dir", None)
    if artifact_dir is None:
        return []
    try:
        import optuna

        from search.data import CLASS_NAMES

        names = CLASS_NAMES.get(ctx.config.dataset.name) or [str(i) for i in range(ctx.n_classes)]
        # upload_artifact records the artifact before writing it: check first, so that a store that
        # cannot be written leaves no artifact pointing at nothing.
        if not Path(artifact_dir).is_dir() or not os.access(artifact_dir, os.W_OK):
            raise OSError(f"artifact directory {artifact_dir} is not a writable directory")
        st = store(artifact_dir)
        ids = []
        with tempfile.TemporaryDirectory(prefix="search-pictures-") as tmp:
            head = f"trial {trial.number}: accuracy {result['accuracy']:.3f}"
            cm = confusion_matrix_png(result["confusion_matrix"], names, Path(tmp) / CONFUSION_PNG,
                                      title=f"{head}, {sum(map(sum, result['confusion_matrix']))} test images")
            rec = per_class_recall_png(result["per_class_recall"], names, Path(tmp) / RECALL_PNG,
                                       train_counts=result.get("train_class_counts"), title=head)
            for path in (cm, rec):
                ids.append(optuna.artifacts.upload_artifact(artifact_store=st, file_path=str(path),
                                                            study_or_trial=trial, mimetype="image/png"))
        return ids
    except Exception as e:  # a picture is never worth a trial
        try:
            trial.set_user_attr("artifact_error", f"{type(e).__name__}: {e}"[:500])
        except Exception:
            pass
        return []


def trial_artifacts(trial: "optuna.trial.FrozenTrial", storage: Any) -> list[dict[str, Any]]:
    """The artifact metadata (artifact_id, filename, mimetype) Optuna stored on a trial."""
    import dataclasses

    import optuna

    return [dataclasses.asdict(m) for m in optuna.artifacts.get_all_artifact_meta(trial, storage=storage)]
