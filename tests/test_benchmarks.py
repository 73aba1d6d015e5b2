"""benchmarks/: the arithmetic and the reports on recorded results (fast), a few measurement children on tiny
synthetic inputs (fast), and ``python -m benchmarks.study --study smoke --n-trials 2`` end to end (slow).

No timing assertions: speed targets live in the benchmarks' reports, not in tests.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import cache_vs_full, study, trial as btrial
from benchmarks.common import child, ensure_features, gemm_gflops, head_train_flops, load_warning, matmul_gflops
from benchmarks.report import markdown, targets
from tests.conftest import ROOT, cli_env, needs_real_fashion

MACHINE_PATHS = ("/tmp", "/root", "/work", "/home")


# ---------------------------------------------------------------- FLOPs, limits, load

def test_head_flops_skip_the_input_gradient_of_the_first_layer():
    # forward 2 + weight gradient 2 for 2048x1024; forward, weight and input gradient (6) for 1024x10
    assert head_train_flops(1, 1024) == 2 * 2048 * 1024 * 2 + 2 * 1024 * 10 * 3
    assert head_train_flops(10, 8) == 10 * head_train_flops(1, 8)


def test_numpy_limits_are_positive():
    assert matmul_gflops(128, repeats=1) > 0
    assert gemm_gflops(8, 64, 32, min_seconds=0.01) > 0


def test_load_warning_only_above_half_a_core():
    assert load_warning([0.5, 3.0, 3.0]) is None  # only the 1-minute figure counts
    assert "0.83 > 0.5" in load_warning([0.83, 0.1, 0.1])


# ---------------------------------------------------------------- cache vs loop: ratio and tracing arithmetic

def test_steady_epochs_exclude_the_first_and_tracing_is_its_excess():
    assert cache_vs_full.steady_epoch_s([10.0, 7.0, 8.0]) == 7.5
    # first epoch 10 s against a steady 7.5 s: 2.5 s of a 25 s timed part
    assert cache_vs_full.tracing_fraction([10.0, 7.0, 8.0]) == pytest.approx(0.1)
    assert cache_vs_full.tracing_fraction([7.0, 7.5, 7.5]) == 0.0  # a fast first epoch is no negative tracing
    with pytest.raises(ValueError):
        cache_vs_full.steady_epoch_s([10.0])


def test_ratio_is_per_row_over_steady_epochs():
    r = cache_vs_full.summarize_rates({"rows": 42000, "epoch_s": [7.5, 7.0, 7.0], "backend": "jax"},
                                      {"rows": 4000, "epoch_s": [11.0, 10.0, 10.0, 10.0], "backend": "tensorflow"})
    assert r["cached"]["rows_per_s"] == 6000 and r["loop"]["rows_per_s"] == 400
    assert r["ratio"] == 15.0
    assert r["max_tracing_fraction"] == pytest.approx(1 / 41) and r["tracing_ok"]
    line = cache_vs_full.rates_line(r)
    assert "15.0x per row" in line and "(under 10%)" in line


def test_a_ratio_dominated_by_tracing_is_flagged_and_gets_no_verdict():
    rates = cache_vs_full.summarize_rates({"rows": 1600, "epoch_s": [1.6, 0.4, 0.4], "backend": "jax"},
                                          {"rows": 1000, "epoch_s": [7.0, 3.0], "backend": "tensorflow"})
    assert not rates["tracing_ok"] and "NOT under 10%" in cache_vs_full.rates_line(rates)
    res = _recorded_run(rates)
    ratio = next(t for t in targets(res) if t["target"].startswith("cached head >= 10x"))
    assert ratio["met"] is None and "NOT at scale" in ratio["value"]


# ---------------------------------------------------------------- benchmarks.run's report, from a recorded result

def _recorded_run(rates: dict | None = None) -> dict:
    """A benchmarks.run result as recorded (values from a run on this machine, trimmed to what the report reads)."""
    rates = rates or cache_vs_full.summarize_rates(
        {"rows": 42000, "epoch_s": [8.1, 7.1, 7.0], "backend": "jax"},
        {"rows": 6000, "epoch_s": [17.6, 13.3, 13.1, 13.2], "backend": "tensorflow"})
    for side in ("cached", "loop"):
        rates[side].update(load_avg_before=[0.1, 0.2, 0.3], load_avg_after=[1.1, 0.5, 0.4])
    rates["loop"].update(forward_images_per_s=446.0, resnet50_flops_per_image=1.57e8)
    sweep = lambda name: {"name": name, "n_rows": 8192, "rows": [  # noqa: E731
        {"batch_size": 32, "steady_epoch_s": 1.0, "gflops": 20.0},
        {"batch_size": 256, "steady_epoch_s": 0.2, "gflops": 90.0}]}
    return {"plan": "quick", "plan_settings": {"trial_subset": 0}, "command": "python -m benchmarks.run --quick",
            "weights": "random", "wall_s": 400.0,
            "machine": {"cpu": "AMD EPYC", "cores": 2, "date": "2026-11-29 09:04 UTC",
                        "load_avg_at_start": [0.1, 0.2, 0.3], "load_avg_at_end": [1.0, 0.8, 0.5]},
            "limit": {"matmul_gflops": 150.0, "matmul_4096_gflops_start": 150.0, "matmul_4096_gflops_end": 140.0,
                      "gemm_head_shape_gflops": {32: 10.0}},
            "cache_vs_full": rates,
            "extraction": {"n_images": 2000, "wall_s": 15.0, "steady": False, "images_per_s": 133.0, "gflops": 21.0,
                           "share_of_matmul": 0.11, "flops_per_image": 1.57e8, "peak_memory_mb": 1091.0,
                           "forward_images_per_s": 446.0, "forward_gflops": 70.2},
            "head_sweeps": [sweep("tensorflow"), sweep("jax")]}


def test_targets_and_markdown_from_a_recorded_run():
    res = _recorded_run()
    res["targets"] = ts = targets(res)
    met = {t["target"]: t["met"] for t in ts}
    assert met["cached head >= 10x faster per row than backbone in the loop (steady epochs, batch 32)"] is True
    assert met["head training >= 50% of numpy matmul at best batch (tensorflow)"] is True  # 90 / 150
    # The study is measured end to end by benchmarks.study, never extrapolated into a verdict here.
    assert next(t for t in ts if t["target"].startswith("30-trial"))["met"] is None
    md = markdown(res)
    assert "**Cache vs backbone in the loop, at scale**" in md
    assert "| cached features | jax | 42,000 |" in md and "| frozen ResNet50 in the loop | tensorflow | 6,000 |" in md
    assert "(under 10%)" in md and "0.10/0.20/0.30 / 1.10/0.50/0.40" in md  # tracing share and load with the figure
    assert "| jax | 8192 | 256 | 0.20 | 90.0 | 60% |" in md


@pytest.mark.slow  # 6 s of real training; the sweep on a cache entry below stays in the fast suite
def test_head_sweep_on_tiny_synthetic_features():
    spec = {"n_rows": 256, "units": 16, "batch_sizes": [32, 128], "epochs": 2}
    rows = child("benchmarks.head_speed:sweep", spec).result["rows"]
    assert [r["batch_size"] for r in rows] == [32, 128]
    assert all(len(r["epoch_s"]) == 2 and r["ms_per_row"] > 0 for r in rows)


def test_head_sweep_reads_every_row_of_a_feature_cache_entry(tmp_path):
    from benchmarks.common import load_verified
    from search.features import feature_cache

    y = np.repeat(np.arange(10), 30)
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)

    def build(tmp):
        np.save(tmp / "features.npy", x)
        np.save(tmp / "labels.npy", y)

    feature_cache.ensure_cached(tmp_path, "k", build)
    got_x, got_y = load_verified(tmp_path, "k")
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
    spec = {"cache_dir": str(tmp_path), "key": "k", "n_rows": 450, "units": 16, "batch_sizes": [32], "epochs": 1}
    out = child("benchmarks.head_speed:sweep", spec).result  # 450 rows: the entry's 300, then repeated
    assert out["n_rows"] == 450 and [r["batch_size"] for r in out["rows"]] == [32]


# ---------------------------------------------------------------- benchmarks.trial: the breakdown

def _stamped_trial():
    """A trial's stamped events (seconds after t0 = 100): imports, loading, 3 epochs, evaluation."""
    events = [{"stage": "loading features", "t": 104.0},
              {"stage": "copying rows", "t": 104.25},
              {"stage": "training", "epoch": 0, "epochs": 3, "t": 105.0},
              {"stage": "training", "epoch": 1, "t": 118.0},   # first epoch 13 s
              {"stage": "training", "epoch": 2, "t": 128.0},   # steady 10 s
              {"stage": "training", "epoch": 3, "t": 138.0},
              {"stage": "evaluating", "t": 138.0}]
    stamps = {"module": 100.5, "imports_search": 101.5, "imports_keras": 104.0, "trial_end": 140.0}
    return events, stamps


