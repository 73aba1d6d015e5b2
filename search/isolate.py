"""Run a job in a fresh Python process and measure it.

Each trial (and the one-time feature extraction) runs in its own process, so
that Keras/TensorFlow memory that grows from trial to trial cannot leak into
the next one, a crash or out-of-memory kill fails only that trial, and the
peak memory objective belongs to that trial alone: it is the child's own
RSS high-water mark (``VmHWM``, reported by the child at its end; ``ru_maxrss``
from ``os.wait4`` only when the child could not report, as it may include the
parent's peak).

Protocol: the parent writes the job as JSON to the child's stdin; the child
writes JSON lines to its stdout (progress events, then one result or error).
The child's own stdout is redirected to stderr so library chatter cannot
corrupt the stream; stderr goes to a temporary file whose tail explains
crashes.  The child dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from search import errors

Event = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    result: Any
    peak_memory_mb: float
    start_memory_mb: float


def run_isolated(target: str, spec: dict[str, Any], on_event: Callable[[Event], None] = lambda e: None,
                 env: dict[str, str] | None = None, echo_stderr: bool = False) -> Outcome:
    """Call ``target`` ("module:function", taking (spec, report)) in a child process.

    Raises the child's SearchError subclass with its message, or TrialFailed
    when the child crashed or was killed.
    """
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                 "SEARCH_PARENT_PID": str(os.getpid()), **(env or {})}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "search.isolate"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=None if echo_stderr else err,
                                env=child_env, text=True)
        reaped = False
        try:
            proc.stdin.write(json.dumps({"target": target, "spec": spec}))
            proc.stdin.close()
            final: Event | None = None
            start_mb = 0.0
            for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "started":
                    start_mb = event["rss_mb"]
                elif event["event"] in ("result", "error"):
                    final = event
                else:
                    on_event(event)
            _, status, usage = os.wait4(proc.pid, 0)
            reaped = True
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if not reaped:
                # Interrupted in the parent: the child's work is lost either way; stop it now.
                proc.kill()
                proc.wait()
            proc.stdout.close()
        peak_mb = usage.ru_maxrss / 1024.0  # Linux reports kilobytes; may include the parent's peak
        if final is not None and final["event"] == "result":
            own = final.get("peak_rss_mb")
            return Outcome(final["result"], own if own is not None else peak_mb, start_mb)
        if final is not None:
            cls = getattr(errors, final["kind"], None)
            if isinstance(cls, type) and issubclass(cls, errors.SearchError):
                raise cls(final["message"])
            raise errors.TrialFailed(final["message"])
        err.seek(0)
        tail = " | ".join(line.strip() for line in err.read().strip().splitlines()[-3:])
        rc = proc.returncode
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
        raise errors.TrialFailed(f"trial process {how}{hint}" + (f": {tail}" if tail else ""))


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if str(os.getppid()) != os.environ.get("SEARCH_PARENT_PID", str(os.getppid())):
        os._exit(1)  # the parent died before prctl took effect


def _child_main() -> None:
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def emit(event: str, **fields: Any) -> None:
        out.write(json.dumps({"event": event, **fields}) + "\n")

    job = json.loads(sys.stdin.read())
    module, func = job["target"].split(":")
    fn = getattr(importlib.import_module(module), func)
    import psutil

    emit("started", rss_mb=psutil.Process().memory_info().rss / 2**20)
    try:
        result = fn(job["spec"], lambda **fields: emit("progress", **fields))
    except errors.SearchError as e:
        emit("error", kind=type(e).__name__, message=str(e))
        return
    except MemoryError:
        emit("error", kind="TrialFailed", message="out of memory (MemoryError)")
        return
    except Exception as e:  # noqa: BLE001 - any crash fails only this trial, with its reason
        import traceback

        traceback.print_exc()
        emit("error", kind="TrialFailed", message=f"{type(e).__name__}: {e}")
        return
    emit("result", result=result, peak_rss_mb=_own_peak_mb())


def _own_peak_mb() -> float | None:
    """This process's RSS high-water mark (VmHWM): per address space, so it starts afresh at exec.

    ``ru_maxrss`` from ``wait4`` is not enough alone: Linux carries the parent's
    high-water mark into a forked (or vforked) child across exec, so a child of a
    large parent reports the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


if __name__ == "__main__":
    _child_main()
