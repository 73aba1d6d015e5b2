"""search.trial.metrics: values agree with a case worked by hand and with scikit-learn; every stored name says its split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from search.config.choices import METRICS, QUALITY, stored_name
from search.trial import metrics
from search.trial.metrics import evaluate


def test_hand_worked_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.1, .2, .7], [.6, .2, .2]])
    m = evaluate(y, proba, 3, reduced=(0, 2))
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class_recall"] == [0.5, 1.0, 0.5]
    assert m["worst_class_recall"] == 0.5
    assert m["reduced_recall"] == 0.5  # mean recall of classes 0 and 2
    assert np.isclose(m["recall"], 2 / 3) and np.isclose(m["balanced_accuracy"], 2 / 3)
    assert np.isclose(m["precision"], (0.5 + 2 / 3 + 1) / 3)  # per class: 1/2, 2/3, 1/1
    assert evaluate(y, proba, 3, reduced=(1,))["reduced_recall"] == 1.0


def test_against_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)) + 2 * np.eye(10)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = evaluate(y, proba, 10)
    pred = proba.argmax(1)
    assert np.isclose(m["accuracy"], skm.accuracy_score(y, pred))
    assert np.isclose(m["f1"], skm.f1_score(y, pred, average="macro"))
    assert np.isclose(m["precision"], skm.precision_score(y, pred, average="macro"))
    assert np.isclose(m["recall"], skm.recall_score(y, pred, average="macro"))
    assert np.isclose(m["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
    assert np.isclose(m["roc_auc"], skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    # The paper's "ROC" of hard predictions is lower than the AUC of the probabilities.
    assert m["roc_auc_hard"] < m["roc_auc"]


def test_a_class_absent_from_the_predictions_has_zero_precision_not_an_error():
    y = np.array([0, 1, 2, 0, 1, 2])
    proba = np.eye(3)[[0, 0, 0, 0, 1, 1]] * 0.9 + 0.1 / 3  # class 2 is never predicted
    m = evaluate(y, proba, 3)
    assert m["per_class_recall"][2] == 0.0 and m["worst_class_recall"] == 0.0
    assert np.isfinite([m["precision"], m["f1"], m["roc_auc"]]).all()


def test_every_quality_metric_is_stored_with_its_split():
    m = evaluate(np.array([0, 1, 2]), np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]), 3)
    val, test = metrics.prefixed(m, "validation"), metrics.prefixed(m, "test")
    assert set(val) == {f"val_{k}" for k in m} and set(test) == {f"test_{k}" for k in m}
    assert set(QUALITY) <= set(m)  # evaluate measures every registered quality metric
    assert stored_name("accuracy", "validation") == "val_accuracy"
    assert stored_name("roc_auc", "test") == "test_roc_auc"
    assert stored_name("train_time_s", "validation") == "train_time_s"  # a resource has no split
    assert stored_name("trial_memory_mb", "test") == "trial_memory_mb"


@pytest.mark.parametrize("name", METRICS)
def test_every_metric_is_documented_with_a_direction(name):
    m = METRICS[name]
    assert m.kind in ("quality", "resource") and m.direction in ("maximize", "minimize") and m.doc