def test_breakdown_adds_up_to_the_wall_time_and_separates_tracing_from_fit():
    events, stamps = _stamped_trial()
    events.append({"stage": "drawing pictures", "t": 139.0})
    b = btrial.breakdown(100.0, 141.0, events, stamps, train_time_s=32.5)  # parent: t0 = 100, reaped at 141
    parts = {p["part"].split(" (")[0]: p["s"] for p in b["parts"]}
    assert b["epoch_s"] == [13.0, 10.0, 10.0] and b["fit_s"] == 33.0
    assert parts["process start: fork, exec, interpreter, search.isolate, reading the job"] == 0.5
    assert parts["loading features"] == 0.25 and parts["copying rows"] == 0.75
    assert parts["model build, tracing/compile"] == pytest.approx(3.0)  # first epoch 13 - steady 10
    assert parts["evaluation"] == 1.0 and parts["drawing pictures"] == 1.0
    assert parts["result to the parent, process exit"] == pytest.approx(1.0)
    assert b["wall_s"] == pytest.approx(41.0) and b["outside_fit_s"] == pytest.approx(41.0 - 33.0)
    assert "| **outside fit**" in btrial.breakdown_table(b)


# ---------------------------------------------------------------- benchmarks.study: figures and RESULTS.md

# Recorded from `python -m benchmarks.study --study smoke --n-trials 2` on this machine (loaded: 0.83 at start).
RECORDED_STUDY = {
    "command": "python -m search.run --study smoke --weights random --n-trials 2",
    "machine": {"cpu": "AMD EPYC", "cores": 2, "python": "3.11.7", "avx512_bf16": True, "amx_bf16": False,
                "load_avg_at_start": [0.83, 0.7, 0.47], "date": "2026-11-29 08:56 UTC"},
    "versions": {"keras": "3.15.1", "jax": "0.10.2", "tensorflow": "2.21.0", "optuna": "5.0.0"},
    "load_avg_at_start": [0.83, 0.7, 0.47], "wall_s": 42.98, "load_avg_at_end": [2.13, 1.09, 0.62],
    "returncode": 0, "extraction_s": 17.4,
    "memory": {"max_process_mb": 1057.3, "max_process_is": "the feature extraction process", "max_tree_mb": 1208.1,
               "processes_at_tree_max": 2, "max_processes": 2, "samples": 85, "sample_interval_s": 0.5},
    "load_avg_max": [2.25, 1.09, 0.62],
    "trials": {"complete": 2, "fail": 0, "all": 2, "mean_trial_s": 11.32, "max_trial_s": 11.92, "sum_trial_s": 22.63,
               "mean_fit_s": 2.45, "mean_outside_fit_s": 8.86, "max_trial_peak_memory_mb": 948.9, "mean_epochs": 2.0,
               "mean_n_train": 1600.0, "first_trial_start_s": 19.79},
}


