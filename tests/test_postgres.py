"""The service on a real PostgreSQL server: a run and its resume, workers, a killed worker, 8 x 20 trials with
bounded connections, the password never printed nor on a command line.

What is real: the server (``SEARCH_TEST_POSTGRES``; CI starts one with ``.ci/postgres.sh``), the command
(``search.run`` flags, study, optimize loop, retries, ``--workers``), Optuna's RDB storage and heartbeats,
and the connections counted in ``pg_stat_activity``.  What is not: the trial, which is the stand-in
(``tests.stand_in_cli``: a process that sleeps instead of training), except in the one test that says
"real trial".  Each test gets a database of its own, dropped afterwards, so its connections are its own.
Without a server these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study import optuna_compat as compat

from .conftest import lines, requires, stop, wait_for
from .test_workers import check_study, running_trials, scenario_exact_target, scenario_killed_worker

pytestmark = pytest.mark.requires("postgres")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(requires("postgres")), autocommit=True) as con:
        con.execute(sql)


@pytest.fixture
def pg():
    """A fresh database on the test server; its URL (with the server's password)."""
    from sqlalchemy.engine import make_url

    url = requires("postgres")
    name = f"search_t_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password or ""


class PeakConnections:
    """Polls pg_stat_activity (from another database) for the peak number of sessions on ``db``."""

    def __init__(self, db: str, every: float = 0.05):
        self.db, self.every, self.peak, self.samples = db, every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(_libpq(requires("postgres")), autocommit=True) as con:
            while not self._stop.is_set():
                n = con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db,)).fetchone()[0]
                self.peak = max(self.peak, n)
                self.samples += 1
                time.sleep(self.every)

    def __enter__(self) -> "PeakConnections":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _args(tiny, url: str, n_trials: int, *extra: str) -> list[str]:
    args = tiny.args(tiny.config(n_trials=n_trials), "--heartbeat", "1", "--artifact-dir",
                     str(tiny.tmp / "pictures"), *extra)
    args[args.index("--storage") + 1] = url
    return args


def test_a_run_and_its_resume_never_print_the_password(pg, tiny):
    r = tiny.stand_in(*_args(tiny, pg, 2))
    assert r.returncode == 0, r.stderr[-3000:]
    secret = _password(pg)
    assert "study 'tiny' (new) in postgresql" in r.stderr and ":***@" in r.stderr
    assert f":{secret}@" not in r.stderr + r.stdout
    check_study(pg, "tiny", 2, 0.2)
    study = optuna.load_study(study_name="tiny", storage=pg)
    assert study.user_attrs["search:artifact_dir"] == str((tiny.tmp / "pictures").resolve())  # fixed at creation
    r = tiny.stand_in(*_args(tiny, pg, 3))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(resumed)" in r.stderr
    check_study(pg, "tiny", 3, 0.2)


def test_the_storage_url_with_its_password_is_on_no_workers_command_line(pg, tiny):
    proc = tiny.stand_in_popen(*_args(tiny, pg, 4, "--workers", "2"), seconds=2)
    secret = _password(pg)
    try:
        both = wait_for(lambda: len(running_trials(pg, "tiny")) == 2 and running_trials(pg, "tiny"), 120,
                        "both workers in a trial", proc)
        for t in both:
            pid = t.system_attrs["search:owner"]["pid"]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert "--worker" in cmdline and secret not in cmdline and "postgresql" not in cmdline
        out, err = proc.communicate(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert f":{secret}@" not in err + out
    check_study(pg, "tiny", 4, 2)


def test_an_unknown_study_on_the_server_is_one_line(pg, main_here):
    from search import confirm

    optuna.create_study(study_name="other", storage=pg)
    code, err = main_here(confirm.main, "--study", "tiny", "--storage", pg)
    assert (code, lines(err)) == (2, ["error: --study: no study 'tiny' in this storage; studies: other"])


@pytest.mark.slow
def test_four_workers_complete_exactly_the_target_on_postgres(pg, tiny):
    scenario_exact_target(tiny, pg, n_workers=4, target=40)


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_by_another_worker_postgres(pg, tiny):
    scenario_killed_worker(tiny, pg)


@pytest.mark.slow
def test_eight_workers_160_trials_and_bounded_connections(pg, tiny):
    from sqlalchemy.engine import make_url

    n_workers, target = 8, 160
    with PeakConnections(make_url(pg).database) as conns:
        scenario_exact_target(tiny, pg, n_workers=n_workers, target=target, seconds=0.1, timeout=1200)
    assert conns.samples > 50
    assert 0 < conns.peak <= 2 * n_workers + 2, f"peak {conns.peak} connections for {n_workers} workers"


@pytest.mark.slow
def test_a_real_trial_on_postgres_stores_its_measures_and_pictures(pg, tiny):
    """Real trial: the Keras head on the cached features, its pictures in the recorded artifact directory."""
    r = tiny.run(*_args(tiny, pg, 1))
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=pg)
    (t,) = study.get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["keras_backend"] == "jax"
    assert sum(map(sum, t.user_attrs["test_confusion_matrix"])) == t.user_attrs["n_test"]
    from tests.conftest import trial_artifacts

    metas = trial_artifacts(t, compat.storage_of(study))
    assert len(metas) == 4 and all((tiny.tmp / "pictures" / m["artifact_id"]).is_file() for m in metas)
    assert os.environ.get("SEARCH_STORAGE") is None  # nothing leaked into this process's environment
