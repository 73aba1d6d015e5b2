"""Metrics agree with scikit-learn and with a case worked by hand."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from search.metrics import evaluate


def test_hand_worked_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.1, .2, .7], [.6, .2, .2]])
    m = evaluate(y, proba, 3)
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class_recall"] == [0.5, 1.0, 0.5]
    assert m["worst_class_recall"] == 0.5
    assert np.isclose(m["recall"], 2 / 3)
    # precision per class: 1/2, 2/3, 1/1
    assert np.isclose(m["precision"], (0.5 + 2 / 3 + 1) / 3)


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
    assert 0.5 < m["roc_auc"] <= 1.0