def test_study_commands_and_block_key():
    assert study.user_command("fmnist_reg", 30, 1) == ["python", "-m", "search.run", "--study", "fmnist_reg",
                                                       "--weights", "random", "--n-trials", "30"]
    assert study.user_command("fmnist_reg", 30, 2)[-2:] == ["--workers", "2"]
    assert study.bench_command("fmnist_reg", 30, 1) == "python -m benchmarks.study"
    assert study.bench_command("smoke", 2, 2) == "python -m benchmarks.study --study smoke --n-trials 2 --workers 2"


def test_study_figures_from_trials_and_log():
    t0 = dt.datetime(2026, 11, 29, 9, 0, 0)
    s = lambda sec: t0 + dt.timedelta(seconds=sec)  # noqa: E731
    trials = [{"state": "COMPLETE", "start": s(100), "complete": s(160), "train_time_s": 50.0, "peak_memory_mb": 1400.0,
               "epochs": 10, "n_train": 42000},
              {"state": "FAIL", "start": s(160), "complete": s(170), "train_time_s": None, "peak_memory_mb": None,
               "epochs": 5, "n_train": None},
              {"state": "COMPLETE", "start": s(170), "complete": s(260), "train_time_s": 80.0, "peak_memory_mb": 1500.0,
               "epochs": 20, "n_train": 56000}]
    f = study.summarize_trials(trials, t0)
    assert (f["complete"], f["fail"], f["all"]) == (2, 1, 3)
    assert f["mean_trial_s"] == 75.0 and f["max_trial_s"] == 90.0
    assert f["mean_outside_fit_s"] == 10.0 and f["max_trial_peak_memory_mb"] == 1500.0
    assert f["first_trial_start_s"] == 100.0 and f["mean_epochs"] == 15.0
    log = "data: ...\nfeatures cached in /x/cache/key (extraction 96.5 s, peak memory 1659 MB)\n"
    assert study.extraction_seconds(log) == 96.5 and study.extraction_seconds("resumed") is None


