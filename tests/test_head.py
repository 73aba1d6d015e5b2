"""search.training.head: the head the paper describes, trained with honest times (whole fit, compilation, a steady epoch,
evaluation excluded), stopped by after_epoch, failed on a non-finite loss; balanced class weights."""

from __future__ import annotations

import time

import numpy as np
import pytest

from search import runtime
from search.errors import TrialFailed
from search.training import head

P = head.HeadParams(units=16, dropout=0.2, l1=0.0, l2=0.0, learning_rate=3e-3, batch_size=16, epochs=3)


def train_head(x, y, n_classes, p, seed):
    model = head.build_head(x.shape[1], n_classes, p, seed)
    return model, head.fit(model, x, y, p, seed)


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 5
    centers = rng.normal(size=(5, 12)) * 2
    return (centers[y] + rng.normal(size=(300, 12))).astype(np.float32), y


def test_the_head_is_dense_relu_dropout_softmax_with_its_regularizer():
    model = head.build_head(2048, 10, head.HeadParams(units=1024, dropout=0.5, l1=1e-5, l2=1e-4,
                                                      learning_rate=1e-3, batch_size=32, epochs=1), seed=0)
    dense, dropout, out = model.layers
    assert (dense.units, dense.activation.__name__) == (1024, "relu")
    assert dense.kernel_regularizer.get_config() == pytest.approx({"l1": 1e-5, "l2": 1e-4})
    assert dropout.rate == 0.5 and (out.units, out.activation.__name__) == (10, "softmax")
    assert model.count_params() == 2048 * 1024 + 1024 + 1024 * 10 + 10
    plain = head.build_head(8, 3, P, seed=0)
    assert plain.layers[0].kernel_regularizer is None


def test_fit_records_the_whole_fit_its_compilation_and_a_steady_epoch(xy):
    x, y = xy
    model = head.build_head(x.shape[1], 5, P, seed=0)
    epochs_seen = []
    start = time.perf_counter()
    fit = head.fit(model, x, y, P, seed=0, on_epoch=lambda e, loss: epochs_seen.append((e, loss)))
    wall = time.perf_counter() - start
    assert fit.epochs_run == 3 and [e for e, _ in epochs_seen] == [1, 2, 3]
    assert len(fit.history["loss"]) == len(fit.history["accuracy"]) == len(fit.history["epoch_time_s"]) == 3
    assert fit.history["loss"][-1] < fit.history["loss"][0]  # it learns
    assert 0 < fit.train_time_s <= wall
    assert 0 < fit.epoch_time_s <= max(fit.history["epoch_time_s"])
    # The first epoch pays for tracing/compilation; compile_time_s is that excess, not a whole epoch.
    assert 0 <= fit.compile_time_s <= fit.history["epoch_time_s"][0]
    assert fit.eval_time_s == 0.0


def test_time_spent_evaluating_after_epochs_is_not_training_time(xy):
    x, y = xy

    def slow_eval(epoch, model):
        time.sleep(0.5)
        return False

    start = time.perf_counter()
    fit = head.fit(head.build_head(x.shape[1], 5, P, seed=0), x, y, P, seed=0, after_epoch=slow_eval)
    wall = time.perf_counter() - start
    assert fit.eval_time_s >= 1.5
    assert fit.train_time_s <= wall - 1.5


def test_after_epoch_can_stop_training_early(xy):
    x, y = xy
    fit = head.fit(head.build_head(x.shape[1], 5, P, seed=0), x, y, P, seed=0,
                   after_epoch=lambda epoch, model: epoch == 1)
    assert fit.epochs_run == 1 and len(fit.history["loss"]) == 1


def test_a_non_finite_loss_fails_the_trial(xy):
    """An L2 strength of 1e38 overflows float32 in the regularization term: the loss is inf at once."""
    x, y = xy
    p = head.HeadParams(units=16, dropout=0.2, l1=0.0, l2=1e38, learning_rate=1e-3, batch_size=16, epochs=2)
    with pytest.raises(TrialFailed, match="^training loss became NaN/inf at epoch 1$") as e:
        train_head(x, y, 5, p, seed=0)
    assert e.value.kind == "nan"


@pytest.mark.parametrize("handling,smoothing", [("focal", 0.0), ("none", 0.1), ("class_weight", 0.0)])
def test_every_loss_handling_trains(xy, handling, smoothing):
    x, y = xy
    p = head.HeadParams(units=16, dropout=0.2, l1=0.0, l2=0.0, learning_rate=3e-3, batch_size=16, epochs=2,
                        handling=handling, label_smoothing=smoothing)
    model, fit = train_head(x, y, 5, p, seed=0)
    proba, seconds = head.predict(model, x)
    assert np.isfinite(fit.history["loss"]).all() and fit.history["loss"][1] < fit.history["loss"][0]
    assert proba.shape == (300, 5) and np.allclose(proba.sum(axis=1), 1, atol=1e-5) and seconds > 0


def test_the_same_seed_trains_the_same_head(xy):
    x, y = xy
    a, _ = train_head(x, y, 5, P, seed=3)
    b, _ = train_head(x, y, 5, P, seed=3)
    np.testing.assert_allclose(head.predict(a, x[:20])[0], head.predict(b, x[:20])[0], atol=1e-6)


