"""search.data.user_data and the "folder" / "npz" datasets: a user's own images through the same pipeline.

Data the tests make (tests/conftest.py: three classes of distinct patterns, as PNGs of mixed modes and sizes,
and the same images as arrays); random-weight ResNet50 features, on which a head separates them.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

import search
from search.data import datasets, user_data
from search.errors import BadData

from .conftest import ROOT, TINY_CONFIG, USER_CLASSES, lines, pattern_images, run_cli, write_image_folder, write_npz


def _text(name: str, path: Path | str | None) -> str:
    """The tests' tiny config over a user's own dataset (no ``path`` line when ``path`` is None); 5 epochs."""
    where = "" if path is None else f'path = "{path}"\n'
    text = TINY_CONFIG.format(n_trials=2).replace('name = "fashion_mnist"\n', f'name = "{name}"\n{where}')
    return (text.replace("units = 32", "units = 64").replace("batch_size = 32", "batch_size = 16")
            .replace("epochs = 1\n", "epochs = 5\nlearning_rate = 0.003\n"))


def _config(tmp: Path, name: str, path: Path | str | None, stem: str = "") -> Path:
    f = tmp / f"{stem or 'mine-' + name}.toml"
    f.write_text(_text(name, path))
    return f


# ---------------------------------------------------------------- reading

def test_a_folder_is_read_with_sorted_classes_three_channels_and_one_size(tmp_path):
    x, y, names = user_data.read_folder(write_image_folder(tmp_path / "imgs", n_per_class=10))
    assert names == tuple(sorted(USER_CLASSES)) and x.shape == (30, 28, 28, 3) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [10, 10, 10]
    expected, _ = pattern_images(10)
    # A grayscale PNG becomes three equal channels of its pixels (the most common size is kept as it is).
    assert np.array_equal(x[1, ..., 0], expected[1]) and np.array_equal(x[1, ..., 0], x[1, ..., 2])


def test_npz_arrays_of_any_layout_become_the_same_images(tmp_path):
    images, labels = pattern_images(10)
    layouts = {"uint8": images, "float": images[..., None] / 255.0,
               "rgba": np.repeat(images[..., None], 4, axis=-1)}
    for name, x in layouts.items():
        got, y, names = user_data.read_npz(write_npz(tmp_path / f"{name}.npz", 10, x=x))
        assert np.array_equal(got if got.ndim == 3 else got[..., 0], images), name
        assert names == USER_CLASSES and np.array_equal(y, labels)


def test_npz_labels_are_renumbered_and_named(tmp_path):
    _, labels = pattern_images(10)
    x, y, names = user_data.read_npz(write_npz(tmp_path / "a.npz", 10, y=labels * 3 + 7, class_names=None))
    assert names == ("7", "10", "13") and sorted(set(y.tolist())) == [0, 1, 2]


def test_the_fingerprint_follows_the_pixels_and_the_class_names(tmp_path):
    a = datasets.load_pooled("folder", write_image_folder(tmp_path / "imgs", n_per_class=10))
    (tmp_path / "imgs" / "checks").rename(tmp_path / "imgs" / "blocks")  # still the first class
    b = datasets.load_pooled("folder", tmp_path / "imgs")
    assert np.array_equal(a.images, b.images) and a.fingerprint() != b.fingerprint()
    Image.new("L", (28, 28), 255).save(tmp_path / "imgs" / "vertical" / "0000x.png")
    assert datasets.load_pooled("folder", tmp_path / "imgs").fingerprint() != b.fingerprint()


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing created

def _bad_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = write_image_folder(tmp / "good", n_per_class=30)
    one = write_image_folder(tmp / "one", n_per_class=30)
    for c in USER_CLASSES[1:]:
        for f in (one / c).iterdir():
            f.unlink()
        (one / c).rmdir()
    few = write_image_folder(tmp / "few", n_per_class=30)
    for f in sorted((few / "vertical").iterdir())[3:]:
        f.unlink()
    corrupt = write_image_folder(tmp / "corrupt", n_per_class=30)
    (corrupt / "checks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp / "empty").mkdir()
    images, labels = pattern_images(30)
    return {
        "missing path": (_config(tmp, "folder", tmp / "nope", stem="c1"), r"nope is not a directory"),
        "empty folder": (_config(tmp, "folder", tmp / "empty", stem="c2"), r"empty holds no class subfolders"),
        "single class": (_config(tmp, "folder", one, stem="c3"), r"a single class \('checks'\)"),
        "too few in a class": (_config(tmp, "folder", few, stem="c4"), r"class 'vertical' has 3 image\(s\); .* at least 5"),
        "corrupt image": (_config(tmp, "folder", corrupt, stem="c5"), r"broken\.png: not a readable image"),
        "x and y lengths": (_config(tmp, "npz", write_npz(tmp / "len.npz", 30, y=labels[:-1]), stem="c6"),
                            r"len\.npz: x holds 90 images but y 89 labels"),
        "float labels": (_config(tmp, "npz", write_npz(tmp / "fl.npz", 30, y=labels + 0.5), stem="c7"),
                         r"fl\.npz: y holds float64 values; labels must be integers"),
        "x out of range": (_config(tmp, "npz", write_npz(tmp / "big.npz", 30, x=images * 2.0), stem="c8"),
                           r"big\.npz: x holds floats outside \[0, 1\]"),
        "not an npz": (_config(tmp, "npz", good / "checks" / "0000.png", stem="c9"), r"0000\.png: not a readable \.npz"),
        "no path": (_config(tmp, "folder", None, stem="c10"),
                    r"dataset\.path: dataset 'folder' reads your data from path"),
        "path on a built-in": (_config(tmp, "fashion_mnist", good, stem="c11"), r"dataset\.path: only folder, npz take a path"),
    }


def test_every_bad_user_dataset_is_one_line_naming_it_and_creates_nothing(tmp_path, main_here):
    from search import run

    for case, (config, message) in _bad_cases(tmp_path).items():
        db = tmp_path / f"{case}.db"
        code, err = main_here(run.main, "--study", str(config), "--storage", f"sqlite:///{db}",
                              "--cache-dir", str(tmp_path / "cache"))
        assert code == 2, (case, err)
        assert len(lines(err)) == 1 and err.startswith("error: "), (case, err)
        assert re.search(message, err), (case, err)
        assert not db.exists() and not (tmp_path / "cache").exists(), case


def test_data_dir_is_refused_for_a_dataset_read_from_its_path(tmp_path, main_here):
    from search import run

    config = _config(tmp_path, "folder", write_image_folder(tmp_path / "imgs", n_per_class=10))
    code, err = main_here(run.main, "--study", str(config), "--data-dir", str(tmp_path), "--storage",
                          f"sqlite:///{tmp_path / 's.db'}")
    assert code == 2 and "--data-dir: dataset 'folder' is read from its [dataset] path" in err


# ---------------------------------------------------------------- studies on a user's own data

def _readme_config(folder: Path) -> str:
    """The README's complete config for a folder of images, pointed at ``folder``."""
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1]
    text = re.search(r"```toml\n(objectives = .*?)```", section, re.S).group(1)
    return text.replace('path = "data/my_images"', f'path = "{folder}"')


