"""search.confirm, the command: repeats chosen trials with other seeds on a verified cache; bad input in one line
that creates nothing; concurrent confirmations keep every run."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
from rich.console import Console

from search import confirm
from search.study import repeats

from .conftest import Tiny, cli_env, lines, run_cli

SECRET = "S3CRETPW"


def confirm_cli(*args: str, cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, module="search.confirm", timeout=timeout)


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Tiny:
    """A validation-protocol study of 2 COMPLETE trials, made by the command with stand-in trials."""
    tiny = Tiny(tmp_path_factory.mktemp("confirm"))
    cfg = tiny.config(n_trials=2, **{'evaluation = "test"': 'evaluation = "validation"',
                                     'metric = "accuracy"': 'metric = "balanced_accuracy"'})
    r = tiny.stand_in(*tiny.args(cfg))
    assert r.returncode == 0, r.stderr
    return tiny


def _confirmed(tiny: Tiny) -> dict:
    attrs = optuna.load_study(study_name="tiny", storage=tiny.storage).user_attrs
    return {k: v for k, v in attrs.items() if k.startswith(repeats.PREFIX)}


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("args,message", [
    (["--study", "nosuch"], "error: --storage: no database at studies.db; run `python -m search.run --study NAME` "
                            "first or pass --storage"),
    (["--study", "../escape"], "error: --study: '../escape' may hold only letters, digits"),
    (["--study", "a/b"], "error: --study: 'a/b' may hold only letters, digits"),
    (["--study", ".hidden"], "error: --study: '.hidden' may hold only letters, digits"),
    (["--study", "x", "--storage", f"postgresql//search:{SECRET}@db/search"],
     "error: --storage: malformed storage URL 'postgresql//search:***@db/search'"),
    (["--study", "x", "--seeds", "0"], "error: --seeds: must be 1-100, got 0"),
])
def test_bad_input_is_one_line_and_creates_nothing(main_here, args, message):
    code, err = main_here(confirm.main, *args)
    assert code == 2
    assert len(lines(err)) == 1 and lines(err)[0].startswith(message), err
    assert SECRET not in err
    assert os.listdir(main_here.work) == []  # no studies.db, -wal or -shm


def test_an_unknown_study_or_trial_is_named_with_what_exists(stored, main_here):
    code, err = main_here(confirm.main, "--study", "nosuch", "--storage", stored.storage)
    assert (code, lines(err)) == (2, ["error: --study: no study 'nosuch' in this storage; studies: tiny"])
    code, err = main_here(confirm.main, "--study", "tiny", "--storage", stored.storage,
                          "--cache-dir", str(stored.cache_dir), "--trials", "0,99")
    assert (code, lines(err)) == (2, ["error: --trials: not COMPLETE trials of 'tiny': [99]; COMPLETE: [0, 1]"])
    assert _confirmed(stored) == {}


def test_a_damaged_cache_is_refused_and_nothing_is_stored(stored, main_here, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(stored.cache_dir, cache)
    feats = np.load(cache / stored.entry.name / "features.npy", mmap_mode="r+")
    feats[:] = 0  # "a cache overwritten with zeros gave accuracy=0.1 ... stored, exit 0" (issue 10)
    feats.flush()
    del feats
    code, err = main_here(confirm.main, "--study", "tiny", "--storage", stored.storage, "--cache-dir", str(cache),
                          "--seeds", "1")
    assert code == 1
    (line,) = lines(err)
    assert line.startswith(f"error: features of study 'tiny' are not usable in {cache} ({stored.entry.name}): "
                           f"feature cache {cache / stored.entry.name} is damaged")
    assert line.endswith("run search.run for it with the same --cache-dir first")
    assert _confirmed(stored) == {}


def test_a_study_timed_on_another_runtime_is_not_confirmed_here(stored, main_here, tmp_path):
    """Repeats store train_time_s next to the study's trials: a study timed one step per call (before
    search.runtime.STEPS_PER_CALL) or on another Keras must not get repeats timed with this one."""
    import sqlite3

    from search.study.lifecycle import IDENTITY_ATTR

    # Copied through SQLite's backup API: a plain file copy would close a descriptor of the shared study's file
    # in this process and so drop the POSIX locks of its open connections (sqlite.org/howtocorrupt.html 2.2).
    db = tmp_path / "old.db"
    src, dst = sqlite3.connect(stored.db), sqlite3.connect(db)
    src.backup(dst)
    src.close(), dst.close()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    ident = study.user_attrs[IDENTITY_ATTR]
    old_runtime = {k: v for k, v in ident["runtime"].items() if k != "train_steps_per_call"}
    study.set_user_attr(IDENTITY_ATTR, {**ident, "runtime": old_runtime})
    code, err = main_here(confirm.main, "--study", "tiny", "--storage", f"sqlite:///{db}",
                          "--cache-dir", str(stored.cache_dir), "--seeds", "1")
    assert code == 2
    (line,) = lines(err)
    assert line.startswith("error: study 'tiny' was measured on another runtime "
                           "(runtime.train_steps_per_call: \"(absent)\" -> \"32\")")
    attrs = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").user_attrs
    assert not [k for k in attrs if k.startswith(repeats.PREFIX)]


def test_the_printout_names_failed_and_unpaired_seeds(monkeypatch):
    import rich.console

    def run_(seed, value, params="balanced"):
        return {"params": {"balance": params}, "seed": seed, "metrics": {"test_balanced_accuracy": value}}

    attrs = {repeats.attr_name(0, s): run_(s, 0.8 + s / 100) for s in (1, 2, 3)}
    attrs.update({repeats.attr_name(1, s): run_(s, 0.7 + s / 50, "imbalanced") for s in (1, 2)})
    attrs[repeats.attr_name(1, 3)] = {"params": {"balance": "imbalanced"}, "seed": 3,
                                      "error": "training loss became NaN/inf at epoch 1"}
    out = io.StringIO()
    monkeypatch.setattr(rich.console, "Console", lambda *a, **k: Console(file=out, width=300))
    confirm._print("imb", repeats.confirmed(attrs), ["test_balanced_accuracy"])
    text = out.getvalue()
    assert "2 (failed: 3)" in text  # trial 1 ran 2 of its 3 seeds
    assert "paired, n=2; seeds in one arm only: 3" in text


# ---------------------------------------------------------------- real repeats (slow)

@pytest.mark.slow
def test_confirm_repeats_trials_with_other_seeds_and_keeps_what_was_confirmed(stored):
    c = confirm_cli("--study", "tiny", "--storage", stored.storage, "--cache-dir", str(stored.cache_dir),
                    "--seeds", "2", "--trials", "0", cwd=stored.tmp)
    assert c.returncode == 0, c.stderr
    assert "mean ± std" in c.stdout or "mean ±" in c.stdout
    runs = _confirmed(stored)
    assert set(runs) == {"search:confirm:0:1", "search:confirm:0:2"}
    for seed in (1, 2):
        m = runs[f"search:confirm:0:{seed}"]["metrics"]
        assert 0 <= m["val_balanced_accuracy"] <= 1 and 0 <= m["test_balanced_accuracy"] <= 1
        assert m["train_time_s"] > 0 and m["peak_memory_mb"] > 100  # a real trial process
    assert runs["search:confirm:0:1"]["metrics"] != runs["search:confirm:0:2"]["metrics"]  # another split each

    # Two confirmations at once (another trial each) merge: every run is kept.
    procs = [subprocess.Popen([sys.executable, "-m", "search.confirm", "--study", "tiny", "--storage", stored.storage,
                               "--cache-dir", str(stored.cache_dir), "--seeds", "2", "--trials", trials],
                              cwd=stored.tmp, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for trials in ("1", "0,1")]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    runs = _confirmed(stored)
    assert set(runs) == {f"search:confirm:{t}:{s}" for t in (0, 1) for s in (1, 2)}
    summary = repeats.confirmed(optuna.load_study(study_name="tiny", storage=stored.storage).user_attrs)
    assert summary["trials"]["0"]["metrics"]["val_balanced_accuracy"]["n"] == 2
