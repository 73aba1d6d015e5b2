"""Job functions for isolate.py tests; they run inside the child process."""

from __future__ import annotations

import os
import signal

import numpy as np


def allocate(spec, report):
    block = np.ones(spec["mb"] * 2**20, dtype=np.uint8)  # ones, so every page is touched
    report(stage="allocated", mb=spec["mb"])
    return {"sum": int(block[:: 4096].sum())}


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
