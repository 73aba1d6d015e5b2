"""``python -m benchmarks.study``: the user's 30-trial study, timed end to end (issue 12 part 2).

Runs the command a user types, ``python -m search.run --study fmnist_reg --weights random --n-trials 30``
(``--workers N`` added with this benchmark's ``--workers N``), as a subprocess, on full Fashion-MNIST from its
default place, in a fresh temporary storage and feature cache (so the one-time extraction is part of the
run), with the user's defaults (``KERAS_BACKEND`` is removed from the environment).  Reports wall time,
extraction time, mean and max trial time (the study's own ``datetime_start``/``datetime_complete``), whole-run
peak memory (psutil, every 0.5 s, over the run's whole process tree: the largest single process and the
largest sum), trials COMPLETE, the load average at start, end and its maximum during the run, the machine,
the versions and the date.

    python -m benchmarks.study                      # the 30-trial fmnist_reg study, 1 worker (~45-60 min)
    python -m benchmarks.study --workers 2 --md     # the same with --workers 2; record it in RESULTS.md
    python -m benchmarks.study --study smoke --n-trials 2 --out /tmp/smoke.json   # a 1-minute check

The figures are valid only on an idle machine: it warns when the 1-minute load average at start is above 0.5.
``--md`` updates this command's block in the "End-to-end study" section of ``benchmarks/RESULTS.md`` (added
when missing); nothing is written there otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load_text, load_warning, loadavg, machine, versions

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SAMPLE_S = 0.5

SECTION_TITLE = "## End-to-end study (issue 12): `python -m benchmarks.study`"
SECTION_BEGIN = "<!-- benchmarks.study: begin (generated; `python -m benchmarks.study ... --md` updates its block) -->"
SECTION_END = "<!-- benchmarks.study: end -->"


# ---------------------------------------------------------------- the commands

def user_command(study: str, n_trials: int, workers: int) -> list[str]:
    """The command as a user types it (what the report shows)."""
    cmd = ["python", "-m", "search.run", "--study", study, "--weights", "random", "--n-trials", str(n_trials)]
    return cmd + (["--workers", str(workers)] if workers > 1 else [])


def bench_command(study: str, n_trials: int, workers: int) -> str:
    """This benchmark's command without its output flags: the key of its block in RESULTS.md."""
    parts = ["python -m benchmarks.study"]
    if study != "fmnist_reg":
        parts.append(f"--study {study}")
    if n_trials != 30:
        parts.append(f"--n-trials {n_trials}")
    if workers != 1:
        parts.append(f"--workers {workers}")
    return " ".join(parts)


# ---------------------------------------------------------------- sampling the process tree

class Sampler(threading.Thread):
    """Every ``SAMPLE_S`` seconds: the RSS of every process of the tree under ``pid``, and the load average."""

    def __init__(self, pid: int, interval: float = SAMPLE_S):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.stop_event = threading.Event()
        self.max_single_mb = 0.0
        self.max_single_what = ""
        self.max_single_at = 0.0  # seconds into the run
        self.max_tree_mb = 0.0
        self.max_tree_processes = 0
        self.max_load = [0.0, 0.0, 0.0]
        self.samples = 0

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop_event.is_set():
            self.sample(time.monotonic() - start)
            self.stop_event.wait(self.interval)

    def sample(self, elapsed: float) -> None:
        import psutil

        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        total, largest, what = 0.0, 0.0, ""
        for p in procs:
            try:
                mb = p.memory_info().rss / 2**20
                if mb > largest:
                    largest, what = mb, _describe(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += mb
        if largest > self.max_single_mb:
            self.max_single_mb, self.max_single_what, self.max_single_at = largest, what, elapsed
        if total > self.max_tree_mb:
            self.max_tree_mb, self.max_tree_processes = total, len(procs)
        self.max_load = [max(a, b) for a, b in zip(self.max_load, loadavg())]
        self.samples += 1


def _describe(p) -> str:
    """What a process of the run is: the coordinator, a worker, or a child (trial or extraction)."""
    try:
        cmd = p.cmdline()
    except Exception:  # noqa: BLE001 - a process gone between listing and reading
        return "?"
    if "search.isolate" in cmd:
        return "child"  # a trial or the feature extraction: told apart by when (see run)
    if "--worker" in cmd:
        return "a worker (search.run --worker)"
    if "search.run" in cmd:
        return "the search.run command"
    return " ".join(cmd)[:60]


# ---------------------------------------------------------------- one run

def run(study: str, n_trials: int, workers: int, workdir: Path) -> dict[str, Any]:
    """Run the user's command in ``workdir`` (fresh storage and cache) and measure it."""
    storage = f"sqlite:///{workdir / 'studies.db'}"
    argv = [sys.executable, *user_command(study, n_trials, workers)[1:],
            "--storage", storage, "--cache-dir", str(workdir / "cache")]
    # The user's defaults: no KERAS_BACKEND (extraction on TensorFlow, trials on JAX); this tree's search package.
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    res: dict[str, Any] = {"command": " ".join(user_command(study, n_trials, workers)),
                           "machine": machine(), "versions": versions(), "load_avg_at_start": loadavg()}
    log = workdir / "run.log"
    started = dt.datetime.now()  # naive local time, as Optuna stores datetime_start
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid)
        sampler.start()
        rc = proc.wait()
    res["wall_s"] = time.perf_counter() - t0
    sampler.stop_event.set()
    sampler.join()
    res["load_avg_at_end"] = loadavg()
    res["returncode"] = rc
    text = log.read_text(errors="replace")
    res["log_tail"] = text.splitlines()[-15:]
    res["extraction_s"] = extraction_seconds(text)
    res["memory"] = {"max_process_mb": sampler.max_single_mb, "max_process_is": sampler.max_single_what,
                     "max_tree_mb": sampler.max_tree_mb, "processes_at_tree_max": sampler.max_tree_processes,
                     "samples": sampler.samples, "sample_interval_s": SAMPLE_S}
    res["load_avg_max"] = sampler.max_load
    res["trials"] = trial_figures(storage, started)
    what = sampler.max_single_what
    if what == "child":  # the extraction runs before the first trial starts
        first = res["trials"].get("first_trial_start_s")
        what = ("the feature extraction process" if first is None or sampler.max_single_at < first
                else "a trial process")
    res["memory"]["max_process_is"] = what
    res["memory"]["max_process_at_s"] = sampler.max_single_at
    return res


