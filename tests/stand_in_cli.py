"""``python -m tests.stand_in_cli ARGS``: ``search.run`` whose trial processes run ``tests.stand_ins:fast_trial``.

Everything else is the real command: flags, storage, study, optimize loop, retries, signals, and with
``--workers N`` the workers, which re-run this same module.

``STAND_IN_BREAK_OPTUNA_HEARTBEAT=FILE`` breaks Optuna's own heartbeat thread in this process (and its
workers): its second ``record_heartbeat`` raises, which ends that thread (optuna/storages/_heartbeat.py
does not retry); FILE records that it happened.  The service's own heartbeat (search.study.trials.Heartbeat)
must then keep the trial alive.
"""

from __future__ import annotations

import os
import sys
import threading


def _break_optuna_heartbeat(marker: str) -> None:
    import optuna
    from sqlalchemy.exc import OperationalError

    real = optuna.storages.RDBStorage.record_heartbeat
    calls = {"n": 0}

    def record_heartbeat(self, trial_id: int) -> None:
        if not threading.current_thread().name.startswith("search-heartbeat"):
            calls["n"] += 1
            if calls["n"] == 2:
                with open(marker, "a") as f:
                    f.write(f"optuna heartbeat of trial id {trial_id} failed in pid {os.getpid()}\n")
                raise OperationalError("UPDATE trial_heartbeats", {}, Exception("database is locked"))
        return real(self, trial_id)

    optuna.storages.RDBStorage.record_heartbeat = record_heartbeat


def main(argv: list[str] | None = None) -> int:
    from search import run

    if os.environ.get("STAND_IN_BREAK_OPTUNA_HEARTBEAT"):
        _break_optuna_heartbeat(os.environ["STAND_IN_BREAK_OPTUNA_HEARTBEAT"])
    return run.main(argv, trial_target="tests.stand_ins:fast_trial")


if __name__ == "__main__":
    sys.exit(main())