def test_study_block_names_no_machine_path_and_carries_load_and_warning():
    text = study.block(RECORDED_STUDY, "python -m benchmarks.study --study smoke --n-trials 2")
    assert "### `python -m benchmarks.study --study smoke --n-trials 2 --md`" in text
    assert "`python -m search.run --study smoke --weights random --n-trials 2`" in text
    assert "| wall time | 43.0 s | 0.83 / 2.25 / 2.13 |" in text  # the 1-minute load: start / max / end
    assert "| trials COMPLETE (FAIL) | 2 (0) |" in text and "1,057 MB (the feature extraction process)" in text
    assert "WARNING: 1-minute load average at start 0.83 > 0.5" in text
    assert "avx512_bf16: yes" in text and "keras 3.15.1, jax 0.10.2, tensorflow 2.21.0, optuna 5.0.0" in text
    assert not any(p in text for p in MACHINE_PATHS)


def test_results_md_section_is_added_then_each_command_block_replaced():
    a = study.block(RECORDED_STUDY, "python -m benchmarks.study")
    b = study.block({**RECORDED_STUDY, "wall_s": 99.0}, "python -m benchmarks.study --workers 2")
    text = study.update_results("# Results\n\nearlier text\n", "python -m benchmarks.study", a)
    text = study.update_results(text, "python -m benchmarks.study --workers 2", b)
    assert text.startswith("# Results\n\nearlier text\n") and text.count(study.SECTION_TITLE) == 1
    again = study.update_results(text, "python -m benchmarks.study",
                                 study.block({**RECORDED_STUDY, "wall_s": 61.0}, "python -m benchmarks.study"))
    assert again.count("<!-- run: python -m benchmarks.study -->") == 1
    assert "| wall time | 61.0 s (1 min 01 s)" in again and "| wall time | 43.0 s" not in again
    assert "| wall time | 99.0 s (1 min 39 s)" in again  # the other block is kept
    first, second = "run: python -m benchmarks.study -->", "run: python -m benchmarks.study --workers 2"
    assert again.index(first) < again.index(second)  # replaced in place, not moved
    assert again.rstrip().endswith(study.SECTION_END)


def test_committed_results_md_names_no_machine_path():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert [line for line in text.splitlines() if any(p in line for p in MACHINE_PATHS)] == []