def extraction_seconds(log_text: str) -> float | None:
    """The extraction time search.run prints ("features cached in ... (extraction 96.5 s, ..."), if it did."""
    m = re.search(r"\(extraction ([0-9.]+) s", log_text)
    return float(m.group(1)) if m else None


def trial_figures(storage: str, started: dt.datetime) -> dict[str, Any]:
    """Per-trial times and figures from the study itself (the only study in the fresh storage)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    names = optuna.study.get_all_study_names(storage)
    if not names:
        return {"complete": 0, "fail": 0}
    trials = optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)
    return summarize_trials([{
        "state": t.state.name, "start": t.datetime_start, "complete": t.datetime_complete,
        "train_time_s": t.user_attrs.get("train_time_s"), "peak_memory_mb": t.user_attrs.get("peak_memory_mb"),
        "epochs": t.params.get("epochs"), "n_train": t.user_attrs.get("n_train")} for t in trials], started)


def summarize_trials(trials: list[dict[str, Any]], started: dt.datetime) -> dict[str, Any]:
    """Counts, trial durations (start to complete), fit and outside-fit times of the COMPLETE trials."""
    done = [t for t in trials if t["state"] == "COMPLETE" and t["start"] and t["complete"]]
    dur = [(t["complete"] - t["start"]).total_seconds() for t in done]
    fit = [t["train_time_s"] for t in done if t["train_time_s"] is not None]
    outside = [d - t["train_time_s"] for d, t in zip(dur, done) if t["train_time_s"] is not None]
    starts = [t["start"] for t in trials if t["start"]]

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    return {"complete": len(done), "fail": sum(t["state"] == "FAIL" for t in trials), "all": len(trials),
            "mean_trial_s": mean(dur), "max_trial_s": max(dur) if dur else None, "sum_trial_s": sum(dur),
            "mean_fit_s": mean(fit), "mean_outside_fit_s": mean(outside),
            "max_trial_peak_memory_mb": max((t["peak_memory_mb"] for t in done if t["peak_memory_mb"]), default=None),
            "mean_epochs": mean([t["epochs"] for t in done if t["epochs"] is not None]),
            "mean_n_train": mean([t["n_train"] for t in done if t["n_train"] is not None]),
            "first_trial_start_s": (min(starts) - started).total_seconds() if starts else None}


# ---------------------------------------------------------------- report

def _s(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.1f} s" + (f" ({int(v // 60)} min {v % 60:02.0f} s)" if v >= 60 else "")


def _mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} MB"


def report_table(res: dict[str, Any]) -> str:
    """The figures of one run as a Markdown table; every row ends with the load average it was measured under."""
    t, mem = res["trials"], res["memory"]
    load = (f"{res['load_avg_at_start'][0]:.2f} / {res['load_avg_max'][0]:.2f} / {res['load_avg_at_end'][0]:.2f}")
    rows = [
        ("wall time", _s(res["wall_s"])),
        ("feature extraction (one-time, in the run)", _s(res["extraction_s"])),
        ("first trial started after", _s(t.get("first_trial_start_s"))),
        ("trials COMPLETE (FAIL)", f"{t['complete']} ({t['fail']})"),
        ("trial time, mean / max (datetime_start to datetime_complete)",
         f"{_s(t.get('mean_trial_s'))} / {_s(t.get('max_trial_s'))}"),
        ("fit per trial, mean (train_time_s)", _s(t.get("mean_fit_s"))),
        ("outside fit per trial, mean (trial time - train_time_s)", _s(t.get("mean_outside_fit_s"))),
        ("epochs, training rows per trial (mean)",
         "n/a" if t.get("mean_epochs") is None else f"{t['mean_epochs']:.1f}, {t['mean_n_train']:,.0f}"),
        ("peak memory, largest single process", f"{_mb(mem['max_process_mb'])} ({mem['max_process_is']})"),
        ("peak memory, sum over the process tree at its maximum",
         f"{_mb(mem['max_tree_mb'])} ({mem['processes_at_tree_max']} processes)"),
        ("peak memory of a trial (its own VmHWM, max over trials)", _mb(t.get("max_trial_peak_memory_mb"))),
    ]
    lines = ["| figure | value | 1-min load average: start / max / end |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {load} |" for k, v in rows]
    return "\n".join(lines)


def block(res: dict[str, Any], key: str) -> str:
    """This run's block for RESULTS.md: command, context and the table (no path of this machine in it)."""
    m, v = res["machine"], res["versions"]
    warn = load_warning(res["load_avg_at_start"])
    lines = [f"### `{key} --md`", "",
             f"User command: `{res['command']}`, in a fresh temporary storage (`--storage sqlite:///...`) and feature "
             f"cache (`--cache-dir`), full Fashion-MNIST from its default place, `KERAS_BACKEND` unset.",
             "",
             f"{m['date']}; {m['cpu']}, {m['cores']} cores, avx512_bf16: {'yes' if m['avx512_bf16'] else 'no'}; "
             f"load average (1/5/15 min) {load_text(res['load_avg_at_start'])} at start, "
             f"{load_text(res['load_avg_max'])} max during the run, {load_text(res['load_avg_at_end'])} at end; "
             + ", ".join(f"{k} {v[k]}" for k in ("keras", "jax", "tensorflow", "optuna")) + "; exit code "
             f"{res['returncode']}; memory sampled every {res['memory']['sample_interval_s']} s "
             f"({res['memory']['samples']} samples).", ""]
    if warn:
        lines += [f"**{warn}**", ""]
    lines.append(report_table(res))
    return "\n".join(lines) + "\n"


