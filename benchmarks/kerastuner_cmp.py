"""The fmnist_reg search space run two ways on the same data slice and number of trials:
this service (``python -m search.run``: features extracted once, heads trained per trial in a child)
and KerasTuner as its users write it (the frozen backbone inside the model, trained every trial)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import child

SPLITS = [0.5, 0.6, 0.7, 0.8, 0.9]
REGS = [0.0, 1e-5, 1e-4, 1e-3]

CONFIG = """description = "benchmarks: fmnist_reg's search space on a slice, epochs scaled down"
[dataset]
name = "fashion_mnist"
subset = {subset}
[backbone]
weights = "random"
[preprocessing]
name = "unit"
[head]
units = 1024
[training]
learning_rate = 1e-3
batch_size = 32
[search_space]
split_ratio = {{ type = "categorical", choices = {splits} }}
l1 = {{ type = "categorical", choices = {regs} }}
l2 = {{ type = "categorical", choices = {regs} }}
dropout = {{ type = "float", low = 0.1, high = 0.7 }}
epochs = {{ type = "int", low = {lo}, high = {hi} }}
[[objectives]]
metric = "accuracy"
direction = "maximize"
[[objectives]]
metric = "roc_auc"
direction = "maximize"
[[objectives]]
metric = "train_time_s"
direction = "minimize"
[[objectives]]
metric = "peak_memory_mb"
direction = "minimize"
[sampler]
name = "tpe"
seed = 0
[run]
n_trials = {n_trials}
"""


def ours(workdir: Path, subset: int, n_trials: int, epochs: tuple[int, int]) -> dict[str, Any]:
    """The service's CLI from an empty feature cache: extraction included in the wall time."""
    import optuna

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "kt_compare.toml"
    cfg.write_text(CONFIG.format(subset=subset, splits=SPLITS, regs=REGS, lo=epochs[0], hi=epochs[1],
                                 n_trials=n_trials))
    db = workdir / "kt_compare.db"
    db.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "search.run", "--study", str(cfg), "--storage", f"sqlite:///{db}",
           "--cache-dir", str(workdir / "cache")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SEARCH_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"search.run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    study = optuna.load_study(study_name="kt_compare", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"wall_s": wall, "n_complete": len(done), "best_accuracy": max(t.values[0] for t in done),
            "max_peak_memory_mb": max(t.values[3] for t in done),
            "extraction_log": next((line for line in proc.stderr.splitlines() + proc.stdout.splitlines()
                                    if "features cached" in line), "")}


def kt_search(spec: dict[str, Any], report) -> dict[str, Any]:
    """Child target: KerasTuner RandomSearch, the backbone inside the model."""
    import keras
    import keras_tuner as kt
    from sklearn.model_selection import train_test_split

    from search.data import datasets
    from search.features import backbones

    start = time.perf_counter()
    pooled = datasets.load_pooled("fashion_mnist", None, spec["subset"])
    x = backbones.to_backbone_input(pooled.images, "unit")  # the same [0, 1] pixels, 3 channels, 32x32
    y = pooled.labels
    lo, hi = spec["epochs"]

    class Transfer(kt.HyperModel):
        def build(self, hp):
            keras.utils.set_random_seed(0)
            base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3),
                                               pooling="avg")
            base.trainable = False
            reg = keras.regularizers.L1L2(l1=hp.Choice("l1", REGS), l2=hp.Choice("l2", REGS))
            inputs = keras.Input((32, 32, 3))
            h = base(inputs, training=False)
            h = keras.layers.Dense(1024, activation="relu", kernel_regularizer=reg)(h)
            h = keras.layers.Dropout(hp.Float("dropout", 0.1, 0.7))(h)
            model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            return model

        def fit(self, hp, model, x, y, **kwargs):
            xtr, xte, ytr, yte = train_test_split(x, y, train_size=hp.Choice("split_ratio", SPLITS),
                                                  stratify=y, random_state=0)
            model.fit(xtr, ytr, batch_size=32, epochs=hp.Int("epochs", lo, hi), verbose=0, **kwargs)
            return {"accuracy": model.evaluate(xte, yte, batch_size=256, verbose=0, return_dict=True)["accuracy"]}

    tuner = kt.RandomSearch(Transfer(), objective=kt.Objective("accuracy", "max"), max_trials=spec["n_trials"],
                            seed=0, directory=spec["directory"], project_name="kt", overwrite=True)
    tuner.search(x, y)
    trials = [t for t in tuner.oracle.trials.values() if t.score is not None]
    if not trials:
        failed = [t.message for t in tuner.oracle.trials.values() if t.message]
        raise RuntimeError("no KerasTuner trial completed: " + (failed[0].strip().splitlines()[-1] if failed else "?"))
    return {"wall_s": time.perf_counter() - start, "n_complete": len(trials),
            "best_accuracy": float(max(t.score for t in trials)), "keras_tuner": kt.__version__}


def compare(workdir: Path, subset: int, n_trials: int, epochs: tuple[int, int]) -> dict[str, Any]:
    o = ours(workdir / "ours", subset, n_trials, epochs)
    t = child("benchmarks.kerastuner_cmp:kt_search",
              {"subset": subset, "n_trials": n_trials, "epochs": list(epochs), "directory": str(workdir / "kt")})
    k = {**t.result, "process_wall_s": t.wall_s, "peak_memory_mb": t.peak_memory_mb}
    return {"subset": subset, "n_trials": n_trials, "epochs": list(epochs), "ours": o, "keras_tuner": k,
            "speedup": k["process_wall_s"] / o["wall_s"]}
