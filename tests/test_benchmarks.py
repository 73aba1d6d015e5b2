"""benchmarks/: the measurement machinery on tiny inputs (fast), and ``python -m benchmarks.run --quick`` (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import optuna_overhead
from benchmarks.common import child, gemm_gflops, head_train_flops, matmul_gflops
from benchmarks.report import markdown, targets
from tests.conftest import ROOT, cli_env, needs_real_fashion


def test_head_flops_skip_the_input_gradient_of_the_first_layer():
    # forward 2 + weight gradient 2 for 2048x1024; forward, weight and input gradient (6) for 1024x10
    assert head_train_flops(1, 1024) == 2 * 2048 * 1024 * 2 + 2 * 1024 * 10 * 3
    assert head_train_flops(10, 8) == 10 * head_train_flops(1, 8)


def test_numpy_limits_are_positive():
    assert matmul_gflops(128, repeats=1) > 0
    assert gemm_gflops(8, 64, 32, min_seconds=0.01) > 0


def test_head_sweep_on_tiny_synthetic_features():
    spec = {"n_rows": 256, "units": 16, "batch_sizes": [32, 128], "epochs": 2,
            "accuracy": {"batch_size": 64, "epochs": 1}}
    t = child("benchmarks.head_speed:sweep", spec)
    rows = t.result["rows"]
    assert [r["batch_size"] for r in rows] == [32, 128]
    assert all(len(r["epoch_s"]) == 2 and r["gflops"] > 0 for r in rows)
    assert 0 <= t.result["accuracy"]["accuracy"] <= 1
    assert t.peak_memory_mb > 0


def test_optuna_overhead_on_a_few_trials(tmp_path):
    r = optuna_overhead.measure(12, tmp_path, window=5)
    assert [w["trials"] for w in r["service_curve"]] == ["1-5", "6-10", "11-12"]
    assert r["per_trial_at_end_s"] > 0 and r["sampler_at_end_s"] > 0


def _fake_result(trial_subset: int) -> dict:
    sweep = lambda name: {"name": name, "n_rows": 100, "rows": [  # noqa: E731
        {"batch_size": 32, "steady_epoch_s": 1.0, "gflops": 20.0}, {"batch_size": 256, "steady_epoch_s": 0.2, "gflops": 90.0}]}
    t = {"backend": "tensorflow", "storage": "float32", "epochs": 3, "n_train": 56000, "wall_s": 100.0,
         "train_time_s": 90.0, "test_time_s": 1.0, "epoch_s": [32.0, 29.0, 29.0], "first_epoch_s": 32.0,
         "steady_epoch_s": 29.0, "non_training_s": 10.0, "peak_memory_mb": 1500.0, "accuracy": 0.8, "roc_auc": 0.97}
    return {"plan": "full", "plan_settings": {"trial_subset": trial_subset}, "command": "python -m benchmarks.run",
            "weights": "random", "wall_s": 1.0,
            "machine": {"cpu": "cpu", "cores": 2, "date": "today", "load_avg_at_start": [1.0], "load_avg_at_end": [1.0]},
            "limit": {"matmul_gflops": 150.0, "matmul_4096_gflops_start": 150.0, "matmul_4096_gflops_end": 140.0,
                      "gemm_head_shape_gflops": {32: 10.0}},
            "cache_vs_full": {"fit_ratio": 12.0, "last_epoch_ratio": 13.0, "cached_fit_s": 1.0, "full_fit_s": 12.0,
                              "cached_epoch_s": [0.6, 0.4], "full_epoch_s": [7.0, 5.0], "cached_accuracy": 0.5,
                              "full_accuracy": 0.5, "n_train": 1000, "epochs": 2, "full_train_images_per_s": 200.0,
                              "full_preprocess_s": 0.1},
            "extraction": {"n_images": 70000, "wall_s": 200.0, "steady": True, "images_per_s": 390.0, "gflops": 60.0,
                           "share_of_matmul": 0.4, "flops_per_image": 1.5e8, "peak_memory_mb": 1100.0,
                           "forward_images_per_s": 400.0, "forward_gflops": 61.0},
            "head_sweeps": [sweep("tensorflow"), sweep("jax")], "trials": [t], "trial_n_images": 70000,
            "optuna": {"n_trials": 500, "per_trial_at_end_s": 0.2, "total_s": 80.0,
                       "service_curve": [{"trials": "1-50", "mean_ms": 200.0}],
                       "sampler_curve": [{"trials": "1-50", "mean_ms": 20.0}]},
            "keras_tuner": {"epochs": [1, 3], "subset": 2500, "n_trials": 4, "speedup": 3.0,
                            "ours": {"wall_s": 60.0, "best_accuracy": 0.6, "max_peak_memory_mb": 900.0},
                            "keras_tuner": {"keras_tuner": "1.4.8", "process_wall_s": 180.0, "best_accuracy": 0.5,
                                            "peak_memory_mb": 1400.0}}}


def test_targets_and_markdown_from_a_result():
    res = _fake_result(trial_subset=0)
    res["targets"] = ts = targets(res)
    met = {t["target"]: t["met"] for t in ts}
    assert met["cached trial >= 10x faster than backbone in the loop (batch 32)"] is True
    assert met["head training >= 50% of numpy matmul at best batch (tensorflow)"] is True  # 90 / 150
    assert met["trial peak memory < 2 GB (tensorflow)"] is True
    res["trials"].append({**res["trials"][0], "backend": "jax", "peak_memory_mb": 2100.0})
    met = {t["target"]: t["met"] for t in targets(res)}
    assert met["trial peak memory < 2 GB (jax (the service's default))"] is False  # per backend, not pooled
    res["trials"].pop()
    study = [t for t in ts if t["target"].startswith("30-trial")]
    # 30 x (10 + (32 + 14 x 29) x 0.7/0.8 + 0.2) s + 200 s extraction = 3.33 h
    assert len(study) == 1 and study[0]["met"] is False and "3.33 h" in study[0]["value"]
    md = markdown(res)
    assert "| cached trial >= 10x faster" in md and "KerasTuner 1.4.8" in md and "| 1-50 | 200 | 20 |" in md


def test_quick_plan_does_not_claim_the_full_study():
    res = _fake_result(trial_subset=2000)
    ts = targets(res)
    assert any(t["target"].startswith("30-trial") and t["met"] is None for t in ts)


@pytest.mark.slow
@needs_real_fashion
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["cache_vs_full"]["fit_ratio"] > 1
    assert {s["name"] for s in res["head_sweeps"]} >= {"tensorflow", "jax"}
    assert "| cached trial >= 10x faster" in proc.stdout
    assert out.with_suffix(".md").is_file()
