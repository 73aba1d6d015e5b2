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


def head_in_stages(spec, report):
    """Train the test head up to ``spec["epochs"]``; from ``spec["resume"]`` (a checkpoint file) if given, and
    stopping at ``spec["pause"]`` with a checkpoint written to ``spec["save"]`` if given.  Returns the weights."""
    from pathlib import Path

    from search.training import head

    rng = np.random.default_rng(0)
    y = np.arange(600) % 5
    x = (rng.normal(size=(5, 12))[y] * 2 + rng.normal(size=(600, 12))).astype(np.float32)
    p = head.HeadParams(units=16, dropout=0.5, l1=0.0, l2=1e-4, learning_rate=3e-3, batch_size=16,
                        epochs=spec["epochs"], handling=spec.get("handling", "none"))
    resume = head.Checkpoint.load(Path(spec["resume"])) if spec.get("resume") else None
    pause = spec.get("pause")
    model = head.build_head(12, 5, p, seed=3)
    r = head.fit(model, x, y, p, 3, after_epoch=(lambda e, m: e >= pause) if pause else None, resume=resume,
                 checkpoint=bool(spec.get("save")))
    if spec.get("save"):
        r.checkpoint.save(Path(spec["save"]))
    return {"weights": [w.tolist() for w in model.get_weights()], "epochs_run": r.epochs_run,
            "train_time_s": r.train_time_s, "loss": r.history["loss"]}
