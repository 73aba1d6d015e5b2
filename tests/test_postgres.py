"""The service on a real PostgreSQL server: end to end, workers, a killed worker, 8 x 20 trials, connections.

The server's URL comes from ``SEARCH_TEST_POSTGRES`` (CI: ``eval "$(.ci/postgres.sh)"``).
Each test gets a database of its own, dropped afterwards, so that its
connection count is its own.  No mocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from .test_workers import check_study, fast_args, fast_env, scenario_exact_target, scenario_killed_worker

URL = os.environ.get("SEARCH_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not URL, reason="SEARCH_TEST_POSTGRES is not set: start a server with `eval \"$(.ci/postgres.sh)\"` (as root)")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(URL), autocommit=True) as con:
        con.execute(sql)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def pg():
    """A fresh database on the test server; its URL."""
    from sqlalchemy.engine import make_url

    name = f"search_t_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PeakConnections:
    """Polls pg_stat_activity (from another database) for the peak number of sessions on ``db``."""

    def __init__(self, db: str, every: float = 0.05):
        self.db, self.every, self.peak, self.samples = db, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(_libpq(URL), autocommit=True) as con:
            while not self._stop.is_set():
                n = con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db,)).fetchone()[0]
                self.peak = max(self.peak, n)
                self.samples += 1
                time.sleep(self.every)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_single_process_end_to_end_and_resume(tiny, pg):
    args = fast_args(tiny, 2, pg)
    r = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tiny.tmp, env=fast_env(0.1),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "study 'tiny' (new) in postgresql" in r.stderr and "://search:***@" in r.stderr  # password masked
    check_study(pg, "tiny", 2)
    # The same command with a larger target resumes the stored study.
    args[args.index(str(tiny.tmp / "tiny.toml"))] = str(tiny.config(n_trials=3))
    r = subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tiny.tmp, env=fast_env(0.1),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(resumed)" in r.stderr
    check_study(pg, "tiny", 3)


@pytest.mark.slow
def test_four_workers_complete_exactly_the_target_on_postgres(tiny, pg):
    scenario_exact_target(tiny, pg, workers=4, target=40)


@pytest.mark.slow
def test_killed_worker_trial_is_retried_by_another_worker_postgres(tiny, pg):
    scenario_killed_worker(tiny, pg)


@pytest.mark.slow
def test_eight_workers_160_trials_and_bounded_connections(tiny, pg):
    from sqlalchemy.engine import make_url

    workers, target = 8, 160
    with PeakConnections(make_url(pg).database) as conns:
        scenario_exact_target(tiny, pg, workers=workers, target=target, seconds=0.1, timeout=900)
    print(f"peak {conns.peak} connections for {workers} workers ({conns.samples} samples)")
    assert conns.samples > 50
    assert 0 < conns.peak <= 2 * workers + 2, f"peak {conns.peak} connections for {workers} workers"