def update_results(text: str, key: str, new_block: str) -> str:
    """``text`` (RESULTS.md) with the block of ``key`` replaced, or added at the end of the section (the section
    is appended to the file when missing)."""
    begin, end = f"<!-- run: {key} -->", f"<!-- /run: {key} -->"
    wrapped = f"{begin}\n{new_block.rstrip()}\n{end}\n"
    if SECTION_BEGIN not in text:
        text = text.rstrip() + f"\n\n{SECTION_TITLE}\n\n{SECTION_BEGIN}\n{SECTION_END}\n"
    if begin in text and end in text:
        i, j = text.index(begin), text.index(end) + len(end)
        return text[:i] + wrapped.rstrip("\n") + text[j:]
    k = text.index(SECTION_END)
    return text[:k] + wrapped + "\n" + text[k:]


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__.splitlines()[0])
    p.add_argument("--study", default="fmnist_reg", help="study config (default fmnist_reg; smoke for a check)")
    p.add_argument("--n-trials", type=int, default=30, help="target number of COMPLETE trials (default 30)")
    p.add_argument("--workers", type=int, default=1, help="add --workers N to the command (default 1: not added)")
    p.add_argument("--out", type=Path, help="write every figure as JSON")
    p.add_argument("--md", action="store_true", help="update this command's block in benchmarks/RESULTS.md")
    p.add_argument("--keep", type=Path, help="run in this (new, empty) directory and keep it: its studies.db is "
                                              "the plain reference of python -m benchmarks.snapshots --plain-db")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)  # tests write elsewhere
    a = p.parse_args(argv)
    if a.n_trials <= 0 or a.workers <= 0:
        p.error("--n-trials and --workers must be positive")
    key = bench_command(a.study, a.n_trials, a.workers)
    start_load = loadavg()
    print(f"{' '.join(user_command(a.study, a.n_trials, a.workers))}: load average {load_text(start_load)} at start",
          flush=True)
    if warn := load_warning(start_load):
        print(warn, file=sys.stderr, flush=True)
    if a.keep is not None:
        if a.keep.exists() and any(a.keep.iterdir()):
            p.error(f"--keep: {a.keep} is not empty (the run needs a fresh storage and cache)")
        a.keep.mkdir(parents=True, exist_ok=True)
        res = run(a.study, a.n_trials, a.workers, a.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
            res = run(a.study, a.n_trials, a.workers, Path(tmp))
    res["benchmark_command"] = key
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1, default=str))
    print(block(res, key), flush=True)
    if res["returncode"] != 0:
        print("the run failed; its last lines:\n  " + "\n  ".join(res["log_tail"]), file=sys.stderr)
        return 1
    if a.md:
        a.results.write_text(update_results(a.results.read_text() if a.results.exists() else "", key, block(res, key)))
        print(f"updated {a.results.name}: block `{key}`", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
