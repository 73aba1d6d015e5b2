"""Run a job in a fresh Python process and measure it.

Each trial (and the one-time feature extraction) runs in its own process, so
that Keras memory that grows from trial to trial cannot leak into the next
one, a crash or out-of-memory kill fails only that trial, and time and memory
belong to that trial alone:

- ``peak_memory_mb``: the child's own RSS high-water mark (``VmHWM``, reported by
  the child at its end; ``ru_maxrss`` from ``os.wait4`` only when the child could
  not report, as Linux carries the parent's peak into it);
- ``trial_memory_mb``: the peak above the baseline the job marks with
  ``mark_baseline()`` once its interpreter and backend are loaded (the kernel's
  high-water mark is reset there: ``/proc/self/clear_refs``);
- ``cpu_time_s``: the child's user + system time (``wait4``);
- ``cpus``: the cores the child may run on (``sched_setaffinity``), so N workers
  on C cores each get about C/N instead of all competing for all; thread pools
  (XLA, TensorFlow, BLAS, OpenMP) size themselves to the affinity.

Protocol: the parent writes the job as JSON to the child's stdin; the child
writes JSON lines to its stdout (progress events, then one result or error).
The child's own stdout is redirected to stderr so library chatter cannot
corrupt the stream; stderr goes to a temporary file whose tail explains
crashes.  The child dies with its parent (PR_SET_PDEATHSIG); a child past its
``timeout`` is killed and the trial fails with kind "timeout".
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from search import errors

Event = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    result: Any
    peak_memory_mb: float
    start_memory_mb: float
    baseline_memory_mb: float | None = None  # RSS where the job marked its baseline (None: it did not)
    trial_memory_mb: float | None = None     # peak above that baseline
    cpu_time_s: float = 0.0


def thread_env(n: int) -> dict[str, str]:
    """Environment that sizes the thread pools of BLAS/OpenMP and TensorFlow to ``n`` threads."""
    return {"OMP_NUM_THREADS": str(n), "OPENBLAS_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n),
            "TF_NUM_INTRAOP_THREADS": str(n), "TF_NUM_INTEROP_THREADS": "1"}


@dataclass
class _Child:
    proc: subprocess.Popen
    err: Any  # the temporary file that holds its stderr


# Started children waiting for their job, per (target, environment, stderr, cores): see ``prestart``.
# Two wait: the one the next job takes warmed up during an earlier job's last steps and is ready, and
# the other warms up now.  With one, every trial waited for its process (0.8-1.0 s, measured): warming
# up (Keras and JAX, 3.2 s beside the finishing trial) takes longer than a trial's last steps (~2 s).
SPARES = 2
_spares: dict[tuple, list[_Child]] = {}


def _start(target: str, child_env: dict[str, str], echo_stderr: bool, affinity: list[int] | None) -> _Child:
    err = tempfile.TemporaryFile("w+")
    # The target travels on the command line so that the child imports it (and warms it up) before it
    # waits for its job: a started spare is ready when the job comes.
    proc = subprocess.Popen([sys.executable, "-m", "search.isolate", target], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=None if echo_stderr else err, env=child_env, text=True)
    if affinity:
        # Set at once, while the child is still starting Python: before any thread pool exists.
        # (Not preexec_fn: forking with the heartbeat thread alive makes that unsafe.)
        try:
            os.sched_setaffinity(proc.pid, affinity)
        except OSError:
            pass  # it already ended; its outcome says why
    return _Child(proc, err)


def _discard(child: _Child) -> None:
    child.proc.kill()
    child.proc.wait()
    child.err.close()


def _discard_spares() -> None:
    for waiting in _spares.values():
        for child in waiting:
            _discard(child)
    _spares.clear()


def _take_spare(key: tuple) -> _Child | None:
    """The longest-waiting started child for ``key`` that is still alive (it warmed up first)."""
    waiting = _spares.get(key, [])
    while waiting:
        child = waiting.pop(0)
        if child.proc.poll() is None:
            return child
        _discard(child)
    return None


atexit.register(_discard_spares)


def run_isolated(target: str, spec: dict[str, Any], on_event: Callable[[Event], None] = lambda e: None,
                 env: dict[str, str] | None = None, echo_stderr: bool = False,
                 cpus: Sequence[int] | None = None, timeout: float | None = None, prestart: bool = False) -> Outcome:
    """Call ``target`` ("module:function", taking (spec, report)) in a child process.

    ``prestart``: when the job reports an event with ``spare=True`` (a trial: its training is done), start
    processes for the next calls with the same target, environment and cores until ``SPARES`` wait, so
    that their interpreter and imports (seconds) overlap this job's last steps instead of a job's time.
    Raises the child's SearchError subclass with its message, or TrialFailed
    (kind "killed" or "timeout") when the child crashed, was killed or ran past ``timeout`` seconds.
    """
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                 "SEARCH_PARENT_PID": str(os.getpid()), **(thread_env(len(cpus)) if cpus else {}), **(env or {})}
    affinity = sorted(cpus) if cpus else None
    key = (target, tuple(sorted(child_env.items())), echo_stderr, tuple(affinity or ()))
    child = _take_spare(key) or _start(target, child_env, echo_stderr, affinity)
    proc, err = child.proc, child.err
    timed_out = threading.Event()
    timer = None
    if timeout is not None:
        def _kill() -> None:
            timed_out.set()
            proc.kill()
        timer = threading.Timer(timeout, _kill)
        timer.daemon = True
        timer.start()
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
                if prestart and event.pop("spare", False):
                    waiting = _spares.setdefault(key, [])
                    while len(waiting) < SPARES:
                        waiting.append(_start(target, child_env, echo_stderr, affinity))
                on_event(event)
        _, status, usage = os.wait4(proc.pid, 0)
        reaped = True
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if timer is not None:
            timer.cancel()
        if not reaped:
            # Interrupted in the parent: the child's work is lost either way; stop it now.
            proc.kill()
            proc.wait()
        proc.stdout.close()
    try:
        return _outcome(final, usage, start_mb, proc.returncode, err, timed_out.is_set(), timeout)
    finally:
        err.close()


def _outcome(final: Event | None, usage: Any, start_mb: float, rc: int, err: Any, timed_out: bool,
             timeout: float | None) -> Outcome:
    """The child's result, or the error it reported, or why it ended without one."""
    if timed_out:
        raise errors.TrialFailed(f"timed out after {timeout:.0f} s", kind="timeout")
    cpu_s = usage.ru_utime + usage.ru_stime
    if final is not None and final["event"] == "result":
        own = final.get("peak_rss_mb")
        return Outcome(final["result"], own if own is not None else usage.ru_maxrss / 1024.0, start_mb,
                       final.get("baseline_rss_mb"), final.get("trial_rss_mb"), cpu_s)
    if final is not None:
        cls = getattr(errors, final["kind"], None)
        if isinstance(cls, type) and issubclass(cls, errors.TrialFailed):
            raise cls(final["message"], kind=final.get("fail_kind", "error"))
        if isinstance(cls, type) and issubclass(cls, errors.SearchError):
            raise cls(final["message"])
        raise errors.TrialFailed(final["message"])
    err.seek(0)
    tail = " | ".join(line.strip() for line in err.read().strip().splitlines()[-3:])
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
    hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
    raise errors.TrialFailed(f"trial process {how}{hint}" + (f": {tail}" if tail else ""),
                             kind="killed" if rc < 0 else "error")