def test_a_head_built_in_another_thread_trains_the_same_head(xy):
    """search.trial.child builds the head while it copies the rows: that must not change a trial's result."""
    from concurrent.futures import ThreadPoolExecutor

    x, y = xy
    with ThreadPoolExecutor(1) as pool:
        threaded = pool.submit(head.build_head, x.shape[1], 5, P, 3).result()
    here = head.build_head(x.shape[1], 5, P, 3)
    for a, b in zip(threaded.weights, here.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    head.fit(threaded, x, y, P, seed=3)
    head.fit(here, x, y, P, seed=3)
    np.testing.assert_array_equal(head.predict(threaded, x[:20])[0], head.predict(here, x[:20])[0])


@pytest.mark.parametrize("handling", ["none", "class_weight"])
def test_steps_grouped_into_one_call_train_the_same_head_as_one_step_per_call(monkeypatch, handling):
    """Training runs STEPS_PER_CALL steps per compiled call, for speed: the same batches in the same order,
    so the same weights and losses as one step per call (here 63 steps an epoch: a full call, then a short one
    ending in a partial batch)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 1000)
    x = (rng.normal(size=(5, 12))[y] + rng.normal(size=(1000, 12))).astype(np.float32)
    p = head.HeadParams(units=16, dropout=0.3, l1=1e-4, l2=1e-4, learning_rate=3e-3, batch_size=16, epochs=2,
                        handling=handling)
    assert runtime.STEPS_PER_CALL > 1
    grouped, fit_grouped = train_head(x, y, 5, p, seed=5)
    monkeypatch.setattr(runtime, "STEPS_PER_CALL", 1)
    single, fit_single = train_head(x, y, 5, p, seed=5)
    assert single.steps_per_execution == 1 and grouped.steps_per_execution > 1
    for a, b in zip(grouped.weights, single.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert fit_grouped.history["loss"] == fit_single.history["loss"]
    assert fit_grouped.history["accuracy"] == fit_single.history["accuracy"]
    assert 0 <= fit_grouped.compile_time_s <= fit_grouped.history["epoch_time_s"][0]


def test_class_weights_are_sklearns_balanced_weights():
    y = np.repeat(np.arange(3), [60, 30, 10])
    w = head.class_weights(y, 3)
    assert w == pytest.approx({0: 100 / 180, 1: 100 / 90, 2: 100 / 30})  # n / (C * n_c)
    assert sum(w[c] * n for c, n in zip(range(3), [60, 30, 10])) == pytest.approx(100)
    # A class missing from the training part gets no weight (it has no samples to weigh).
    assert set(head.class_weights(np.array([0, 0, 2]), 3)) == {0, 2}


# ---------------------------------------------------------------- pause and resume from a checkpoint

def _stage(**spec):
    from search.isolate import run_isolated

    return run_isolated("tests.jobs:head_in_stages", spec, env={"KERAS_BACKEND": "jax"}).result


@pytest.mark.slow  # 8 fresh JAX processes, ~35 s
@pytest.mark.parametrize("handling", ["none", "class_weight"])
def test_a_head_paused_and_resumed_in_fresh_processes_ends_as_one_never_paused(tmp_path, handling):
    """Epoch 4 of a head paused after epoch 1 and again after 2, each time resumed in a new process from its
    checkpoint file, equals epoch 4 of one uninterrupted fit: same weights, optimizer state, shuffling, dropout."""
    whole = _stage(epochs=4, handling=handling)
    a = _stage(epochs=4, pause=1, save=str(tmp_path / "1.npz"), handling=handling)
    b = _stage(epochs=4, pause=2, resume=str(tmp_path / "1.npz"), save=str(tmp_path / "2.npz"), handling=handling)
    c = _stage(epochs=4, resume=str(tmp_path / "2.npz"), handling=handling)
    assert (a["epochs_run"], b["epochs_run"], c["epochs_run"]) == (1, 1, 2)
    assert a["loss"] + b["loss"] + c["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    for w, got in zip(whole["weights"], c["weights"], strict=True):
        np.testing.assert_allclose(np.array(got), np.array(w), rtol=1e-6, atol=1e-7)
    assert head.Checkpoint.load(tmp_path / "2.npz").epoch == 2


def test_a_checkpoint_file_is_written_whole_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    np.random.seed(5)
    ck = head.Checkpoint(3, (rng.normal(size=(4, 2)).astype(np.float32), np.array([7, 126], np.uint32)),
                         (np.array(12, np.int64), rng.normal(size=(4, 2)).astype(np.float32)), np.random.get_state())
    ck.save(tmp_path / "c.npz")
    back = head.Checkpoint.load(tmp_path / "c.npz")
    assert back.epoch == 3 and [a.dtype for a in back.variables] == [np.float32, np.uint32]
    assert all(np.array_equal(u, v) for u, v in zip(back.variables + back.optimizer, ck.variables + ck.optimizer))
    np.random.set_state(back.rng)
    first = np.random.permutation(50)
    np.random.set_state(ck.rng)
    assert np.array_equal(first, np.random.permutation(50))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temporary file left beside it