@pytest.mark.slow
@needs_real_fashion
def test_study_benchmark_smoke_end_to_end(tmp_path):
    out, results = tmp_path / "smoke.json", tmp_path / "RESULTS.md"
    results.write_text("# Results\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.study", "--study", "smoke", "--n-trials", "2",
                           "--out", str(out), "--md", "--results", str(results)],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    res = json.loads(out.read_text())
    assert res["returncode"] == 0 and res["trials"]["complete"] == 2 and res["trials"]["fail"] == 0
    assert res["extraction_s"] is not None  # a fresh cache: the run extracted the features itself
    assert res["memory"]["max_tree_mb"] >= res["memory"]["max_process_mb"] > 0
    assert res["trials"]["max_trial_peak_memory_mb"] > 0 and len(res["load_avg_max"]) == 3
    md = results.read_text()
    assert "<!-- run: python -m benchmarks.study --study smoke --n-trials 2 -->" in md
    assert "| trials COMPLETE (FAIL) | 2 (0) |" in md and not any(p in md for p in MACHINE_PATHS)


@pytest.mark.slow
@needs_real_fashion
def test_benchmark_features_and_trial_are_the_services_own(tmp_path):
    """benchmarks.common.ensure_features extracts through search.Search (fmnist_reg's own cache entry), times it
    once, and benchmarks.trial's job is that study's trial on it."""
    first = ensure_features(tmp_path, 200)
    assert first.n == 200 and first.extraction["n"] == 200 and first.extraction["wall_s"] > 0
    again = ensure_features(tmp_path, 200)
    assert (again.key, again.extraction) == (first.key, None)  # cached: read, not extracted or timed again
    spec = btrial.fmnist_reg_spec(tmp_path, 200, epochs=2)
    assert (spec["key"], spec["params"]["epochs"], spec["params"]["dropout"]) == (first.key, 2, 0.5)
    assert not (tmp_path / "no-study.db").exists()


def _stored_study(path, trials):
    """A SQLite study holding COMPLETE trials given as (params, train_time_s, eval_time_s, wall, snapshot)."""
    import datetime as dt

    import optuna

    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s", directions=["maximize"])
    start = dt.datetime(2026, 1, 1)
    for params, fit, ev, wall, snap in trials:
        attrs = {"train_time_s": fit, "eval_time_s": ev, "test_time_s": 1.0, **({"snapshot_of": 0} if snap else {})}
        study.add_trial(optuna.trial.FrozenTrial(  # create_trial sets no times; a trial's wall time is the point
            number=0, trial_id=0, state=optuna.trial.TrialState.COMPLETE, value=None, values=[0.5],
            datetime_start=start, datetime_complete=start + dt.timedelta(seconds=wall), params=params,
            distributions={"x": optuna.distributions.IntDistribution(0, 9)}, user_attrs=attrs, system_attrs={},
            intermediate_values={}))
    return str(path)


def test_paired_compares_only_trials_with_the_same_number_and_parameters(tmp_path):
    from benchmarks import paired

    old = _stored_study(tmp_path / "old.db", [({"x": 1}, 100.0, 8.0, 120.0, False), ({"x": 2}, 50.0, 4.0, 60.0, False),
                                              ({"x": 3}, 10.0, 1.0, 20.0, False)])
    new = _stored_study(tmp_path / "new.db", [({"x": 1}, 110.0, 2.0, 118.0, False), ({"x": 2}, 55.0, 1.0, 60.0, False),
                                              ({"x": 4}, 10.0, 1.0, 20.0, False)])   # trial 2 drew other parameters
    a, b = paired.trials(old, None), paired.trials(new, None)
    assert paired.paired(a, b) == [0, 1]
    text = paired.summary(a, b)
    assert text.startswith("2 paired trials (numbers 0, 1:")
    assert "| fit (train_time_s), mean | 75.00 s | 82.50 s | 1.100 |" in text
    assert "| per-epoch evaluation (eval_time_s), mean | 6.00 s | 1.50 s | 0.250 |" in text
    assert "| outside fit (wall - train_time_s), mean | 15.00 s | 6.50 s | 0.433 |" in text


