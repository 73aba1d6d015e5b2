"""``--workers N`` and several commands on one study: exactly the target, no trial lost, each worker's trial
processes on their own cores, the storage URL never on a command line.

The runs are the real command, optimize loop and storage; the trial is the stand-in
(``python -m tests.stand_in_cli``: a process that sleeps instead of training), so 40 trials take
seconds.  The scenarios here run on SQLite and, in test_postgres.py, on a PostgreSQL server.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from search import workers

from .conftest import Tiny, lines, stop, wait_for
from .stand_ins import measures


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # not created yet
        return []


def running_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials_of(storage, name) if t.state == TrialState.RUNNING and "resolved_params" in t.user_attrs]


def check_study(storage: str, name: str, target: int, seconds: float) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``target`` COMPLETE trials, none left RUNNING or WAITING, each with its own values, failures retried."""
    trials = trials_of(storage, name)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == target, {s.name: len(v) for s, v in by_state.items()}
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    for t in by_state[TrialState.COMPLETE]:
        spec = {"params": t.user_attrs["resolved_params"], "n_classes": 10, "evaluation": "test",
                "reduce_classes": [0, 1, 2]}
        expected = measures(spec, seconds)
        # The values of the parameters this trial ran: nothing mixed up between workers.
        assert t.values[:3] == [expected["test_accuracy"], expected["test_roc_auc"], seconds], t.number
        assert math.isfinite(t.values[3]) and t.values[3] > 10  # MB: a real process
    for t in by_state[TrialState.FAIL]:  # no trial lost: every failure is retried with its parameters
        retries = [r for r in trials if t.number in r.system_attrs.get("retry_history", [])]
        assert retries and all(r.params == t.params for r in retries), t.number
    return trials


def worker_pids(stderr: str) -> list[int]:
    m = re.search(r"(\d+) workers started \(pids ([\d, ]+)\)", stderr)
    assert m, stderr[-2000:]
    return [int(p) for p in m.group(2).split(", ")]


# ---------------------------------------------------------------- units

def test_worker_cores_divide_the_machine():
    cores = sorted(os.sched_getaffinity(0))
    n = len(cores)
    assert workers.worker_cpus(0, 1) is None and workers.worker_cpus(1, 1) is None  # one process: all cores
    shares = [workers.worker_cpus(i, n) for i in range(1, n + 1)]
    assert sorted(c for s in shares for c in s) == cores  # one core each, every core used once
    many = [workers.worker_cpus(i, 2 * n) for i in range(1, 2 * n + 1)]
    assert all(len(s) == 1 and s[0] in cores for s in many)  # more workers than cores: at least one each


def test_each_process_seeds_its_sampler_from_its_first_trial_number(tmp_path):
    import optuna

    from search.config import load_config
    from search.study import samplers

    from .conftest import TINY_CONFIG

    path = tmp_path / "c.toml"
    path.write_text(TINY_CONFIG.format(n_trials=2))
    c = load_config(str(path))
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", sampler=samplers.ProcessSeeded(c),
                                directions=c.directions)
    second = optuna.load_study(storage=storage, study_name="s", sampler=samplers.ProcessSeeded(c))
    a, b = first.ask(), second.ask()
    assert (first.sampler.seed, second.sampler.seed) == (0, 1)  # the first process keeps the config's seed
    assert a.suggest_float("dropout", 0.1, 0.7) != b.suggest_float("dropout", 0.1, 0.7)
    alone = optuna.create_study(sampler=samplers.make_sampler(c), directions=c.directions)
    assert alone.ask().suggest_float("dropout", 0.1, 0.7) == a.params["dropout"]  # same draws as before


