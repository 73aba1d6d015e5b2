"""Randomized kill test: SIGKILL ``search.run`` at seeded random moments in every stage, resume, check nothing is lost.

    python -m benchmarks.kill_test                 # 20 kills (about 10-15 min on 2 cores)
    python -m benchmarks.kill_test --kills 6       # one kill per stage (the slow test: on a 2-point grid)

A grid study (real Fashion-MNIST slice, random-weight ResNet50, view cache, epoch snapshots, artifacts) runs through
the real command.  Each round picks a stage (seeded, round-robin over STAGES), waits until the command's output
shows that stage, waits a seeded random part of the stage's window, and kills the command's whole process group
with SIGKILL; extraction rounds start without the feature cache so that there is an extraction to kill.  The stage
counted is the last one the output showed when the kill landed.  After every kill the same command is run again
to the end and the study is checked: exactly the grid's points COMPLETE once each, nothing RUNNING,
``PRAGMA integrity_check`` ok, and every file of the artifact store referenced by a trial.  A study that
completes is checked and the next round starts a new study in the same storage.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

CONFIG = """
[dataset]
name = "fashion_mnist"
subset = 400
[backbone]
weights = "random"
[augmentation]
mode = "views"
views = 2
[head]
units = 64
[training]
batch_size = 64
[search_space]
l2 = { type = "categorical", choices = L2_CHOICES }
epochs = { type = "int", low = 1, high = 2 }
[[objectives]]
metric = "accuracy"
direction = "maximize"
[[objectives]]
metric = "train_time_s"
direction = "minimize"
[sampler]
name = "grid"
[run]
epoch_snapshots = true
"""
L2 = {"full": [0.0, 1e-4, 1e-3], "short": [0.0]}  # the slow test's short version: 2 grid points, not 6
GRID_POINTS = {size: 2 * len(choices) for size, choices in L2.items()}
# stage -> (the output line that starts it, seconds after it within which the kill lands)
STAGES = {
    "extraction": ("extracting features 0/", 6.0),
    "view extraction": ("extracting augmented views 0/", 8.0),
    "training": ("training epoch 0/", 1.5),
    "pictures and artifact upload": ("drawing pictures", 1.5),
    "snapshot recording": ("evaluating", 2.5),
    # The parent of --workers shows its workers' trials only as they start and end.
    "worker commit (--workers 2)": ("started:", 8.0),
}
MARKERS = [("extracting features", "extraction"), ("extracting augmented views", "view extraction"),
           ("training epoch", "training"), ("evaluating", "evaluation"),
           ("drawing pictures", "pictures, artifact upload, result and snapshot recording"),
           ("started:", "a trial (a worker's, with --workers 2)"), ("COMPLETE:", "between trials")]


def command(work: Path, study: str, workers: bool) -> list[str]:
    return [sys.executable, "-m", "search.run", "--study", str(work / "kill.toml"), "--study-name", study,
            "--storage", f"sqlite:///{work / 'kill.db'}", "--cache-dir", str(work / "cache"), "--heartbeat", "1",
            *(["--workers", "2"] if workers else [])]


def kill_round(work: Path, study: str, stage: str, rng: random.Random) -> str | None:
    """Start the command, kill it in ``stage``; return the stage the output showed (None: it ended first)."""
    marker, window = STAGES[stage]
    if stage == "extraction":
        shutil.rmtree(work / "cache", ignore_errors=True)
    elif stage == "view extraction":
        for d in (work / "cache").glob("*-views-*"):
            shutil.rmtree(d, ignore_errors=True)
    proc = subprocess.Popen(command(work, study, stage.startswith("worker")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=_env())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    seen, deadline = None, None
    while proc.poll() is None:
        try:
            line = lines.get(timeout=0.02)
            seen = next((name for m, name in MARKERS if m in line), seen)
            if deadline is None and marker in line:
                deadline = time.monotonic() + rng.uniform(0.0, window)
        except queue.Empty:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return seen
    return None


def finish(work: Path, study: str, workers: bool) -> None:
    r = subprocess.run(command(work, study, workers), capture_output=True, text=True, env=_env(), timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"error: the resumed command failed (rc {r.returncode}): {r.stderr[-2000:]}")


def check(work: Path, study: str, points_expected: int = GRID_POINTS["full"]) -> dict:
    """What the issue asks of a study after kills; raises AssertionError naming what is wrong."""
    import optuna
    from optuna.trial import TrialState

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{work / 'kill.db'}")
    trials = s.get_trials(deepcopy=False)
    grid = [t for t in trials if t.state == TrialState.COMPLETE and "snapshot_of" not in t.user_attrs]
    points = Counter(tuple(sorted(t.params.items())) for t in grid)
    assert len(points) == points_expected and set(points.values()) == {1}, f"grid points COMPLETE: {dict(points)}"
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], "trials left RUNNING"
    with sqlite3.connect(work / "kill.db") as con:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    assert integrity == "ok", f"integrity_check: {integrity}"
    # The store is shared by every study of the storage (beside kill.db): references of all of them count.
    all_trials = [t for name in optuna.get_all_study_names(f"sqlite:///{work / 'kill.db'}")
                  for t in optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'kill.db'}").trials]
    referenced = {k.removeprefix("artifacts:") for t in all_trials for k in t.system_attrs
                  if k.startswith("artifacts:")}
    store = work / "kill-artifacts"
    orphans = sorted(p.name for p in store.iterdir() if p.name not in referenced) if store.is_dir() else []
    assert not orphans, f"artifact files no trial references: {orphans[:3]}"
    return {"study": study, "trials": len(trials), "complete_grid_points": len(grid),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "artifact_files": len(referenced)}


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root, "SEARCH_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(work: Path, kills: int, seed: int, size: str = "full") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "kill.toml").write_text(CONFIG.replace("L2_CHOICES", json.dumps(L2[size])))
    rng, stages = random.Random(seed), list(STAGES)
    rng.shuffle(stages)
    landed: Counter = Counter()
    studies, episode, start = [], 0, time.monotonic()
    for k in range(kills):
        study = f"kill-{episode}"
        stage = stages[k % len(stages)]
        seen = kill_round(work, study, stage, rng)
        landed[seen or "(ended before the kill)"] += 1
        finish(work, study, stage.startswith("worker"))
        studies.append(check(work, study, GRID_POINTS[size]))
        episode += 1
    return {"kills": kills, "seed": seed, "landed_in": dict(landed), "studies": studies,
            "survived": len(studies), "wall_s": round(time.monotonic() - start, 1), "load_avg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kill_test", description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("benchmarks/out/kill_test"))
    a = p.parse_args(argv)
    shutil.rmtree(a.work, ignore_errors=True)
    res = run(a.work, a.kills, a.seed)
    print(json.dumps(res, indent=1))
    print(f"{res['survived']}/{res['kills']} kills survived; landed in: "
          + ", ".join(f"{k} {v}" for k, v in sorted(res["landed_in"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
