"""search.report.load: storages opened read-only, one-line errors, split-prefixed metrics old and new."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid

import optuna
import pytest

from search.errors import StorageError, UsageError
from search.report import load
from tests.test_report_fixtures import IMAGENET, RANDOM, add, attrs, new_study, search_study, sqlite


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_missing_sqlite_file_is_a_one_line_usage_error_and_nothing_is_created(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(UsageError) as e:
        load.load("x", sqlite(missing))
    assert str(e.value).startswith(f"--storage: no database at {missing}")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_url_is_refused_without_printing_its_password():
    with pytest.raises(UsageError) as e:
        load.open_readonly_url("postgresql//search:S3CRETPW@db/search")
    assert "S3CRETPW" not in str(e.value) and "malformed storage URL" in str(e.value)
    with pytest.raises(UsageError, match="unsupported database 'oracle'"):
        load.open_readonly_url("oracle://u:p@h/db")


def test_an_unknown_study_names_the_studies_there(tmp_path):
    search_study(sqlite(tmp_path / "s.db"), "alpha", infeasible=False, failed=False)
    with pytest.raises(UsageError) as e:
        load.load("nope", sqlite(tmp_path / "s.db"))
    assert str(e.value) == "--study: no study 'nope' in this storage; studies: alpha"


def test_a_sqlite_file_without_optuna_tables_is_a_one_line_storage_error_and_is_not_changed(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (x TEXT)")
    before = _sha(db)
    with pytest.raises(StorageError) as e:
        load.load("x", sqlite(db))
    assert "is not an Optuna storage" in str(e.value) and "\n" not in str(e.value)
    assert _sha(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_loading_cannot_change_the_study_and_leaves_the_database_file_unchanged(tmp_path, journal):
    db = tmp_path / "s.db"
    search_study(sqlite(db))
    if journal == "wal":  # what search.run leaves: the service's storages run in WAL mode
        with sqlite3.connect(db) as con:
            con.execute("PRAGMA journal_mode=WAL")
    before = _sha(db)
    d = load.load("search", sqlite(db))
    assert len(d.trials) == 10
    with pytest.raises(Exception):
        d.study.set_user_attr("changed", True)  # the storage is read-only: a report cannot alter a study
    d.close()
    assert _sha(db) == before


def test_a_path_with_url_characters_opens(tmp_path):
    where = tmp_path / "a #dir?"
    where.mkdir()
    db = where / "s%1.db"
    search_study(sqlite(db), infeasible=False, failed=False)
    assert len(load.load("search", sqlite(db)).complete) == 8


def test_new_studies_read_split_prefixed_metrics_and_their_context(tmp_path):
    study = search_study(sqlite(tmp_path / "s.db"), split="validation", weights=RANDOM)
    d = load.load("search", sqlite(tmp_path / "s.db"))
    assert d.objective_split == "validation"
    assert d.objective_names == ["val_accuracy", "val_roc_auc", "train_time_s", "peak_memory_mb"]
    t = d.complete[0]
    stored = study.trials[0].user_attrs
    assert d.value(t, "val_accuracy") == t.values[0] == stored["val_accuracy"]
    assert d.value(t, "test_accuracy") == stored["test_accuracy"] != stored["val_accuracy"]
    assert d.backends == ["jax"] and d.weights == RANDOM and not d.imagenet
    assert "validation split" in d.context and "jax" in d.context and RANDOM in d.context
    assert d.weights_warning.startswith(f"warning: backbone weights {RANDOM} are not ImageNet's")


def test_pareto_set_is_optunas_best_trials_without_the_infeasible_trial(tmp_path):
    study = search_study(sqlite(tmp_path / "s.db"))
    d = load.load("search", sqlite(tmp_path / "s.db"))
    assert [t.number for t in d.pareto] == sorted(t.number for t in study.best_trials)
    assert 8 not in {t.number for t in d.pareto}  # the trial over its memory budget
    assert {t.number for t in d.feasible} == set(range(8))


def _legacy(storage, evaluation):
    """A study as the service stored them before the split naming: unprefixed metrics, no split attribute."""
    extra = {"training": {"evaluation": evaluation}} if evaluation else {"training": {}}
    study = new_study(storage, "old", [("accuracy", "maximize"), ("train_time_s", "minimize")],
                      split_attr=False, extra_config=extra)
    for acc, time_s in ((0.7, 10.0), (0.8, 20.0)):
        a = {"accuracy": acc, "roc_auc": 0.9, "per_class_recall": [acc] * 10, "train_time_s": time_s,
             "keras_backend": "tensorflow"}
        if evaluation == "validation":
            a["test_accuracy"] = acc - 0.05
        add(study, [acc, time_s], a)
    return study


@pytest.mark.parametrize("evaluation, split", [("validation", "validation"), ("test", "test"), (None, "test")])
def test_old_studies_read_unprefixed_metrics_as_the_configs_evaluation_split(tmp_path, evaluation, split):
    _legacy(sqlite(tmp_path / "o.db"), evaluation)
    d = load.load("old", sqlite(tmp_path / "o.db"))
    prefix = "val_" if split == "validation" else "test_"
    assert d.objective_split == split
    assert d.objective_names == [prefix + "accuracy", "train_time_s"]
    first = d.complete[0]
    assert d.attrs(first)[prefix + "accuracy"] == 0.7 and d.attrs(first)[prefix + "per_class_recall"] == [0.7] * 10
    assert "accuracy" not in d.attrs(first)
    if split == "validation":
        assert d.attrs(first)["test_accuracy"] == pytest.approx(0.65)  # the held-out value stays the test one


POSTGRES = os.environ.get("SEARCH_TEST_POSTGRES")


def test_postgresql_is_opened_read_only():
    if not POSTGRES:
        if os.environ.get("CI") == "true":
            pytest.fail("SEARCH_TEST_POSTGRES is not set but CI installs PostgreSQL")
        pytest.skip("SEARCH_TEST_POSTGRES is not set: start a server with `eval \"$(.ci/postgres.sh)\"`")
    name = f"report-ro-{uuid.uuid4().hex[:8]}"
    writable = optuna.storages.RDBStorage(POSTGRES)
    study = new_study(writable, name, [("test_accuracy", "maximize")], weights=IMAGENET)
    add(study, [0.8], attrs(0.8, 0.9, 1.0, 100.0))
    try:
        d = load.load(name, POSTGRES)
        assert d.value(d.complete[0], "test_accuracy") == 0.8
        with pytest.raises(Exception):
            d.study.set_user_attr("changed", True)
        d.close()
    finally:
        optuna.delete_study(study_name=name, storage=writable)
        writable.engine.dispose()