def test_two_commands_on_one_study_draw_no_duplicates_and_each_counts_what_it_ran(tiny):
    args = tiny.args(tiny.config(n_trials=4), "--heartbeat", "1")
    procs = [tiny.stand_in_popen(*args, seconds=1.0) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    trials = optuna.load_study(study_name="tiny", storage=tiny.storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    params = [tuple(sorted(t.params.items())) for t in trials if t.params]
    assert len(params) == len(set(params))  # no two processes drew the same parameters
    seeds = {}
    for t in complete:
        seeds.setdefault(t.system_attrs["search:owner"]["pid"], set()).add(t.user_attrs["sampler_seed"])
    assert all(len(s) == 1 for s in seeds.values())
    assert len(seeds) == 1 or len(set().union(*seeds.values())) == len(seeds)  # one seed per process
    ran = [int(re.search(r"4/4 COMPLETE trials \((\d+) this run", e).group(1)) for _, e in outs]
    assert sum(ran) == 4
    assert all(t.user_attrs.get("reason") == "target reached by another process"
               for t in trials if t.state == TrialState.PRUNED)


# ---------------------------------------------------------------- shared scenarios (SQLite here, PostgreSQL too)

def scenario_exact_target(tiny: Tiny, storage: str, n_workers: int, target: int, name: str = "tiny",
                          seconds: float = 0.2, timeout: float = 600) -> tuple[subprocess.CompletedProcess, list]:
    args = tiny.args(tiny.config(n_trials=target), "--heartbeat", "1", "--study-name", name, "--workers",
                     str(n_workers))
    args[args.index("--storage") + 1] = storage
    r = tiny.stand_in(*args, seconds=seconds, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = check_study(storage, name, target, seconds)
    assert (f"{target}/{target} COMPLETE trials ({target} this run by {n_workers} workers; stopped by target)"
            in r.stderr)
    pids = worker_pids(r.stderr)
    owners = {t.system_attrs["search:owner"]["pid"] for t in trials if t.state == TrialState.COMPLETE}
    assert owners <= set(pids)  # trials ran in the workers, never in the parent
    assert len(re.findall(r"^trial \d+ COMPLETE", r.stderr, re.M)) == target  # one display for all
    assert r.stdout.count("Pareto-optimal trials of") == 1  # one summary
    return r, trials


def scenario_killed_worker(tiny: Tiny, storage: str, name: str = "tiny") -> None:
    target, n_workers = 8, 3
    args = tiny.args(tiny.config(n_trials=target), "--heartbeat", "1", "--study-name", name, "--workers",
                     str(n_workers))
    args[args.index("--storage") + 1] = storage
    proc = tiny.stand_in_popen(*args, seconds=1.5)
    try:
        victim = wait_for(lambda: running_trials(storage, name), 120, "a running trial", proc)[0]
        pid = victim.system_attrs["search:owner"]["pid"]
        assert psutil.Process(pid).parent().pid == proc.pid  # a worker, not the parent
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert re.search(rf"worker \d \(pid {pid}\) killed by SIGKILL; its trial\(s\) {victim.number} failed and queued",
                     err), err[-3000:]
    trials = check_study(storage, name, target, 1.5)
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == f"owner process {pid} died"
    retries = [t for t in trials if t.system_attrs.get("retry_history") == [victim.number]]
    # Queued by whoever noticed first (the parent, a worker, Optuna's heartbeat sweep); trained once.
    (retry,) = [t for t in retries if t.state == TrialState.COMPLETE]
    assert all(t.state == TrialState.PRUNED for t in retries if t is not retry)
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.system_attrs["search:owner"]["pid"] not in (pid, proc.pid)  # another worker ran it


# ---------------------------------------------------------------- tests

@pytest.mark.slow  # ~10 s: the fast suite stays under 5 minutes
def test_two_workers_share_the_target_each_on_its_own_cores_without_the_url_on_a_command_line(tiny):
    cores = sorted(os.sched_getaffinity(0))
    args = tiny.args(tiny.config(n_trials=6), "--heartbeat", "1", "--workers", "2")
    proc = tiny.stand_in_popen(*args, seconds=2)
    try:
        # Both workers inside a trial at once: poll the storage, with a generous deadline.
        both = wait_for(lambda: len(running_trials(tiny.storage, "tiny")) == 2 and running_trials(tiny.storage, "tiny"),
                        120, "both workers in a trial", proc)
        for t in both:
            worker = psutil.Process(t.system_attrs["search:owner"]["pid"])
            cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode().split("\0")
            assert cmdline[1:3] == ["-m", "tests.stand_in_cli"] and "--worker" in cmdline
            assert "--storage" not in cmdline and not any(tiny.storage in a for a in cmdline)
            assert worker.environ()["SEARCH_STORAGE"] == tiny.storage  # handed over in the environment
            children = wait_for(lambda: worker.children(), 30, "the worker's trial process")
            index = int(cmdline[cmdline.index("--worker") + 1])
            assert children[0].cpu_affinity() == list(workers.worker_cpus(index, 2))
        out, err = proc.communicate(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    trials = check_study(tiny.storage, "tiny", 6, 2)
    assert {t.user_attrs["threads"] for t in trials if t.state == TrialState.COMPLETE} == {max(1, len(cores) // 2)}
    assert "6/6 COMPLETE trials (6 this run by 2 workers; stopped by target)" in err


@pytest.mark.slow
def test_four_workers_complete_exactly_the_target_on_sqlite(tiny):
    scenario_exact_target(tiny, tiny.storage, n_workers=4, target=40)


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_by_another_worker_sqlite(tiny):
    scenario_killed_worker(tiny, tiny.storage)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_parent_stops_every_worker_and_their_trials_stay_retriable(tiny, sig):
    target, n_workers = 6, 3
    args = tiny.args(tiny.config(n_trials=target), "--heartbeat", "1", "--workers", str(n_workers))
    proc = tiny.stand_in_popen(*args, seconds=60)
    try:
        running = wait_for(lambda: len(running_trials(tiny.storage, "tiny")) == n_workers and
                           running_trials(tiny.storage, "tiny"), 120, "every worker in a trial", proc)
        pids = {t.system_attrs["search:owner"]["pid"] for t in running}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 128 + sig, err[-3000:]
    numbers = ", ".join(str(t.number) for t in sorted(running, key=lambda t: t.number))
    assert lines(err)[-1] == (f"interrupted by {signal.Signals(sig).name}: trial(s) {numbers} recorded as failed and "
                              f"queued for retry; 0/{target} COMPLETE; run the same command to resume"), err[-3000:]
    assert "Traceback" not in err
    for p in pids:
        wait_for(lambda: not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE, 30,
                 f"worker {p} to end")
    trials = trials_of(tiny.storage, "tiny")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sorted(t.params["dropout"] for t in trials if t.state == TrialState.WAITING) == \
        sorted(t.params["dropout"] for t in running)
    # The same command resumes: the retried parameters run, the target is met exactly.
    r = tiny.stand_in(*args, seconds=0.2)
    assert r.returncode == 0, r.stderr[-3000:]
    done = check_study(tiny.storage, "tiny", target, 0.2)
    completed = [t.params for t in done if t.state == TrialState.COMPLETE]
    assert all(t.params in completed for t in running)


@pytest.mark.slow
def test_concurrent_commands_build_each_feature_cache_once(tiny):
    """Three commands at once on one study ("three machines"): two share a cache directory, one has its own.
    Each directory is built exactly once, by one process: the real extraction, stand-in trials."""
    cfg = tiny.config(n_trials=6)
    shared, own = tiny.tmp / "cache-shared", tiny.tmp / "cache-own"
    procs = []
    for cache in (shared, shared, own):
        args = tiny.args(cfg, "--heartbeat", "1")
        args[args.index("--cache-dir") + 1] = str(cache)
        procs.append((cache, tiny.stand_in_popen(*args, seconds=0.3)))
    results = [(cache, p, *p.communicate(timeout=900)) for cache, p in procs]
    for cache, p, out, err in results:
        assert p.returncode == 0, err[-3000:]
    built = sorted(str(cache) for cache, p, out, err in results if "features cached in" in err)
    assert built == sorted([str(shared), str(own)]), [e[-500:] for *_, e in results]
    for cache in (shared, own):
        entries = [e.name for e in cache.iterdir() if e.is_dir()]
        assert entries == [tiny.entry.name]  # the same key, and no leftover temporary build
    check_study(tiny.storage, "tiny", 6, 0.3)


@pytest.mark.slow
def test_workers_with_real_trials_reuse_the_parents_feature_cache(tmp_path):
    """The real trial (Keras head on real features) through --workers: the parent extracts, the workers reuse."""
    t = Tiny(tmp_path, cache=False)
    r = t.run(*t.args(t.config(n_trials=3), "--workers", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("features cached in") == 1
    assert "3/3 COMPLETE trials (3 this run by 2 workers; stopped by target)" in r.stderr
    trials = [x for x in trials_of(t.storage, "tiny") if x.state == TrialState.COMPLETE]
    assert len(trials) == 3
    for x in trials:
        assert {"test_confusion_matrix", "test_per_class_recall", "trial_memory_mb"} <= set(x.user_attrs)
        assert x.user_attrs["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert {x.system_attrs["search:owner"]["pid"] for x in trials} <= set(worker_pids(r.stderr))
