"""search.run, the command: bad input in one line that creates nothing, resume and drift refusal (settings, data,
weights, backend), the feature cache as the command meets it, and a real end-to-end study on a real slice.

Most runs use ``python -m tests.stand_in_cli`` (the real command whose trial processes sleep instead of
training); the end-to-end tests run the real trial.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search import run
from search.study import optuna_compat as compat
from search.study.lifecycle import IDENTITY_ATTR

from .conftest import (ROOT, as_user_without_overrides, lines, needs_real_fashion, run_cli, stop, wait_for,
                       write_fashion_dir)
from .stand_ins import measures

SECRET = "S3CRETPW"


def _trials(storage: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- bad input: one line, right code, nothing created

BAD_CLI = [
    (["--study", "nope"], 2, "error: --study: unknown study 'nope'; available:"),
    (["--study", "smoke", "--n-trials", "0"], 2, "error: --n-trials: must be 1-100000, got 0"),
    (["--study", "smoke", "--timeout", "-1"], 2, "error: --timeout: must be a positive number of seconds"),
    (["--study", "smoke", "--timeout", "nan"], 2, "error: --timeout: must be a positive number of seconds"),
    (["--study", "smoke", "--trial-timeout", "inf"], 2, "error: --trial-timeout: must be a positive number"),
    (["--study", "smoke", "--workers", "1000"], 2, "error: --workers: must be 1-"),
    (["--study", "smoke", "--workers", "0"], 2, "error: --workers: must be 1-"),
    (["--study", "smoke", "--heartbeat", "0"], 2, "error: --heartbeat: must be 1-3600 seconds, got 0"),
    (["--study", "smoke", "--seed", "-1"], 2, "error: --seed: must be 0-4294967295, got -1"),
    (["--study", "smoke", "--study-name", ""], 2, "error: --study-name: must not be empty"),
    (["--study", "smoke", "--study-name", "x" * 200], 2, "error: --study-name: longer than 100 characters"),
    (["--study", "smoke", "--study-name", "../escape"], 2, "error: --study-name: '../escape' may hold only"),
    (["--study", "smoke", "--study-name", "a/b"], 2, "error: --study-name: 'a/b' may hold only"),
    (["--study", "smoke", "--study-name", ".hidden"], 2, "error: --study-name: '.hidden' may hold only"),
    (["--study", "smoke", "--storage", "sqlite:/nope"], 2, "error: --storage:"),
    (["--study", "smoke", "--storage", "not a url"], 2, "error: --storage: malformed storage URL 'not a url'"),
    (["--study", "smoke", "--storage", f"postgresql//search:{SECRET}@db/search"], 2,
     "error: --storage: malformed storage URL 'postgresql//search:***@db/search'"),
    (["--study", "smoke", "--storage", "postgresql://u:pw@db:notaport/x"], 2,
     "error: --storage: malformed storage URL 'postgresql://u:***@db:notaport/x'"),
    (["--study", "smoke", "--storage", "redis://localhost/0"], 2, "error: --storage: unsupported database 'redis'"),
    (["--study", "smoke", "--storage", "sqlite:////no/such/dir/x.db"], 2,
     "error: --storage: directory /no/such/dir does not exist"),
    (["--study", "smoke", "--storage", f"postgresql://u:{SECRET}@127.0.0.1:1/db"], 1,
     "error: --storage: cannot open postgresql://u:***@127.0.0.1:1/db"),
    (["--study", "smoke", "--data-dir", "/no/such/dir"], 2, "error: --data-dir: /no/such/dir is not a directory"),
    (["--study", "smoke", "--weights", "/no/such/weights.h5"], 1, "error: weights '/no/such/weights.h5' are neither"),
    (["--study", "smoke", "--backend", "theano"], 2, "error: --backend: unknown Keras backend 'theano'; valid: jax"),
    (["--study", "/no/such/config.toml"], 2, "error: --study: no such config file /no/such/config.toml"),
    (["--study"], 2, "error: argument --study: expected one argument"),
    (["--study", "smoke", "--n-trials", "many"], 2, "error: argument --n-trials: invalid int value: 'many'"),
]


@pytest.mark.parametrize("args,code,message", BAD_CLI, ids=[" ".join(b[0])[-40:] for b in BAD_CLI])
def test_bad_flags_fail_in_one_line_and_create_nothing(main_here, args, code, message):
    rc, err = main_here(run.main, *args)
    assert rc == code, err
    # One line: the error (a progress line about the data read may come before it, never a traceback).
    assert [x for x in lines(err) if not x.startswith("data: ")] == [lines(err)[-1]], err
    assert lines(err)[-1].startswith(message), err
    assert SECRET not in err
    assert os.listdir(main_here.work) == []  # no studies.db (-wal, -shm), no cache, no artifacts


def test_trial_memory_as_objective_on_a_kernel_that_cannot_measure_it_is_one_line(main_here, monkeypatch):
    from search import isolate

    monkeypatch.setattr(isolate, "can_reset_peak", lambda: False)
    rc, err = main_here(run.main, "--study", "fmnist_reg", "--weights", "random")
    assert rc == 2
    assert lines(err)[-1] == ("error: study fmnist_reg: objective trial_memory_mb needs /proc/self/clear_refs "
                              "(Linux >= 4.0), which this system does not allow; use peak_memory_mb instead")
    assert os.listdir(main_here.work) == []


def test_bad_input_through_the_real_command_has_no_traceback_and_leaves_no_database(tmp_path):
    r = run_cli("--study", "smoke", "--seed", "-1", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "error: --seed: must be 0-4294967295, got -1\n")
    assert os.listdir(tmp_path) == []


def test_an_unreadable_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "secret.toml"
    cfg.write_text((ROOT / "study_configs" / "smoke.toml").read_text())
    cfg.chmod(0o000)
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("--study", str(cfg), cwd=work, prefix=as_user_without_overrides())
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"error: {cfg}: cannot read: Permission denied\n"
    assert os.listdir(work) == []


def test_a_bad_config_names_file_and_field_and_creates_nothing(tiny):
    cfg = tiny.config(**{"epochs = 1\n": "epochs = 1000000000000\n"})
    r = tiny.stand_in(*tiny.args(cfg))
    assert r.returncode == 2
    assert r.stderr == f"error: {cfg}: training.epochs: Input should be less than or equal to 1000 (got 1000000000000)\n"
    assert not tiny.db.exists()


SMOKE = (ROOT / "study_configs" / "smoke.toml").read_text()

# (text of smoke.toml replaced, the replacement, the field and bad value the one line must name)
BAD_VALUES = [
    ('epochs = { type = "int", low = 1, high = 2 }', 'epochs = { type = "categorical", choices = ["2"] }',
     "search_space.epochs.choices[0]: Input should be a valid integer (got '2')"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'epochs = { type = "categorical", choices = [1, true] }',
     "search_space.epochs.choices[1]: Input should be a valid integer (got True)"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'units = { type = "categorical", choices = [16.0, 32] }',
     "search_space.units.choices[0]: Input should be a valid integer (got 16.0)"),
    ('choices = [0.0, 1e-4]', 'choices = [1e300]',
     "search_space.l2.choices[0]: Input should be less than or equal to 1 (got 1e+300)"),
    ('choices = [0.0, 1e-4]', 'choices = [false, 1e-4]',
     "search_space.l2.choices[0]: Input should be a valid number (got False)"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'learning_rate = { type = "float", low = 1e-4, high = 1e300 }',
     "search_space.learning_rate.high: Input should be less than or equal to 1 (got 1e+300)"),
    ("subset = 2000 ", "subset = 3 ",
     "dataset.subset: 3 images give a test part of 0 at split_ratio 0.7, fewer than the 10 classes a "
     "stratified split needs (got 3)"),
    ("batch_size = 32", "batch_size = 65536",
     "training.batch_size: 65536 is larger than the 1400 training rows of the smallest split "
     "(dataset.subset 2000, split_ratio 0.7) (got 65536)"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.1, high = 0.7, step = 0.9 }',
     "search_space.dropout: step 0.9 is larger than the range 0.1..0.7"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'epochs = { type = "int", low = 1, high = 3, step = 1000000 }',
     "search_space.epochs: step 1000000 is larger than the range 1..3"),
    ('direction = "minimize"\n\n[[objectives]]\nmetric = "peak_memory_mb"',
     'direction = "minimize"\n\n[[objectives]]\nmetric = "peak_memory_mb"\nresolution = 1e-320',
     "objectives.3.resolution: Input should be greater than or equal to 0.000000001 (got 1e-320)"),
    ("seed = 0", "seed = 1.0", "sampler.seed: Input should be a valid integer (got 1.0)"),
    ("epochs = 1\n", "epochs = 1\nseed = 1.0\n", "training.seed: Input should be a valid integer (got 1.0)"),
    ("epochs = 1\n", 'epochs = "1"\n', "training.epochs: Input should be a valid integer (got '1')"),
    ('dropout = { type = "float", low = 0.1, high = 0.7 }', 'dropout = { type = "float", low = 0.1, high = 1.5 }',
     "search_space.dropout.high: Input should be less than 1 (got 1.5)"),
    ('epochs = { type = "int", low = 1, high = 2 }', 'learning_rate = { type = "categorical", choices = [0.0] }',
     "search_space.learning_rate.choices[0]: Input should be greater than 0 (got 0.0)"),
]


@pytest.mark.parametrize("old,new,message", BAD_VALUES, ids=[b[2][:45] for b in BAD_VALUES])
def test_bad_search_values_are_one_line_naming_file_field_and_value_and_create_nothing(main_here, old, new, message):
    assert old in SMOKE, old
    cfg = main_here.work.parent / "bad.toml"
    cfg.write_text(SMOKE.replace(old, new, 1))
    code, err = main_here(run.main, "--study", str(cfg), "--storage", f"sqlite:///{main_here.work / 'x.db'}")
    assert (code, err) == (2, f"error: {cfg}: {message}\n")
    assert os.listdir(main_here.work) == []


def test_a_data_dir_without_the_files_creates_nothing(tiny):
    empty = tiny.tmp / "empty"
    empty.mkdir()
    args = tiny.args(tiny.config())
    args[args.index("--data-dir") + 1] = str(empty)
    r = tiny.stand_in(*args)
    assert r.returncode == 1
    assert lines(r.stderr) == [f"error: fashion_mnist files not found in {empty}: apt-get install dataset-fashion-mnist, "
                               "or pass --data-dir DIR holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"]
    assert not tiny.db.exists()


def test_debug_shows_the_traceback(main_here):
    from search.errors import UsageError

    with pytest.raises(UsageError, match="unknown study 'nope'"):  # raised, not printed: Python shows the traceback
        run.main(["--study", "nope", "--debug"])


# ---------------------------------------------------------------- runs, resume and drift (stand-in trials)

def test_a_run_reaches_its_target_and_the_same_command_resumes_it(tiny):
    cfg = tiny.config(n_trials=2)
    r = tiny.stand_in(*tiny.args(cfg))
    assert r.returncode == 0, r.stderr
    trials = _trials(tiny.storage)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:  # each trial's values are those of its own parameters
        spec = {"params": t.user_attrs["resolved_params"], "n_classes": 10, "evaluation": "test",
                "reduce_classes": [0, 1, 2]}
        assert t.values[:2] == [measures(spec)["test_accuracy"], measures(spec)["test_roc_auc"]]
    assert "2/2 COMPLETE trials (2 this run; stopped by target)" in r.stderr
    again = tiny.stand_in(*tiny.args(cfg))
    assert again.returncode == 0 and "(0 this run" in again.stderr and len(_trials(tiny.storage)) == 2
    more = tiny.stand_in(*tiny.args(cfg, "--n-trials", "3"))
    assert more.returncode == 0 and [t.state for t in _trials(tiny.storage)] == [TrialState.COMPLETE] * 3


def test_default_storage_is_studies_db_in_the_working_directory(tiny):
    args = tiny.args(tiny.config(n_trials=1))
    del args[args.index("--storage"):args.index("--storage") + 2]
    r = tiny.stand_in(*args)
    assert r.returncode == 0, r.stderr
    assert len(_trials(f"sqlite:///{tiny.tmp / 'studies.db'}")) == 1
    assert (tiny.tmp / "studies-artifacts").is_dir()  # pictures beside the database


def test_resume_with_changed_settings_is_refused_and_changes_nothing(tiny):
    cfg = tiny.config(n_trials=1)
    assert tiny.stand_in(*tiny.args(cfg)).returncode == 0
    before = _sha(tiny.db)
    cfg.write_text(cfg.read_text().replace("high = 0.7", "high = 0.6").replace('"minimize"', '"maximize"', 1))
    r = tiny.stand_in(*tiny.args(cfg))
    assert r.returncode == 2
    (line,) = lines(r.stderr)[-1:]
    assert line.startswith("error: study 'tiny' was created with other settings (")
    assert "search_space.dropout.high: 0.7 -> 0.6" in line and "objectives" in line and "--study-name" in line
    assert _sha(tiny.db) == before
    # The suggested way out works: a new study beside the old one.
    assert tiny.stand_in(*tiny.args(cfg, "--study-name", "tiny-v2")).returncode == 0


def test_resume_with_other_data_or_weights_is_refused(tiny):
    cfg = tiny.config(n_trials=1)
    assert tiny.stand_in(*tiny.args(cfg)).returncode == 0
    before = _sha(tiny.db)
    other = write_fashion_dir(tiny.tmp / "other", seed=1)
    args = tiny.args(cfg)
    args[args.index("--data-dir") + 1] = str(other)
    r = tiny.stand_in(*args)
    assert r.returncode == 2 and "data_fingerprint" in lines(r.stderr)[-1]
    w = tiny.tmp / "w.h5"
    w.write_bytes(b"x")
    r = tiny.stand_in(*tiny.args(cfg, "--weights", str(w), "--study-name", "tiny"))
    assert r.returncode == 2 and 'backbone.weights: "random(seed=0)" -> "file:sha256=' in lines(r.stderr)[-1]
    assert _sha(tiny.db) == before


def test_resume_with_another_backend_is_refused_and_the_runtime_is_recorded(tiny):
    """Issue 10: time and memory of two backends never share a Pareto front."""
    cfg = tiny.config(n_trials=1)
    r = tiny.stand_in(*tiny.args(cfg, "--backend", "jax"))
    assert r.returncode == 0 and "trials train on Keras/jax" in r.stderr
    study = optuna.load_study(study_name="tiny", storage=tiny.storage)
    runtime = study.user_attrs[IDENTITY_ATTR]["runtime"]
    from search.runtime import STEPS_PER_CALL, package_version

    assert runtime["trial_backend"] == "jax" and runtime["extraction_backend"] == "tensorflow"
    assert runtime["keras"] == package_version("keras") and runtime["jax"] == package_version("jax")
    assert runtime["train_steps_per_call"] == str(STEPS_PER_CALL)  # training time depends on it
    assert study.get_trials()[0].user_attrs["keras_backend"] == "jax"
    before = _sha(tiny.db)
    r = tiny.stand_in(*tiny.args(cfg, "--backend", "tensorflow", "--n-trials", "2"))
    assert r.returncode == 2
    assert lines(r.stderr)[-1].startswith("error: study 'tiny' was created with other settings (")
    assert 'runtime.trial_backend: "jax" -> "tensorflow"' in lines(r.stderr)[-1]
    assert "error:" not in "\n".join(lines(r.stderr)[:-1]) and "Traceback" not in r.stderr
    assert _sha(tiny.db) == before and len(_trials(tiny.storage)) == 1


def test_a_read_only_database_is_refused_and_kept(tiny):
    cfg = tiny.config(n_trials=1)
    assert tiny.stand_in(*tiny.args(cfg)).returncode == 0
    before = _sha(tiny.db)
    tiny.db.chmod(0o444)
    r = tiny.stand_in(*tiny.args(cfg, "--n-trials", "2"))
    assert r.returncode == 1 and lines(r.stderr) == [f"error: --storage: database file {tiny.db} is read-only"]
    assert _sha(tiny.db) == before


# ---------------------------------------------------------------- the feature cache as the command meets it

def test_a_cache_damaged_after_the_command_started_is_never_used(tiny):
    """The trial process verifies the rows it reads: damage after the start-up check fails the run, stores nothing."""
    cfg = tiny.config(n_trials=2)
    proc = tiny.stand_in_popen(*tiny.args(cfg), seconds=3)
    try:
        wait_for(lambda: tiny.stand_in_runs(), 120, "the first trial process", proc)  # past the start-up check
        feats = np.load(tiny.entry / "features.npy", mmap_mode="r+")
        feats[:] = 0
        feats.flush()
        del feats
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 1, err
    assert lines(err)[-1].startswith(f"error: feature cache {tiny.entry} is damaged (rows 0-4095 fail their checksum); "
                                     "it was not used")
    assert "Traceback" not in err
    trials = _trials(tiny.storage)
    assert [t.state for t in trials] == [TrialState.FAIL] and trials[0].values is None


def test_a_valid_prebuilt_cache_in_a_read_only_directory_works(tiny):
    for p in (tiny.entry, tiny.cache_dir):
        p.chmod(0o555)
    try:
        r = tiny.stand_in(*tiny.args(tiny.config(n_trials=1)), prefix=as_user_without_overrides())
    finally:
        for p in (tiny.cache_dir, tiny.entry):
            p.chmod(0o755)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tiny.cache_dir.iterdir()) == [tiny.entry.name]  # no lock file written
    assert [t.state for t in _trials(tiny.storage)] == [TrialState.COMPLETE]


@pytest.mark.slow  # extracts the features again (~15 s)
def test_a_cache_damaged_before_the_start_is_rebuilt_with_a_warning(tiny):
    raw = bytearray((tiny.entry / "features.npy").read_bytes())
    raw[200] ^= 0xFF
    (tiny.entry / "features.npy").write_bytes(bytes(raw))
    r = tiny.stand_in(*tiny.args(tiny.config(n_trials=1)))
    assert r.returncode == 0, r.stderr
    assert f"warning: feature cache {tiny.entry} is damaged; rebuilding it" in r.stderr
    assert "features cached in" in r.stderr
    assert [t.state for t in _trials(tiny.storage)] == [TrialState.COMPLETE]


# ---------------------------------------------------------------- the real thing, on a real slice

ATTRS = {"test_accuracy", "test_precision", "test_recall", "test_f1", "test_roc_auc", "test_per_class_recall",
         "test_confusion_matrix", "train_time_s", "compile_time_s", "epoch_time_s", "cpu_time_s", "threads",
         "test_time_s", "peak_memory_mb", "trial_memory_mb", "baseline_memory_mb", "n_train", "n_test",
         "resolved_params", "keras_backend", "objective_split", "history"}


@pytest.mark.slow
@needs_real_fashion
def test_smoke_study_end_to_end_on_real_images(smoke_study):
    storage, r, tmp = smoke_study
    assert r.returncode == 0, r.stderr
    assert "Pareto-optimal trials of smoke (objectives on the test split)" in r.stdout
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["test_accuracy", "test_roc_auc", "train_time_s", "peak_memory_mb"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for t in trials:
        assert ATTRS <= set(t.user_attrs), ATTRS - set(t.user_attrs)
        assert not {"accuracy", "roc_auc", "f1"} & set(t.user_attrs)  # nothing without its split
        assert all(math.isfinite(v) for v in t.values)
        assert t.values[1] > 0.6  # random-init ResNet50 features of real images: far better than chance
        assert sum(map(sum, t.user_attrs["test_confusion_matrix"])) == t.user_attrs["n_test"]
        assert t.user_attrs["keras_backend"] == "jax" and t.user_attrs["objective_split"] == "test"
        assert 0 < t.user_attrs["trial_memory_mb"] < t.user_attrs["peak_memory_mb"]
    assert study.user_attrs[IDENTITY_ATTR]["backbone"]["weights"] == "random(seed=0)"
    assert study.user_attrs["search:data"]["n_images"] == 2000

    # Same command again: the target is met, nothing is added.
    again = run_cli("--study", "smoke", "--storage", storage, "--cache-dir", str(tmp / "cache"), cwd=tmp)
    assert again.returncode == 0, again.stderr
    assert "(0 this run" in again.stderr and len(optuna.load_study(study_name="smoke", storage=storage).trials) == 3


@pytest.mark.slow
def test_a_validation_study_names_attributes_and_pictures_by_split(tiny):
    """Issue 10: with evaluation = "validation" every measure and picture says its split; real trial."""
    cfg = tiny.config(n_trials=1, **{'evaluation = "test"': 'evaluation = "validation"'})
    r = tiny.run(*tiny.args(cfg))
    assert r.returncode == 0, r.stderr
    assert "objectives on the validation split" in r.stderr
    study = optuna.load_study(study_name="tiny", storage=tiny.storage)
    (t,) = study.get_trials()
    assert study.metric_names == ["val_accuracy", "val_roc_auc", "train_time_s", "peak_memory_mb"]
    # The objective is the validation split's accuracy; the held-out test accuracy is only stored beside it.
    assert t.values[0] == t.user_attrs["val_accuracy"] and "test_accuracy" not in study.metric_names
    assert t.user_attrs["val_time_s"] > 0 and t.user_attrs["test_time_s"] > 0
    assert sum(map(sum, t.user_attrs["val_confusion_matrix"])) == t.user_attrs["n_val"]
    assert sum(map(sum, t.user_attrs["test_confusion_matrix"])) == t.user_attrs["n_test"]
    from tests.conftest import trial_artifacts

    names = sorted(m["filename"] for m in trial_artifacts(t, compat.storage_of(study)))
    assert names == sorted(["val_confusion_matrix.png", "val_per_class_recall.png", "val_roc_curves.png",
                            "test_confusion_matrix.png", "test_per_class_recall.png", "test_roc_curves.png",
                            "learning_curves.png"])
    assert "artifact_error" not in t.user_attrs