def test_paired_leaves_out_snapshots(tmp_path):
    from benchmarks import paired

    db = _stored_study(tmp_path / "s.db", [({"x": 1}, 10.0, 1.0, 12.0, False), ({"x": 1}, 5.0, 1.0, 12.0, True)])
    assert list(paired.trials(db, "s")) == [0]


def test_a_benchmark_without_the_bench_extra_says_which_extra_in_one_line(monkeypatch, capsys, tmp_path):
    import importlib
    import importlib.util

    module, argv, missing = "snapshots", ["--smoke"], "moocore"

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    monkeypatch.chdir(tmp_path)
    bench = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: python -m benchmarks.{module} needs {missing} (the 'bench' extra): "
                                       f"pip install -e '.[bench]'\n")
    assert list(tmp_path.iterdir()) == []


def _run(variant, points, seed=0):
    """A benchmarks.snapshots run: (seconds, accuracy, train_time_s, snapshot) per COMPLETE point."""
    return {"variant": variant, "seed": seed, "stopped_early": 0,
            "points": [{"t": t, "v": [acc, time], "snapshot": snap} for t, acc, time, snap in points]}


def test_snapshots_hypervolume_is_the_dominated_fraction_of_the_reference_box():
    from benchmarks import snapshots

    directions = ["maximize", "minimize"]
    assert snapshots.hypervolume([[1.0, 0.0]], (0.0, 10.0), directions) == pytest.approx(1.0)  # the ideal point
    assert snapshots.hypervolume([[0.5, 5.0]], (0.0, 10.0), directions) == pytest.approx(0.25)
    assert snapshots.hypervolume([[0.5, 5.0], [0.5, 6.0]], (0.0, 10.0), directions) == pytest.approx(0.25)
    assert snapshots.hypervolume([[0.5, 11.0]], (0.0, 10.0), directions) == 0.0  # outside the box adds nothing


def test_snapshots_marks_count_only_points_completed_by_then_and_plain_trials_set_the_reference():
    from benchmarks import snapshots

    plan = snapshots.parse_args(["--smoke", "--marks", "1,2", "--variants", "plain,snapshots", "--ref", "0,10"])
    plain = _run("plain", [(30, 0.5, 5.0, False), (90, 0.6, 5.0, False), (100, 0.5, 1.0, False),
                           (110, 0.9, 1.0, False)])
    snaps = _run("snapshots", [(20, 0.5, 5.0, True), (50, 0.6, 5.0, False)])
    summary = snapshots.summarize(plan, [plain, snaps], ["maximize", "minimize"])
    assert summary["reference"] == pytest.approx(0.5)  # the first 3 plain trials: (0.6 x 5 + 0.5 x 9 - 0.5 x 5) / 10
    assert summary["table"]["plain"]["mean"] == {1.0: pytest.approx(0.25), 2.0: pytest.approx(0.81)}
    assert summary["table"]["snapshots"]["mean"] == {1.0: pytest.approx(0.3), 2.0: pytest.approx(0.3)}
    assert summary["table"]["plain"]["reached_reference_s"] == [100]
    assert summary["table"]["snapshots"]["reached_reference_s"] == [None]
    assert (summary["table"]["snapshots"]["trials"], summary["table"]["snapshots"]["snapshot_points"]) == ([1], [1])


@pytest.mark.slow
@needs_real_fashion
def test_snapshots_benchmark_smoke_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.snapshots", "--smoke", "--minutes", "0.4", "--marks",
                           "0.2,0.4", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in res["runs"]] == [("plain", 0), ("snapshots", 0), ("moasha", 0)]
    assert res["runs"][0]["extractions"] and not res["runs"][1]["extractions"]  # extracted once, before the clock
    assert all(r["points"] for r in res["runs"]) and any(p["snapshot"] for p in res["runs"][1]["points"])
    assert all(p["t"] > 0 for r in res["runs"] for p in r["points"])
    assert "| plain | " in (tmp_path / "summary.md").read_text()
