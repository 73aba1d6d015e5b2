"""End to end through the CLI: a real smoke study, resume, drift refusal, and bad input that changes nothing."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3

import optuna
import pytest

from .conftest import needs_real_fashion, run_cli

ATTRS = {"accuracy", "precision", "recall", "f1", "roc_auc", "per_class_recall", "confusion_matrix",
         "train_time_s", "test_time_s", "peak_memory_mb", "n_train", "n_test", "resolved_params"}


def _complete(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


@needs_real_fashion
def test_smoke_study_end_to_end(tmp_path):
    db = tmp_path / "T.db"
    storage = f"sqlite:///{db}"
    r = run_cli("--study", "smoke", "--storage", storage, "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Pareto-optimal trials of smoke" in r.stdout

    study = optuna.load_study(study_name="smoke", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "roc_auc", "train_time_s", "peak_memory_mb"]
    trials = _complete(storage, "smoke")
    assert len(trials) == 3
    for t in trials:
        assert all(math.isfinite(v) for v in t.values)
        assert ATTRS <= set(t.user_attrs)
        assert t.values[0] == t.user_attrs["accuracy"] and 0.0 <= t.values[0] <= 1.0
        assert 0.5 < t.values[1] <= 1.0  # better than chance on real images
        assert t.values[3] > 100  # MB: a real process with Keras loaded
        assert sum(map(sum, t.user_attrs["confusion_matrix"])) == t.user_attrs["n_test"]
        assert t.user_attrs["keras_backend"] == "jax"  # the default, recorded with what it measured
    assert "trials train on Keras/jax" in r.stderr
    assert study.user_attrs["search:identity"]["backbone"]["weights"] == "random(seed=0)"

    # Same command again: the target is already met, nothing is added.
    r2 = run_cli("--study", "smoke", "--storage", storage, "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert len(optuna.load_study(study_name="smoke", storage=storage).trials) == len(study.trials)
    assert "(0 this run" in r2.stderr

    # A larger target continues the same study.
    r3 = run_cli("--study", "smoke", "--storage", storage, "--cache-dir", str(tmp_path / "cache"),
                 "--n-trials", "4", cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    assert len(_complete(storage, "smoke")) == 4


def test_default_storage_is_studies_db_in_working_dir(tiny):
    r = tiny.run("--study", str(tiny.config(n_trials=1)), "--data-dir", str(tiny.data_dir),
                 "--cache-dir", str(tiny.cache_dir))
    assert r.returncode == 0, r.stderr
    assert len(_complete(f"sqlite:///{tiny.tmp / 'studies.db'}", "tiny")) == 1


def test_resume_with_changed_space_is_refused(tiny):
    cfg = tiny.config(n_trials=1)
    assert tiny.run(*tiny.args(cfg)).returncode == 0
    before = hashlib.sha256(tiny.db.read_bytes()).hexdigest()
    cfg.write_text(cfg.read_text().replace("high = 0.7", "high = 0.6").replace('"minimize"', '"maximize"', 1))
    r = tiny.run(*tiny.args(cfg))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "search_space.dropout.high: 0.7 -> 0.6" in line
    assert "objectives" in line and "--study-name" in line
    assert hashlib.sha256(tiny.db.read_bytes()).hexdigest() == before
    # The suggested way out works: a new study beside the old one.
    assert tiny.run(*tiny.args(cfg, "--study-name", "tiny-v2")).returncode == 0


def test_resume_with_other_weights_or_data_is_refused(tiny):
    from .conftest import write_fashion_dir

    cfg = tiny.config(n_trials=1)
    assert tiny.run(*tiny.args(cfg)).returncode == 0
    other = write_fashion_dir(tiny.tmp / "other", seed=1)
    args = tiny.args(cfg)
    args[args.index("--data-dir") + 1] = str(other)
    r = tiny.run(*args)
    assert r.returncode == 2 and "data_fingerprint" in r.stderr
    w = tiny.tmp / "w.h5"
    w.write_bytes(b"x")
    r = tiny.run(*tiny.args(cfg, "--weights", str(w), "--study-name", "tiny"))
    assert r.returncode == 2 and "backbone.weights" in r.stderr


BAD_CLI = [
    (["--study", "nope"], 2, "--study: unknown study 'nope'; available:"),
    (["--study", "smoke", "--n-trials", "0"], 2, "--n-trials: must be positive"),
    (["--study", "smoke", "--timeout", "-1"], 2, "--timeout: must be a positive number"),
    (["--study", "smoke", "--timeout", "nan"], 2, "--timeout: must be a positive number"),
    (["--study", "smoke", "--study-name", ""], 2, "--study-name: must not be empty"),
    (["--study", "smoke", "--study-name", "x" * 200], 2, "--study-name: longer than 128"),
    (["--study", "smoke", "--storage", "sqlite:/nope"], 2, "--storage:"),
    (["--study", "smoke", "--storage", "not a url"], 2, "--storage: malformed storage URL"),
    (["--study", "smoke", "--storage", "redis://localhost/0"], 2, "--storage: unsupported database 'redis'"),
    (["--study", "smoke", "--storage", "sqlite:////no/such/dir/x.db"], 2, "--storage: directory /no/such/dir does not exist"),
    (["--study", "smoke", "--data-dir", "/no/such/dir"], 2, "--data-dir: /no/such/dir is not a directory"),
    (["--study", "smoke", "--weights", "/no/such/weights.h5"], 1, "--weights: /no/such/weights.h5 is neither"),
    (["--study", "smoke", "--backend", "theano"], 2, "--backend: unknown Keras backend 'theano'; valid: jax, "),
    (["--study"], 2, "--study: expected one argument"),
    (["--study", "smoke", "--n-trials", "many"], 2, "--n-trials: invalid int value"),
]


@pytest.mark.parametrize("args,code,message", BAD_CLI, ids=[b[2][:30] for b in BAD_CLI])
def test_bad_flags_fail_in_one_line_and_create_nothing(tmp_path, args, code, message):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) <= 2  # argparse adds its usage line
    assert os.listdir(tmp_path) == []  # no studies.db, no cache


def test_data_dir_without_the_files(tiny):
    empty = tiny.tmp / "empty"
    empty.mkdir()
    args = tiny.args(tiny.config())
    args[args.index("--data-dir") + 1] = str(empty)
    r = tiny.run(*args)
    assert r.returncode == 1
    assert f"--data-dir: fashion_mnist files not found in {empty}" in r.stderr
    assert "apt-get install dataset-fashion-mnist" in r.stderr
    assert not tiny.db.exists()


def test_read_only_database_is_refused_and_kept(tiny):
    cfg = tiny.config(n_trials=1)
    assert tiny.run(*tiny.args(cfg)).returncode == 0
    before = hashlib.sha256(tiny.db.read_bytes()).hexdigest()
    tiny.db.chmod(0o444)
    r = tiny.run(*tiny.args(cfg, "--n-trials", "2"))
    assert r.returncode == 1 and "is read-only" in r.stderr
    assert hashlib.sha256(tiny.db.read_bytes()).hexdigest() == before


def test_unreachable_postgres_is_one_line(tiny):
    r = tiny.run(*tiny.args(tiny.config(), "--storage", "postgresql://u:secret@127.0.0.1:1/db"))
    assert r.returncode == 1
    assert "--storage: cannot open postgresql://u:***@127.0.0.1:1/db" in r.stderr
    assert "secret" not in r.stderr and "Traceback" not in r.stderr


def test_bad_config_file_creates_nothing(tiny):
    cfg = tiny.config(text="[dataset]\nname = 'fashion_mnist'\n")
    r = tiny.run(*tiny.args(cfg))
    assert r.returncode == 2 and f"{cfg}: " in r.stderr
    assert not tiny.db.exists() and not tiny.cache_dir.exists()


def test_damaged_cache_is_rebuilt_with_a_warning(tiny):
    cfg = tiny.config(n_trials=1)
    assert tiny.run(*tiny.args(cfg)).returncode == 0
    (entry,) = [p for p in tiny.cache_dir.iterdir() if p.is_dir()]
    raw = bytearray((entry / "features.npy").read_bytes())
    raw[200] ^= 0xFF
    (entry / "features.npy").write_bytes(bytes(raw))
    r = tiny.run(*tiny.args(cfg, "--n-trials", "2"))
    assert r.returncode == 0, r.stderr
    assert "warning: feature cache" in r.stderr and "damaged; rebuilding it" in r.stderr
    assert len(_complete(tiny.storage, "tiny")) == 2


def test_debug_shows_traceback(tmp_path):
    r = run_cli("--study", "nope", "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
