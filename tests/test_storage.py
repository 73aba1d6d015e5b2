"""search.study.storage: URLs checked before anything is created, passwords never printed, storages that must exist
are opened without creating anything."""

from __future__ import annotations

import sqlite3

import optuna
import pytest

from search.errors import StorageError, UsageError
from search.study import storage as sto

SECRET = "S3CRETPW"


@pytest.mark.parametrize("url,masked", [
    ("postgresql://search:S3CRETPW@db/search", "postgresql://search:***@db/search"),
    ("postgresql//search:S3CRETPW@db/search", "postgresql//search:***@db/search"),  # malformed: no colon
    ("postgresql://u:S3CRETPW@db:notaport/x", "postgresql://u:***@db:notaport/x"),
    ("mysql://u:S3CRET@PW@h/db", "mysql://u:***@h/db"),  # an @ inside the password
    ("search:S3CRETPW@db/search", "search:***@db/search"),  # no scheme at all
    ("postgresql://:S3CRETPW@h/db", "postgresql://:***@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("sqlite:///studies.db", "sqlite:///studies.db"),
])
def test_mask_hides_the_password_of_any_url(url, masked):
    assert sto.mask(url) == masked
    assert "S3CRET" not in sto.mask(url)


@pytest.mark.parametrize("url,message", [
    ("postgresql//search:S3CRETPW@db/search", "--storage: malformed storage URL 'postgresql//search:***@db/search'"),
    ("postgresql://u:S3CRETPW@db:notaport/x", "--storage: malformed storage URL 'postgresql://u:***@db:notaport/x'"),
    ("not a url", "--storage: malformed storage URL 'not a url'"),
    ("redis://u:S3CRETPW@h/0", "--storage: unsupported database 'redis'; use sqlite, postgresql or mysql"),
    ("sqlite://", "--storage: an in-memory SQLite database would lose the study; name a file"),
    ("sqlite:///:memory:", "--storage: an in-memory SQLite database would lose the study"),
    ("sqlite:////no/such/dir/x.db", "--storage: directory /no/such/dir does not exist"),
])
def test_bad_urls_are_one_usage_error_without_the_password(url, message):
    with pytest.raises(UsageError) as e:
        sto.check_url(url)
    assert str(e.value).startswith(message) and SECRET not in str(e.value) and "\n" not in str(e.value)


def test_read_only_database_file_is_refused(tmp_path):
    db = tmp_path / "ro.db"
    db.write_bytes(b"")
    db.chmod(0o444)
    with pytest.raises(StorageError, match=f"--storage: database file {db} is read-only"):
        sto.check_url(f"sqlite:///{db}")


def test_postgres_urls_get_the_installed_driver():
    import sqlalchemy

    engine = sqlalchemy.create_engine(sto.check_url("postgresql://u:p@h/db"))  # ImportError without a driver
    assert engine.dialect.driver in ("psycopg", "psycopg2")


def test_storage_is_the_flag_else_the_environment_else_studies_db(monkeypatch):
    monkeypatch.delenv(sto.STORAGE_ENV, raising=False)
    assert sto.storage_url(None) == "sqlite:///studies.db"
    monkeypatch.setenv(sto.STORAGE_ENV, "postgresql://u:p@h/db")
    assert sto.storage_url(None) == "postgresql://u:p@h/db"
    assert sto.storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_run_storage_is_shared_safely_by_processes(tmp_path):
    db = tmp_path / "s.db"
    storage = sto.open_storage(f"sqlite:///{db}", heartbeat_interval=2)
    assert storage.get_heartbeat_interval() == 2 and storage.grace_period == 6  # stale after 3 silent beats
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # readers never block the run
    sto.dispose(storage)


def test_a_wal_switch_refused_at_once_by_another_process_is_retried(tmp_path, monkeypatch):
    """Two processes opening one new file at once: SQLite refuses one switch to WAL at once ("database is
    locked", without waiting on its busy timeout), which once failed a concurrent search.confirm."""
    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    real_connect, refusals = sqlite3.connect, [2]

    class Busy:
        def __init__(self, con):
            self.con = con

        def execute(self, sql):
            if sql.startswith("PRAGMA journal_mode=") and refusals[0]:
                refusals[0] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self.con.execute(sql)

        def close(self):
            self.con.close()

    monkeypatch.setattr(sto.sqlite3, "connect", lambda *a, **k: Busy(real_connect(*a, **k)))
    sto.open_storage(f"sqlite:///{db}")
    assert refusals == [0]
    monkeypatch.undo()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_storage_that_must_exist_is_never_created(tmp_path):
    missing = tmp_path / "studies.db"
    with pytest.raises(UsageError, match=f"--storage: no database at {missing}; run `python -m search.run"):
        sto.open_existing(f"sqlite:///{missing}")
    assert list(tmp_path.iterdir()) == []  # no file, no -wal, no -shm


def test_an_unknown_study_lists_the_studies_there(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    for name in ("alpha", "beta"):
        optuna.create_study(study_name=name, storage=url)
    storage = sto.open_existing(url)
    assert sto.load_study(storage, "beta").study_name == "beta"
    with pytest.raises(UsageError, match="^--study: no study 'gamma' in this storage; studies: alpha, beta$"):
        sto.load_study(storage, "gamma")


def test_an_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(StorageError) as e:
        sto.open_storage(f"postgresql://u:{SECRET}@127.0.0.1:1/db")
    assert str(e.value).startswith("--storage: cannot open postgresql://u:***@127.0.0.1:1/db: ")
    assert SECRET not in str(e.value) and "\n" not in str(e.value)
