"""Optuna storages: check a URL before anything is created, open it for a run or read-only, never print a password.

SQLite (the default, ``sqlite:///studies.db``) gets WAL and a 300 s busy
timeout so several processes and the dashboard can share it; PostgreSQL and
MySQL a small connection pool per process.  Every storage has Optuna's
heartbeat, so a trial whose process died is failed and retried.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import optuna

from search.errors import StorageError, UsageError

DEFAULT_STORAGE = "sqlite:///studies.db"
STORAGE_ENV = "SEARCH_STORAGE"  # a URL with a password is better given here than on a command line (ps shows it)
# Connections per process on a database server: the main thread and Optuna's heartbeat thread each
# hold one (pool_size 2); a third concurrent use gets a short-lived extra one (max_overflow).  So a
# worker keeps 2 connections open; PostgreSQL's default max_connections=100 serves ~45 workers.
PG_POOL = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 3600}
SQLITE_TIMEOUT_S = 300


def mask(url: str) -> str:
    """``url`` with its password replaced by ``***``, for any text that is printed; works on malformed URLs too."""
    at = url.rfind("@")
    if at < 0:
        return url
    head = url[:at]
    start = head.find("//") + 2 if "//" in head else 0
    credentials = head[start:]
    if ":" not in credentials:
        return url
    return f"{head[:start]}{credentials.split(':', 1)[0]}:***{url[at:]}"


def storage_url(flag: str | None) -> str:
    """The storage to use: ``--storage``, else $SEARCH_STORAGE, else ``sqlite:///studies.db``."""
    return flag or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def parse_url(url: str):
    """``url`` as a SQLAlchemy URL of a supported database (the installed PostgreSQL driver chosen)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
        u.port  # noqa: B018 - a port that is not a number raises only here
    except (ArgumentError, ValueError):
        raise UsageError(f"--storage: malformed storage URL {mask(url)!r} (e.g. sqlite:///studies.db, "
                         "postgresql://user:pass@host/db)") from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(f"--storage: unsupported database {backend!r}; use sqlite, postgresql or mysql")
    if backend == "sqlite" and (not u.database or u.database == ":memory:"):
        raise UsageError("--storage: an in-memory SQLite database would lose the study; name a file")
    if backend == "postgresql" and u.get_driver_name() == "psycopg2":
        try:
            import psycopg2  # noqa: F401
        except ImportError:  # psycopg 3 is the dependency; the plain URL would ask for psycopg2
            u = u.set(drivername="postgresql+psycopg")
    return u


def check_url(url: str) -> str:
    """Validate ``url`` for a run (a SQLite file must be writable or creatable) without touching anything;
    return the URL SQLAlchemy should get."""
    u = parse_url(url)
    if u.get_backend_name() == "sqlite":
        path = Path(u.database)
        if not path.parent.is_dir():
            raise UsageError(f"--storage: directory {path.parent} does not exist")
        if path.exists() and not (path.stat().st_mode & 0o222):
            raise StorageError(f"--storage: database file {path} is read-only")
        if not path.exists() and not os.access(path.parent, os.W_OK):
            raise StorageError(f"--storage: cannot create {path}: directory is not writable")
    return u.render_as_string(hide_password=False)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return dict(PG_POOL)


def _enable_wal(path: str, url: str, wait_s: float = 60.0) -> None:
    """Switch the SQLite file to WAL.  Two processes switching at once can get "database is locked" at once
    (SQLite does not wait on its busy timeout there), so the switch is retried for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)
            try:  # closed at once: a connection left open holds its lock and blocks the other process's switch
                if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    con.execute("PRAGMA journal_mode=WAL")
            finally:
                con.close()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise StorageError(f"--storage: cannot open {mask(url)}: {e}") from None
            time.sleep(0.05 + random.random() * 0.2)
        except sqlite3.Error as e:
            raise StorageError(f"--storage: cannot open {mask(url)}: {e}") from None


