"""``--workers N``: N worker processes on this machine against one study, one display, one summary.

The parent (``search.run --workers N``) validates, builds the feature cache
once and creates or resumes the study, then starts N workers.  A worker is
the same command plus the internal flag ``--worker``: the same optimize loop
(``search.study.optimize``), so N workers here behave exactly like N
``search.run`` commands on N machines sharing a ``--storage``.  Trials are
coordinated only through the storage: the target of COMPLETE trials is
shared, a dead worker's RUNNING trial is failed and retried with the same
parameters (at once when its process is seen dead on this host, else by
Optuna's heartbeat), and nothing else is scheduled here.

The parent polls the storage for its progress display, relays what workers
print, and on SIGINT/SIGTERM passes the signal on: each worker records its
running trial as failed-and-retriable and exits 130/143, and so does the
parent.  Workers die with the parent (PR_SET_PDEATHSIG -> SIGTERM).

``fast_trial`` is a stand-in for ``search.trial:run_trial`` (select it with
``SEARCH_TRIAL_FN=search.workers:fast_trial``) for concurrency tests and
benchmarks: it still runs in its own process, but sleeps instead of training.
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

WORKER_FLAG = "--worker"
POLL_S = 0.5
STOP_GRACE_S = 60.0


# ---------------------------------------------------------------- stand-in trial

def fast_trial(spec: dict[str, Any], report: Any) -> dict[str, Any]:
    """A trial in its own process that takes ``SEARCH_FAST_TRIAL_S`` seconds (default 0.2) and trains nothing.

    Returns the measures ``search.trial.run_trial`` returns, derived
    deterministically from the parameters, so that tests can check that each
    trial's values and attributes arrived; the confusion matrix and per-class
    recall (the inputs of the trial pictures) only with SEARCH_FAST_TRIAL_PICTURES=1.
    """
    import hashlib
    import json
    import random

    seconds = float(os.environ.get("SEARCH_FAST_TRIAL_S", "0.2"))
    n = spec["n_classes"]
    params = spec["params"]
    report(stage="training", epoch=0, epochs=1)
    time.sleep(seconds)
    seed = int(hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    per_test = 5
    right = [rng.randint(2, per_test) for _ in range(n)]
    cm = [[right[i] if j == i else (per_test - right[i] if j == (i + 1) % n else 0) for j in range(n)]
          for i in range(n)]
    recall = [r / per_test for r in right]
    acc = sum(right) / (per_test * n)
    from search.data import reduced_classes  # the classes run_trial averages reduced_recall over

    reduced = reduced_classes(params.get("profile", "paper"), n, tuple(spec["reduce_classes"]))
    report(stage="training", epoch=1, epochs=1, loss=1.0 - acc)
    result = {"accuracy": acc, "balanced_accuracy": acc, "precision": acc, "recall": acc, "f1": acc,
              "roc_auc": 0.5 + acc / 2, "worst_class_recall": min(recall),
              "reduced_recall": sum(recall[c] for c in reduced) / len(reduced),
              "train_time_s": seconds,
              "test_time_s": 0.0, "n_train": 10 * n, "n_test": per_test * n,
              "train_class_counts": [10] * n, "test_class_counts": [per_test] * n}
    if os.environ.get("SEARCH_FAST_TRIAL_PICTURES") == "1":
        # Drawing the two pictures costs the coordinating process ~1.5 s of CPU per trial,
        # far more than the trial itself: off unless asked for.
        result.update(per_class_recall=recall, confusion_matrix=cm)
    return result


# ---------------------------------------------------------------- parent

def worker_command(argv: list[str], index: int) -> list[str]:
    """Worker ``index``'s (1..N) command line: the parent's own, plus ``--worker INDEX``."""
    return [sys.executable, "-m", "search.run", *argv, WORKER_FLAG, str(index)]


def worker_sampler_config(config: Any, index: int) -> Any:
    """Worker ``index``'s config for its sampler: the seed plus ``index - 1``.

    With one seed, every worker of a seeded sampler would draw the same
    parameters.  Worker 1 keeps the config's seed.  The sampler seed is not
    part of the study's identity, so this changes nothing stored.
    """
    if index <= 1 or config.sampler.seed is None:
        return config
    return config.model_copy(update={"sampler": config.sampler.model_copy(
        update={"seed": config.sampler.seed + index - 1})})


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


def run_workers(args: Any, study: Any, display: Any, config: Any) -> int:
    """Start ``args.workers`` workers, show their common progress, and return the exit code."""
    from optuna.trial import TrialState

    from search import study as st
    from search.errors import Interrupted

    target = config.run.n_trials
    n = args.workers
    complete_before = st.counts(study)[TrialState.COMPLETE]
    retried = st.recover_dead_trials(study)
    # Opening the storage left two idle connections; polling from one thread needs one.
    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    if engine is not None:
        engine.dispose()
    pool = _adopt_display(display, n)
    pool.start(study, target, config.metric_names)

    workers: list[Worker] = []

    def relay(w: Worker) -> None:
        for line in w.proc.stderr:
            line = line.rstrip("\n")
            if line.startswith("error: "):
                w.errors.append(line.removeprefix("error: "))
            elif line.startswith("interrupted by ") or not line.strip():
                pass  # the parent reports the interruption once
            else:
                pool.console.print(f"worker {w.index}: {line}", markup=False, highlight=False)

    try:
        for i in range(n):
            proc = subprocess.Popen(worker_command(args.argv, i + 1), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
            workers.append(Worker(i + 1, proc))
        for w in workers:
            w.relay = threading.Thread(target=relay, args=(w,), daemon=True)
            w.relay.start()
        pool.message(f"{n} workers started (pids {', '.join(str(w.proc.pid) for w in workers)})")

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
            if failure is not None:
                _stop(workers, signal.SIGTERM)
                pool.stop()
                st.recover_dead_trials(study)
                print(f"error: worker {failure.index}: {failure.errors[-1]}", file=sys.stderr)
                return 1 if failure.rc == 1 else 2
            if all(w.rc is not None for w in workers):
                break
            time.sleep(POLL_S)
    except Interrupted as e:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        _stop(workers, e.signum)
        pool.stop()
        st.recover_dead_trials(study)  # a worker that had to be killed
        failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.number in running]
        done = st.counts(study)[TrialState.COMPLETE]
        what = (f"trial(s) {', '.join(map(str, sorted(failed)))} recorded as failed and queued for retry; "
                if failed else "")
        print(f"{e}: {what}{done}/{target} COMPLETE; run the same command to resume", file=sys.stderr)
        return e.exit_code
    pool.poll()
    pool.stop()

    done = st.counts(study)[TrialState.COMPLETE]
    if study.best_trials:
        from rich.console import Console

        from search.progress import pareto_table

        Console(width=None if sys.stdout.isatty() else 200).print(pareto_table(study, config.metric_names))
    codes = [w.rc for w in workers]
    stopped_by = ("target" if done >= target else "timeout" if config.run.timeout is not None
                  else "sampler has nothing left to try" if all(c == 0 for c in codes) else "lost workers")
    pool.message(f"{done}/{target} COMPLETE trials ({done - complete_before} this run by {n} workers; "
                 f"stopped by {stopped_by})" + (f"; retried lost trials {sorted(set(retried))}" if retried else ""))
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


# ---------------------------------------------------------------- display

def _adopt_display(display: Any, n_workers: int) -> Any:
    """Turn the run's Display into one fed by polling the storage instead of by the objective's events.

    (Defined here, not at import, so that ``fast_trial``'s process does not import rich and Optuna.)
    """
    from optuna.trial import TrialState

    from search.progress import Display

    class PoolDisplay(Display):
        def start(self, study, target, metric_names) -> None:
            self._announced: set[int] = set()
            self._ended = {t._trial_id for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
            super().start(study, target, metric_names)

        def poll(self) -> None:
            trials = self.study.get_trials(deepcopy=False)
            running = []
            for t in sorted(trials, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number)):
                if t.state == TrialState.RUNNING:
                    running.append(t.number)
                    if t._trial_id not in self._announced and "resolved_params" in t.user_attrs:
                        self._announced.add(t._trial_id)
                        self.on_event({"event": "trial", "number": t.number, "params": t.user_attrs["resolved_params"]})
                elif t.state.is_finished() and t._trial_id not in self._ended:
                    self._ended.add(t._trial_id)
                    if t.state == TrialState.PRUNED and t._trial_id not in self._announced:
                        continue  # a worker found the target already claimed: no news
                    took = (t.duration.total_seconds() if t.duration else 0.0) / max(1, self.n_workers)
                    self._trial_start = time.monotonic() - took  # Display's ETA: per-trial time / workers
                    self.on_trial_end(self.study, t)
            self.stage = f"{len(running)} running: trial(s) {', '.join(map(str, sorted(running)))}" if running else ""
            self._refresh()

    display.__class__ = PoolDisplay
    display.n_workers = n_workers
    return display
