"""``--workers N``: N worker processes on this machine against one study, one display, one summary.

The parent (``search.run --workers N``) validates, builds the feature cache
once and creates or resumes the study, then starts N workers.  A worker is
the same command plus the internal flag ``--worker``: the same optimize loop
(``search.study.lifecycle.optimize``), so N workers here behave exactly like N
``search.run`` commands on N machines sharing a ``--storage``.  Trials are
coordinated only through the storage: the target of COMPLETE trials is
shared, a dead worker's RUNNING trial is failed and retried with the same
parameters (at once when its process is seen dead on this host, else by
Optuna's heartbeat), and nothing else is scheduled here.

The parent polls the storage for its progress display, relays what workers
print, and on SIGINT/SIGTERM passes the signal on: each worker records its
running trial as failed-and-retriable and exits 130/143, and so does the
parent.  Workers die with the parent (PR_SET_PDEATHSIG -> SIGTERM).

Each worker's trial processes run on their own share of this machine's cores
(``worker_cpus``): N workers on C cores get about C/N each, so their times
measure their own work, not contention.  The storage URL reaches the workers
through their environment, never their command line (``ps`` shows that).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from search.errors import Interrupted
from search.progress import PoolDisplay, interrupted_line, print_pareto
from search.study import lifecycle as st, optuna_compat as compat
from search.study.snapshots import summary_text
from search.study.storage import STORAGE_ENV, dispose

WORKER_FLAG = "--worker"
POLL_S = 0.5
STOP_GRACE_S = 60.0


# ---------------------------------------------------------------- parent

def worker_command(argv: list[str], index: int) -> list[str]:
    """Worker ``index``'s (1..N) command line: the parent's own program and flags minus ``--storage``
    (passed in the environment), plus ``--worker INDEX``."""
    main = sys.modules["__main__"]
    module = getattr(getattr(main, "__spec__", None), "name", None) or "search.run"
    return [sys.executable, "-m", module, *_without_storage(argv), WORKER_FLAG, str(index)]


def _without_storage(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--storage":
            skip = True
        elif not a.startswith("--storage="):
            out.append(a)
    return out


def worker_cpus(index: int, n_workers: int) -> tuple[int, ...] | None:
    """The cores worker ``index`` (1..N) gives its trial processes; None (all) for a single process.

    C cores over N workers: worker i gets cores [(i-1)*C/N, i*C/N), at least one, wrapping
    round when there are more workers than cores.
    """
    if n_workers <= 1 or index < 1:
        return None
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // n_workers)
    start = ((index - 1) * per) % len(cores)
    return tuple(cores[(start + k) % len(cores)] for k in range(per))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    errors: list[str] = field(default_factory=list)
    reported: bool = False
    relay: threading.Thread | None = None

    @property
    def rc(self) -> int | None:
        return self.proc.poll()


def _describe_exit(rc: int) -> str:
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return f"stopped by {signal.Signals(rc - 128).name}"
    return f"exit code {rc}"


def run_workers(args: Any, study: Any, pool: PoolDisplay, config: Any, target: int, storage_url: str) -> int:
    """Start ``args.workers`` workers, show their common progress, and return the exit code."""
    complete_before = st.counts(study)[TrialState.COMPLETE]
    retried = st.recover_dead_trials(study)
    # Opening the storage left two idle connections; polling from one thread needs one.
    dispose(compat.storage_of(study))
    pool.start(study, target, config.metric_names)
    workers: list[Worker] = []
    try:
        workers += _start(args, {**os.environ, STORAGE_ENV: storage_url}, pool)
        failure = _watch(workers, study, pool, retried)
        if failure is not None:
            _stop(workers, signal.SIGTERM)
            pool.stop()
            st.recover_dead_trials(study)
            print(f"error: worker {failure.index}: {failure.errors[-1]}", file=sys.stderr)
            return 1 if failure.rc == 1 else 2
    except Interrupted as e:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        _stop(workers, e.signum)
        pool.stop()
        st.recover_dead_trials(study)  # a worker that had to be killed
        failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.number in running]
        print(interrupted_line(e, sorted(failed), st.counts(study)[TrialState.COMPLETE], target), file=sys.stderr)
        return e.exit_code
    pool.poll()
    pool.stop()
    return _summary(study, pool, config, target, workers, complete_before, retried)


def _start(args: Any, env: dict[str, str], pool: PoolDisplay) -> list[Worker]:
    """The worker processes, each with a thread relaying what it prints."""
    workers = []
    for i in range(args.workers):
        proc = subprocess.Popen(worker_command(args.argv, i + 1), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent, env=env)
        workers.append(Worker(i + 1, proc))
    for w in workers:
        w.relay = threading.Thread(target=_relay, args=(w, pool), daemon=True)
        w.relay.start()
    pool.message(f"{len(workers)} workers started (pids {', '.join(str(w.proc.pid) for w in workers)})")
    return workers


def _relay(w: Worker, pool: PoolDisplay) -> None:
    for line in w.proc.stderr:
        line = line.rstrip("\n")
        if line.startswith("error: "):
            w.errors.append(line.removeprefix("error: "))
        elif line.startswith("interrupted by ") or not line.strip():
            pass  # the parent reports the interruption once
        else:
            pool.console.print(f"worker {w.index}: {line}", markup=False, highlight=False)


def _watch(workers: list[Worker], study: Any, pool: PoolDisplay, retried: list[int]) -> Worker | None:
    """Poll until every worker has ended (None) or one failed with an error of its own (that worker)."""
    failure: Worker | None = None
    while True:
        pool.poll()
        for w in workers:
            rc = w.rc
            if rc is None or w.reported:
                continue
            w.reported = True
            if rc == 0:
                continue
            if rc in (1, 2) and w.relay is not None:
                w.relay.join(timeout=5)
            if rc in (1, 2) and w.errors:
                failure = failure or w
                continue
            # Lost (killed, or stopped by a signal not sent by us): its trials go to the others.
            lost = st.recover_dead_trials(study)
            retried += lost
            pool.message(f"worker {w.index} (pid {w.proc.pid}) {_describe_exit(rc)}"
                         + (f"; its trial(s) {', '.join(map(str, lost))} failed and queued for retry"
                            if lost else "") + f"; {sum(x.rc is None for x in workers)} worker(s) go on")
        if failure is not None or all(w.rc is not None for w in workers):
            return failure
        time.sleep(POLL_S)


def _summary(study: Any, pool: PoolDisplay, config: Any, target: int, workers: list[Worker],
             complete_before: int, retried: list[int]) -> int:
    done = st.counts(study)[TrialState.COMPLETE]
    print_pareto(study, config.metric_names)
    codes = [w.rc for w in workers]
    stopped_by = ("target" if done >= target else "timeout" if config.run.timeout is not None
                  else "sampler has nothing left to try" if all(c == 0 for c in codes) else "lost workers")
    pool.message(f"{done}/{target} COMPLETE trials ({done - complete_before} this run by {len(workers)} workers; "
                 f"stopped by {stopped_by})" + (f"; retried lost trials {sorted(set(retried))}" if retried else "")
                 + summary_text(study))
    if done < target and stopped_by == "lost workers":
        print(f"error: every worker ended before the target ({', '.join(_describe_exit(c) for c in codes)})",
              file=sys.stderr)
        return 1
    return 0


def _stop(workers: list[Worker], signum: int) -> None:
    """Pass ``signum`` on to the live workers, wait for them to record their trials, kill stragglers."""
    for w in workers:
        if w.rc is None:
            try:
                w.proc.send_signal(signum)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
    for w in workers:
        if w.relay is not None:
            w.relay.join(timeout=5)
