"""search.trial.pictures: a trial's pictures are real PNGs, one set per evaluated split, each titled with its split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.config.choices import DATASETS
from search.trial import metrics, pictures

NAMES = DATASETS["fashion_mnist"].class_names


def _split(seed: int, n: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {"y": y, "proba": proba, "measures": metrics.evaluate(y, proba, 10)}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Draw a validation-protocol trial's pictures; keep each figure's titles by file name."""
    tmp_path = tmp_path_factory.mktemp("pictures")
    titles: dict[str, str] = {}
    real = pictures._figure

    def figure(*a, **k):
        fig = real(*a, **k)
        save = fig.savefig

        def savefig(path, **kw):
            texts = [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]
            titles[Path(path).name] = " | ".join(texts)
            return save(path, **kw)

        fig.savefig = savefig
        return fig

    history = {"loss": [1.2, 0.8], "accuracy": [0.6, 0.7], "val_accuracy": [0.55, 0.68], "epoch_time_s": [1.0, 0.9]}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pictures, "_figure", figure)
        files = pictures.draw_trial(tmp_path, {"validation": _split(0, 120), "test": _split(1, 200)}, history,
                                    "val_accuracy", "val_accuracy (50-row stratified sample)", NAMES, "trial 7, Keras/jax, weights random(seed=0)", [48] * 10)
    return [Path(f) for f in files], titles


def test_one_set_of_pictures_per_split_plus_the_learning_curves(drawn):
    files, _ = drawn
    assert sorted(f.name for f in files) == sorted([
        "val_confusion_matrix.png", "val_per_class_recall.png", "val_roc_curves.png",
        "test_confusion_matrix.png", "test_per_class_recall.png", "test_roc_curves.png", "learning_curves.png"])
    for f in files:
        with Image.open(f) as img:
            img.verify()
        with Image.open(f) as img:
            assert img.format == "PNG" and img.size[0] >= 500, f.name
            # Drawn, not blank: many colours on the canvas.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 30, f.name


def test_every_title_names_its_split_its_images_and_the_trial(drawn):
    _, titles = drawn
    for name, text in titles.items():
        assert "trial 7, Keras/jax, weights random(seed=0)" in text, name
        if name.startswith("val_"):
            assert "validation split (120 images)" in text and "test" not in text.replace("trial", ""), (name, text)
        elif name.startswith("test_"):
            assert "held-out test split (200 images)" in text and "validation" not in text, (name, text)
    assert "accuracy 0." in titles["test_confusion_matrix.png"]
    assert "macro AUC" in titles["val_roc_curves.png"]


def test_a_test_protocol_trial_draws_only_the_test_split(tmp_path):
    history = {"loss": [1.0], "accuracy": [0.6], "test_accuracy": [0.6], "epoch_time_s": [1.0]}
    files = pictures.draw_trial(tmp_path, {"test": _split(2)}, history, "test_accuracy", "test_accuracy", NAMES,
                                "trial 0", None)
    assert sorted(Path(f).name for f in files) == ["learning_curves.png", "test_confusion_matrix.png",
                                                   "test_per_class_recall.png", "test_roc_curves.png"]