def check_intact(path: Path) -> None:
    """Refuse a damaged SQLite file in one line, before anything reads or writes it.

    Optuna would otherwise fail later with a traceback ending in a misleading StorageInternalError.  The check
    runs on a read-only connection, so a damaged file is left exactly as it was for ``.recover``.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT_S)
        try:
            rows = con.execute("PRAGMA integrity_check(1)").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return  # a writer holds it for longer than the timeout: not damage, and Optuna will wait too
        if shutil.disk_usage(path.parent).free < 1 << 20:  # WAL's shared-memory file could not be made
            raise no_space(str(path)) from None
        raise StorageError(f"--storage: cannot open {path}: {e}") from None
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        problem = str(e)
    else:
        text = [ln for row in rows for ln in str(row[0]).splitlines() if ln.strip() and not ln.startswith("***")]
        problem = "" if rows == [("ok",)] else (text or ["not ok"])[0]
    if problem:
        raise StorageError(f"{path} is damaged (integrity_check: {problem}): restore a copy, or recover it with "
                           f"sqlite3's .recover")


def check_sqlite(url: str) -> None:
    """``check_intact`` for a SQLite URL; other databases check themselves."""
    u = parse_url(url)
    if u.get_backend_name() == "sqlite" and u.database:
        check_intact(Path(u.database))


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int | None = None,
                 max_retry: int = 2) -> optuna.storages.RDBStorage:
    """A storage for a run: created if missing, with heartbeat and the retry of stale trials."""
    from search.study.trials import RetryCallback

    url = check_url(url)
    check_sqlite(url)
    if url.startswith("sqlite"):
        # Several processes write this file: wait for locks instead of failing fast,
        # and let readers (the dashboard) proceed during writes (WAL).
        from sqlalchemy.engine import make_url

        _enable_wal(make_url(url).database, url)
    # Heartbeat and its retry callback are "experimental" (since v2.8): not news for a user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 3 * heartbeat_interval,
                heartbeat_stale_trial_callback=RetryCallback(max_retry=max_retry))
        except Exception as e:  # SQLAlchemy's errors differ per driver; all mean "cannot open"
            first = _first_line(e)
            # Processes starting at once on a new database race to create Optuna's tables;
            # the loser sees them half-made: once they exist, opening works.
            if attempt < 4 and any(m in first for m in ("already exists", "UniqueViolation", "UNIQUE constraint",
                                                         "duplicate key")):
                time.sleep(0.2 + 0.3 * attempt)
                continue
            raise StorageError(f"--storage: cannot open {mask(url)}: {mask(first)}") from None
    raise AssertionError("unreachable")


def open_existing(url: str) -> optuna.storages.RDBStorage:
    """A storage that must already exist (confirm, report, dashboard): nothing is created, no file, no table."""
    url = check_url(url)
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        path = Path(make_url(url).database)
        if not path.is_file():
            raise UsageError(f"--storage: no database at {path}; run `python -m search.run --study NAME` first "
                             f"or pass --storage")
        check_intact(path)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_table_creation=True)
    except Exception as e:  # driver-specific errors all mean "cannot open"
        raise StorageError(f"--storage: cannot open {mask(url)}: {mask(_first_line(e))}") from None


def open_readonly(url: str) -> optuna.storages.RDBStorage:
    """An existing storage opened read-only where the database allows it (report, dashboard).

    SQLite with ``mode=ro`` (a missing file is a UsageError and nothing is created); PostgreSQL with
    read-only transactions; MySQL, which has no such mode here, without creating tables.
    """
    u = parse_url(url)
    url = u.render_as_string(hide_password=False)
    engine_kwargs: dict[str, Any]
    if u.get_backend_name() == "sqlite":
        db = Path(u.database)
        if not db.is_file():
            raise UsageError(f"--storage: no database at {db}; run `python -m search.run --study NAME` first "
                             f"or pass --storage")
        check_intact(db)
        # A URI connection is the only way to open SQLite read-only; building it ourselves keeps
        # paths with '#', '?' or '%' intact, which a SQLAlchemy URL would re-interpret.
        uri = f"file:{urllib.parse.quote(str(db.resolve()))}?mode=ro"
        engine_kwargs = {"creator": lambda: sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT_S,
                                                             check_same_thread=False)}
    elif u.get_backend_name() == "postgresql":
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"options": "-c default_transaction_read_only=on"}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as e:  # drivers raise their own types; all mean "cannot read this database"
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = _first_line(cause)
        if "no such table" in first or ("relation" in first and "does not exist" in first):
            raise StorageError(f"--storage: {mask(url)} is not an Optuna storage ({mask(first)})") from None
        raise StorageError(f"--storage: cannot open {mask(url)}: {mask(first)}") from None


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """An existing study, or a one-line UsageError listing the studies there."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in storage.get_all_studies()) or "(none)"
        raise UsageError(f"--study: no study {name!r} in this storage; studies: {names}") from None


def dispose(storage: Any) -> None:
    """Close a storage's connections now (on a database server they would stay open until garbage collection)."""
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is not None:
        engine.dispose()


def no_space(where: str) -> StorageError:
    return StorageError(f"no space left on the device of {where}: free space and re-run the same command "
                        f"(what is stored is kept; the trial that could not be recorded runs again)")


def out_of_space(e: BaseException) -> str | None:
    """For an error caused (anywhere in its chain) by a full disk: the file it names, or "" when it names none;
    None for any other error.  SQLite says "database or disk is full", the OS ENOSPC."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e.filename or ""
        if "database or disk is full" in str(e) or "No space left on device" in str(e):
            return ""
        e = e.__cause__ or e.__context__
    return None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
