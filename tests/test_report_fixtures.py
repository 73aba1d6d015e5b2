"""Fixture studies for the report tests, built in milliseconds: no Keras, no training, no command line.

Each trial is added with ``optuna.trial.create_trial`` and carries the user attributes a real trial
writes (split-prefixed quality metrics, resources, context, per-epoch ``history``), so the report reads
exactly what it would read from ``search.run``.  This module holds builders only; the tests are in the
other ``test_report_*`` modules.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
FOUR = [("test_accuracy", "maximize"), ("test_roc_auc", "maximize"), ("train_time_s", "minimize"),
        ("peak_memory_mb", "minimize")]
IMAGENET = "imagenet:resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RANDOM = "random(seed=0)"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def new_study(storage: str | None, name: str, objectives: list[tuple[str, str]], *, split: str = "test",
              weights: str | None = IMAGENET, config_name: str | None = None, split_attr: bool = True,
              extra_config: dict[str, Any] | None = None) -> optuna.Study:
    """A study as ``search.run`` creates it: named objectives, identity, config, data, objective split."""
    study = optuna.create_study(storage=storage, study_name=name, directions=[d for _, d in objectives])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([m for m, _ in objectives])
    if weights is not None:
        study.set_user_attr("search:identity", {"backbone": {"name": "resnet50", "weights": weights}})
    config = {"name": config_name or name, "dataset": {"name": "fashion_mnist"},
              "training": {"evaluation": split, "validation_fraction": 0.2}, **(extra_config or {})}
    study.set_user_attr("search:config", config)
    study.set_user_attr("search:data", {"source": "fixture", "n_images": 1000, "class_names": CLASS_NAMES,
                                        "class_counts": [100] * 10})
    if split_attr:
        study.set_user_attr("search:objective_split", split)
    return study


def history(final_accuracy: float, epochs: int, split: str = "test", start: float = 0.3) -> dict[str, list[float]]:
    """A per-epoch history whose evaluation accuracy ends at ``final_accuracy``."""
    prefix = "val_" if split == "validation" else "test_"
    step = (final_accuracy - start) / max(1, epochs - 1)
    ev = [round(start + step * e, 6) for e in range(epochs)]
    ev[-1] = final_accuracy
    return {"loss": [round(2.0 / (e + 1), 6) for e in range(epochs)],
            "accuracy": [round(min(1.0, a + 0.05), 6) for a in ev],
            f"{prefix}accuracy": ev,
            "epoch_time_s": [1.5] * epochs}


def attrs(accuracy: float, roc_auc: float, train_time_s: float, peak_memory_mb: float, *, split: str = "test",
          backend: str = "jax", settings: dict[str, Any] | None = None, epochs: int = 3,
          roc_auc_hard: float | None = None, **extra: Any) -> dict[str, Any]:
    """The user attributes of one trial, shaped as search/trial/child.py writes them."""
    out: dict[str, Any] = {"objective_split": split, "keras_backend": backend}
    recall = [round(min(1.0, accuracy + (c - 4.5) / 50), 4) for c in range(10)]
    quality = {"accuracy": accuracy, "balanced_accuracy": accuracy, "precision": accuracy - 0.01,
               "recall": accuracy, "f1": accuracy - 0.02, "roc_auc": roc_auc,
               "roc_auc_hard": roc_auc_hard if roc_auc_hard is not None else 4 / 9 + 5 * accuracy / 9,
               "worst_class_recall": min(recall), "reduced_recall": sum(recall[:3]) / 3}
    splits = ["val_", "test_"] if split == "validation" else ["test_"]
    for prefix in splits:
        # Held-out test metrics of a validation study differ from the validation ones, as they would.
        shift = -0.01 if (prefix == "test_" and split == "validation") else 0.0
        for m, v in quality.items():
            out[prefix + m] = round(v + shift, 6)
        out[prefix + "per_class_recall"] = recall
        out[prefix + "confusion_matrix"] = [[10 if i == j else 0 for j in range(10)] for i in range(10)]
    out.update({"train_time_s": train_time_s, "compile_time_s": 0.4, "epoch_time_s": 1.5, "cpu_time_s": 2.0,
                "threads": 2, "val_time_s": 0.1, "test_time_s": 0.2, "peak_memory_mb": peak_memory_mb,
                "baseline_memory_mb": 400.0, "trial_memory_mb": peak_memory_mb - 400.0,
                "n_train": 800, "n_val": 100, "n_test": 100, "handling": "none", "imbalance_profile": "paper",
                "resolved_params": {"split_ratio": 0.8, "dropout": 0.5, "l1": 0.0, "l2": 0.0, "epochs": epochs,
                                    "balance": "balanced", **(settings or {})},
                "history": history(quality["accuracy"] if split == "test" else accuracy, epochs, split)})
    out.update(extra)
    return out


def add(study: optuna.Study, values: list[float], user_attrs: dict[str, Any], params: dict[str, Any] | None = None,
        distributions: dict[str, Any] | None = None, state=optuna.trial.TrialState.COMPLETE,
        constraints: dict[str, float] | None = None) -> None:
    study.add_trial(optuna.trial.create_trial(
        state=state, values=values if state == optuna.trial.TrialState.COMPLETE else None,
        params=params or {}, distributions=distributions or {}, user_attrs=user_attrs, constraints=constraints))


SEARCH_DISTS = {"dropout": FloatDistribution(0.1, 0.7), "l2": CategoricalDistribution([0.0, 1e-4]),
                "split_ratio": CategoricalDistribution([0.5, 0.9])}
# (dropout, l2, split_ratio, accuracy, roc_auc, train_time_s, peak_memory_mb): accuracy rises with the split
# and falls with dropout; time rises with the split; memory is flat.
SEARCH_TRIALS = [
    (0.1, 0.0, 0.9, 0.86, 0.97, 30.0, 1500.0),
    (0.3, 1e-4, 0.5, 0.70, 0.93, 18.0, 1490.0),
    (0.5, 0.0, 0.5, 0.66, 0.91, 17.0, 1510.0),
    (0.7, 1e-4, 0.9, 0.74, 0.94, 29.0, 1495.0),
    (0.2, 0.0, 0.5, 0.71, 0.92, 19.0, 1480.0),
    (0.6, 0.0, 0.9, 0.77, 0.95, 31.0, 1505.0),
    (0.4, 1e-4, 0.9, 0.80, 0.96, 28.0, 1520.0),
    (0.25, 1e-4, 0.5, 0.69, 0.935, 16.0, 1530.0),
]


def search_study(storage: str | None, name: str = "search", *, split: str = "test", weights: str | None = IMAGENET,
                 infeasible: bool = True, failed: bool = True) -> optuna.Study:
    """A 4-objective search over dropout, l2 and split ratio: 8 COMPLETE trials, one infeasible, one FAIL."""
    p = "val_" if split == "validation" else "test_"
    study = new_study(storage, name, [(p + "accuracy", "maximize"), (p + "roc_auc", "maximize"),
                                      ("train_time_s", "minimize"), ("peak_memory_mb", "minimize")],
                      split=split, weights=weights)
    for dropout, l2, ratio, acc, auc, time_s, mem in SEARCH_TRIALS:
        params = {"dropout": dropout, "l2": l2, "split_ratio": ratio}
        add(study, [acc, auc, time_s, mem], attrs(acc, auc, time_s, mem, split=split, settings=params), params,
            SEARCH_DISTS, constraints={"max_peak_memory_mb": mem - 2000.0})
    if infeasible:  # the best accuracy, AUC and time, but over its memory budget: never Pareto-optimal
        params = {"dropout": 0.15, "l2": 0.0, "split_ratio": 0.9}
        add(study, [0.95, 0.99, 10.0, 4000.0], attrs(0.95, 0.99, 10.0, 4000.0, split=split, settings=params),
            params, SEARCH_DISTS, constraints={"max_peak_memory_mb": 2000.0})
    if failed:
        add(study, [], {"fail_reason": "NaN loss"}, {"dropout": 0.5, "l2": 0.0, "split_ratio": 0.5}, SEARCH_DISTS,
            state=optuna.trial.TrialState.FAIL)
    return study


def small_study(storage: str | None, name: str = "search", n: int = 3) -> optuna.Study:
    """``n`` COMPLETE trials of a 2-objective search over dropout: every figure drawable, quickly."""
    study = new_study(storage, name, [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    for i in range(n):
        dropout, acc, time_s = 0.1 + 0.2 * i, 0.8 - 0.05 * i, 30.0 - 5 * i
        params = {"dropout": dropout}
        add(study, [acc, time_s], attrs(acc, 0.9, time_s, 1000.0, settings=params), params,
            {"dropout": SEARCH_DISTS["dropout"]})
    return study
