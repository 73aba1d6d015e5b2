"""Storage under concurrency: trials/s and storage-call latency for 1, 2, 4, 8 workers on a no-op objective.

    python -m benchmarks.storage_load [--trials-per-worker 30] [--workers 1,2,4,8]
        [--backends sqlite-default,sqlite-wal,journal,postgresql] [--postgres URL] [--out FILE.json]

Backends:
  sqlite-default  Optuna's RDBStorage on a SQLite file as it comes (rollback journal, 5 s busy timeout)
  sqlite-wal      the service's storage (search.study.open_storage): WAL + 300 s busy timeout
  journal         Optuna's JournalStorage on a JournalFileBackend file (no heartbeat: no crash recovery)
  postgresql      the service's storage on PostgreSQL (URL: --postgres or $SEARCH_TEST_POSTGRES;
                  each run gets a fresh database, dropped afterwards)

Each worker is its own process (spawned), opens its own storage, waits for a
common start, then runs ``--trials-per-worker`` trials of a no-op objective
(two suggestions, one user attribute) with a RandomSampler; heartbeat on for
the RDB storages, as in the service.  Every call the study makes on the
storage backend is timed.  Reported per (backend, workers): trials/s (COMPLETE
trials over the wall time of the whole run), p50/p95 storage-call latency,
errors raised by the storage, and trials left RUNNING.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

BACKENDS = ("sqlite-default", "sqlite-wal", "journal", "postgresql")
STUDY = "load"


def _open(backend: str, where: str):
    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if backend == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(where))
    if backend == "sqlite-default":
        from search.study import RetryCallback

        return optuna.storages.RDBStorage(where, heartbeat_interval=10, grace_period=30,
                                          heartbeat_stale_trial_callback=RetryCallback(max_retry=3))
    from search.storage import open_storage

    return open_storage(where, heartbeat_interval=10)


def _instrument(storage: Any, calls: list[float]) -> None:
    """Time every public storage method the study calls on this backend instance."""
    from optuna.storages import BaseStorage

    names = {n for n in dir(BaseStorage) if not n.startswith("_")} | {"record_heartbeat", "_get_stale_trial_ids"}
    for name in names:
        fn = getattr(storage, name, None)
        if not callable(fn):
            continue

        def timed(*a, __fn=fn, **k):
            t = time.perf_counter()
            try:
                return __fn(*a, **k)
            finally:
                calls.append(time.perf_counter() - t)

        setattr(storage, name, timed)


def _worker(backend: str, where: str, n_trials: int, start_at: float, out: Any) -> None:
    import optuna

    storage = _open(backend, where)
    calls: list[float] = []
    _instrument(storage, calls)
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=optuna.samplers.RandomSampler())

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("c", ["a", "b", "c"])
        trial.set_user_attr("note", "no-op")
        return x

    errors: list[str] = []
    while time.time() < start_at:
        time.sleep(0.005)
    t0 = time.time()
    for _ in range(n_trials):
        try:
            study.optimize(objective, n_trials=1)
        except Exception as e:  # noqa: BLE001 - counting what the storage does under load
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
    out.put({"t0": t0, "t1": time.time(), "calls": calls, "errors": errors})


def _pg_database(url: str) -> tuple[str, Any]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"search_load_{uuid.uuid4().hex[:8]}"
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(libpq, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def measure(backend: str, workers: int, trials_per_worker: int, tmp: Path, pg_url: str | None) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    drop = None
    if backend == "journal":
        where = str(tmp / f"journal-{workers}.log")
    elif backend == "postgresql":
        where, drop = _pg_database(pg_url)
    else:
        where = f"sqlite:///{tmp / f'{backend}-{workers}.db'}"
    try:
        optuna.create_study(study_name=STUDY, storage=_open(backend, where))
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        start_at = time.time() + 3.0 + 0.6 * workers  # every process imported and connected
        procs = [ctx.Process(target=_worker, args=(backend, where, trials_per_worker, start_at, out))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        results = [out.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join()
        trials = optuna.load_study(study_name=STUDY, storage=_open(backend, where)).get_trials(deepcopy=False)
    finally:
        if drop is not None:
            drop()
    calls = sorted(c for r in results for c in r["calls"])
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    errors = [e for r in results for e in r["errors"]]
    return {
        "backend": backend, "workers": workers, "trials_per_worker": trials_per_worker,
        "complete": complete, "running_left": sum(t.state == TrialState.RUNNING for t in trials),
        "errors": len(errors), "error_kinds": sorted(set(errors))[:3],
        "wall_s": round(wall, 2), "trials_per_s": round(complete / wall, 1),
        "storage_calls": len(calls),
        "p50_ms": round(1000 * calls[len(calls) // 2], 2) if calls else None,
        "p95_ms": round(1000 * calls[int(0.95 * (len(calls) - 1))], 2) if calls else None,
        "max_ms": round(1000 * calls[-1], 1) if calls else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| storage | workers | trials/s | p50 call (ms) | p95 call (ms) | max call (ms) | errors | left RUNNING |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['workers']} | {r['trials_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['max_ms']} | {r['errors']} | {r['running_left']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storage_load", description=__doc__.splitlines()[0])
    p.add_argument("--trials-per-worker", type=int, default=30)
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    p.add_argument("--postgres", default=os.environ.get("SEARCH_TEST_POSTGRES"),
                   help="PostgreSQL server URL (a user allowed to CREATE DATABASE); default $SEARCH_TEST_POSTGRES")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/storage_load.json"))
    a = p.parse_args(argv)
    backends = a.backends.split(",")
    if unknown := [b for b in backends if b not in BACKENDS]:
        p.error(f"--backends: unknown {', '.join(unknown)}")
    if "postgresql" in backends and not a.postgres:
        print("postgresql skipped: no --postgres URL and SEARCH_TEST_POSTGRES unset", file=sys.stderr)
        backends.remove("postgresql")
    counts = [int(n) for n in a.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="storage-load-") as tmp:
        for backend in backends:
            for n in counts:
                row = measure(backend, n, a.trials_per_worker, Path(tmp), a.postgres)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                             "load_avg_at_end": list(os.getloadavg())},
                                 "command": "python -m benchmarks.storage_load " + " ".join(argv or sys.argv[1:]),
                                 "rows": rows}, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
