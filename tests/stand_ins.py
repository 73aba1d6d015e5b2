"""Stand-in trials for tests of the run's machinery (concurrency, retries, signals, time limits).

``fast_trial`` is a trial target like ``search.trial.child:run_trial``: it runs in its own process
(search.isolate), reads and verifies the feature cache as a trial does, then sleeps instead of
training and returns measures of the contract's shape (``val_*``/``test_*`` by split, times, counts),
derived deterministically from the trial's parameters by ``measures``, so a test can tell that each
trial's values arrived on that trial.  It is selected by ``python -m tests.stand_in_cli``
(``search.run.main(trial_target=...)``), never by anything in ``search/``.

Behaviour, from the environment of the test that starts the run:
- ``STAND_IN_S``: seconds to sleep (default 0.2);
- ``STAND_IN_LOG``: a file that gets one JSON line per trial process started (pid, params, seed);
- ``STAND_IN_FAIL``: JSON params (e.g. ``{"l2": 1e38}``): a trial with those values fails as a
  non-finite loss does (TrialFailed kind "nan"), while the file ``STAND_IN_FAIL_WHILE`` exists (if set);
- ``STAND_IN_PICTURES=1``: return one small PNG as the trial's picture.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from typing import Any

QUALITY = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "roc_auc_hard",
           "worst_class_recall", "reduced_recall")
PER_CLASS = 5  # evaluated images per class
# A valid 1x1 PNG (what the trial process hands the coordinator to upload).
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082")


def _split_measures(params: dict[str, Any], split: str, n: int, reduced: list[int]) -> dict[str, Any]:
    key = json.dumps({"params": params, "split": split}, sort_keys=True)
    rng = random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))
    right = [rng.randint(1, PER_CLASS) for _ in range(n)]
    # Class i: right[i] correct, the rest predicted as class i+1.
    cm = [[right[i] if j == i else (PER_CLASS - right[i] if j == (i + 1) % n else 0) for j in range(n)]
          for i in range(n)]
    recall = [r / PER_CLASS for r in right]
    precision = [right[j] / max(1, sum(cm[i][j] for i in range(n))) for j in range(n)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    acc = sum(right) / (PER_CLASS * n)
    out = {"accuracy": acc, "balanced_accuracy": sum(recall) / n, "precision": sum(precision) / n,
           "recall": sum(recall) / n, "f1": sum(f1) / n, "roc_auc": 0.5 + acc / 2, "roc_auc_hard": 0.5 + acc / 4,
           "worst_class_recall": min(recall),
           "reduced_recall": sum(recall[c] for c in reduced) / len(reduced) if reduced else float("nan"),
           "per_class_recall": recall, "confusion_matrix": cm}
    prefix = {"validation": "val", "test": "test"}[split]
    return {f"{prefix}_{k}": v for k, v in out.items()}


def measures(spec: dict[str, Any], seconds: float = 0.0) -> dict[str, Any]:
    """What ``fast_trial`` returns for ``spec`` (without the process measures the coordinator adds)."""
    from search.data.datasets import reduced_classes

    params, n = spec["params"], spec["n_classes"]
    split = spec["evaluation"]
    reduced = list(reduced_classes(params.get("profile", "paper"), n, tuple(spec["reduce_classes"])))
    out: dict[str, Any] = {}
    if split == "validation":
        out.update(_split_measures(params, "validation", n, reduced))
    out.update(_split_measures(params, "test", n, reduced))
    out.update(
        objective_split=split, keras_backend=os.environ.get("KERAS_BACKEND", "none"),
        threads=len(os.sched_getaffinity(0)), train_time_s=seconds, compile_time_s=0.0, epoch_time_s=seconds,
        eval_time_s=0.0, epochs_run=1, test_time_s=0.0, n_train=10 * n, n_test=PER_CLASS * n,
        history={"loss": [1.0], "accuracy": [0.5], "epoch_time_s": [seconds]},
        handling=params.get("handling", "none"), reduced_classes=reduced,
        imbalance_profile=params.get("profile", "paper") if params.get("balance") == "imbalanced" else "none",
        train_class_counts=[10] * n, fit_class_counts=[10] * n, test_class_counts=[PER_CLASS] * n)
    if split == "validation":
        out.update(val_time_s=0.0, n_val=PER_CLASS * n, val_class_counts=[PER_CLASS] * n)
    return out


def fast_trial(spec: dict[str, Any], report: Any) -> dict[str, Any]:
    from search import isolate
    from search.errors import TrialFailed
    from search.features import feature_cache

    seconds = float(os.environ.get("STAND_IN_S", "0.2"))
    log = os.environ.get("STAND_IN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "params": spec["params"], "seed": spec["seed"]}) + "\n")
    isolate.mark_baseline()
    report(stage="training", epoch=0, epochs=1)
    time.sleep(seconds)
    # Read the rows as a trial does: every block verified (a damaged cache raises CacheError).
    store = feature_cache.FeatureStore(spec["cache_dir"], spec["key"])
    store.verify_all()
    store.close()
    fail = os.environ.get("STAND_IN_FAIL")
    gate = os.environ.get("STAND_IN_FAIL_WHILE")
    if fail and all(spec["params"].get(k) == v for k, v in json.loads(fail).items()) \
            and (not gate or os.path.exists(gate)):
        raise TrialFailed("training loss became NaN/inf at epoch 1", kind="nan")
    report(stage="training", epoch=1, epochs=1, loss=1.0)
    out = measures(spec, seconds)
    if spec.get("pictures") and os.environ.get("STAND_IN_PICTURES") == "1":
        d = tempfile.mkdtemp(prefix="search-pictures-")
        path = os.path.join(d, "test_confusion_matrix.png")
        with open(path, "wb") as f:
            f.write(PNG)
        out["pictures"] = [path]
    return out