# ---------------------------------------------------------------- inside the child

_memory: dict[str, float] = {}


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def can_reset_peak() -> bool:
    """Reset this process's memory high-water mark to its current RSS; False where the kernel does not allow it
    (then ``trial_memory_mb`` cannot be measured)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def mark_baseline() -> None:
    """Called by a job once it is ready to work: RSS now is its baseline; the peak counts from here."""
    _memory["pre_peak"] = _status_mb("VmHWM") or 0.0
    _memory["baseline"] = _status_mb("VmRSS") or 0.0
    _memory["reset"] = 1.0 if can_reset_peak() else 0.0


def _peaks() -> dict[str, float | None]:
    """The process's peak (VmHWM, across any reset), its baseline and the peak above it."""
    hwm = _status_mb("VmHWM")
    if not _memory or hwm is None:
        return {"peak_rss_mb": hwm}
    since = hwm if _memory["reset"] else None  # without a reset VmHWM may predate the baseline
    return {"peak_rss_mb": max(hwm, _memory["pre_peak"]), "baseline_rss_mb": _memory["baseline"],
            "trial_rss_mb": None if since is None else max(0.0, since - _memory["baseline"])}


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

    if os.environ.get("KERAS_BACKEND") in ("jax", "torch"):
        # keras.utils.set_random_seed imports TensorFlow whenever it is installed, only to seed it:
        # +1.8 s and +420 MB in every JAX trial (measured).  A job on another backend never needs it.
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
    if len(sys.argv) > 1:  # the target, known before the job: import and warm it up while the job is not here yet
        warm_up = getattr(importlib.import_module(sys.argv[1].split(":")[0]), "warm_up", None)
        if warm_up is not None:
            warm_up()
    job = json.loads(sys.stdin.read())
    module, func = job["target"].split(":")
    fn = getattr(importlib.import_module(module), func)
    emit("started", rss_mb=_status_mb("VmRSS") or 0.0)
    try:
        result = fn(job["spec"], lambda **fields: emit("progress", **fields))
    except errors.SearchError as e:
        emit("error", kind=type(e).__name__, message=str(e), fail_kind=getattr(e, "kind", None))
    except MemoryError:
        emit("error", kind="TrialFailed", message="out of memory (MemoryError)", fail_kind="killed")
    except Exception as e:  # noqa: BLE001 - any crash fails only this trial, with its reason
        import traceback

        traceback.print_exc()
        emit("error", kind="TrialFailed", message=f"{type(e).__name__}: {e}")
    else:
        # The job marked its baseline in the imported module search.isolate, not in this __main__ copy.
        emit("result", result=result, **importlib.import_module("search.isolate")._peaks())
    # Everything is said: skip the interpreter's teardown of Keras and its backend (0.5-0.7 s a trial).
    out.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _child_main()