def test_the_readme_config_for_a_folder_is_complete(tmp_path):
    f = tmp_path / "my.toml"
    f.write_text(_readme_config(tmp_path / "imgs"))
    c = search.load_config(f)
    assert (c.dataset.name, c.dataset.path, c.run.n_trials) == ("folder", str(tmp_path / "imgs"), 20)
    assert c.metric_names == ["val_accuracy", "val_roc_auc", "train_time_s", "peak_memory_mb"]


@pytest.mark.slow
def test_a_folder_study_learns_the_classes_and_names_them(tmp_path):
    """The README's config over a folder the test makes: 2 trials, then a changed image refuses the resume."""
    folder = write_image_folder(tmp_path / "imgs")
    config = tmp_path / "mine-folder.toml"
    config.write_text(_readme_config(folder).replace("n_trials = 20", "n_trials = 2"))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    r = run_cli("--study", str(config), "--storage", storage, "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="mine-folder", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all(t.values[0] > 0.6 for t in done)  # chance is 1/3
    assert study.user_attrs["search:data"]["class_names"] == sorted(USER_CLASSES)
    assert len(done[0].user_attrs["test_per_class_recall"]) == 3

    # Changed data: the same command is refused in one line naming the change, and adds nothing.
    Image.new("L", (28, 28), 255).save(folder / "vertical" / "extra.png")
    again = run_cli("--study", str(config), "--storage", storage, "--cache-dir", str(tmp_path / "cache"),
                    "--n-trials", "3", cwd=tmp_path)
    errors = [ln for ln in lines(again.stderr) if ln.startswith("error: ")]
    assert again.returncode == 2 and len(errors) == 1 and "data_fingerprint" in errors[0], again.stderr
    assert len(optuna.load_study(study_name="mine-folder", storage=storage).trials) == 2


@pytest.mark.slow
def test_an_npz_study_through_the_python_api(tmp_path):
    config = search.load_config(_config(tmp_path, "npz", write_npz(tmp_path / "mine.npz")))
    s = search.Search(config, storage=f"sqlite:///{tmp_path / 's.db'}", cache_dir=tmp_path / "cache")
    summary = s.optimize()
    assert summary.complete_after == 2 and min(t.values[0] for t in s.study.best_trials) > 0.6
    assert s.load_data().class_names == USER_CLASSES
    with sqlite3.connect(tmp_path / "s.db") as db:  # the class names travel with the study
        (value,) = db.execute("select value_json from study_user_attributes where key = 'search:data'").fetchone()
    assert json.loads(value)["class_names"] == list(USER_CLASSES)


def test_unreadable_image_error_is_bad_data(tmp_path):
    d = write_image_folder(tmp_path / "imgs", n_per_class=3)
    (d / "checks" / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(BadData, match=r"x\.gif: not a readable image"):
        user_data.read_folder(d)
