"""Job functions for search.isolate tests; they run inside the child process."""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def allocate(spec, report):
    block = np.ones(spec["mb"] * 2**20, dtype=np.uint8)  # ones, so every page is touched
    report(stage="allocated", mb=spec["mb"])
    return {"sum": int(block[:: 4096].sum())}


def allocate_after_baseline(spec, report):
    """What a trial does: mark the baseline once ready, then allocate ``mb`` (after ``before_mb`` ahead of it)."""
    from search import isolate

    ahead = np.ones(spec.get("before_mb", 0) * 2**20, dtype=np.uint8)
    isolate.mark_baseline()
    block = np.ones(spec["mb"] * 2**20, dtype=np.uint8)
    return {"sum": int(block[:: 4096].sum()) + int(ahead[:: 4096].sum())}


def crash(spec, report):
    raise ValueError("boom in the trial")


def die(spec, report):
    os.kill(os.getpid(), signal.SIGKILL)


def data_error(spec, report):
    from search.errors import DataError

    raise DataError("no such data")


def chatter(spec, report):
    print("library noise on stdout")
    return {"ok": True}


def sleep(spec, report):
    with open(spec["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(spec["seconds"])
    return {"slept": spec["seconds"]}


def burn(spec, report):
    """Busy for ``seconds`` of wall time; report the cores and thread settings the process got."""
    end = time.perf_counter() + spec["seconds"]
    x = 0
    while time.perf_counter() < end:
        x += 1
    return {"cores": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS"),
            "tf_intra": os.environ.get("TF_NUM_INTRAOP_THREADS")}


WARMED: dict[str, float] = {}


def warm_up():
    """Called by a process started ahead of its job (search.isolate's spare), before the job arrives."""
    WARMED["at"] = time.time()


def whoami(spec, report):
    """Says when this process was warmed up and when its job began, and offers the next process a head start."""
    began = time.time()
    report(stage="done training", spare=True)
    time.sleep(spec.get("linger_s", 0.0))
    return {"pid": os.getpid(), "warmed_at": WARMED.get("at"), "began": began}
