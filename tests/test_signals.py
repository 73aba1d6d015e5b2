"""Signals during optimize are deferred to a safe point, so no trial is left RUNNING without an owner."""

from __future__ import annotations

import os
import signal

import pytest

from search import signals
from search.errors import Interrupted


@pytest.fixture(autouse=True)
def handlers():
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    yield
    signals.install()  # forget this test's pending signal
    for s, h in old.items():
        signal.signal(s, h)


def test_outside_optimize_a_signal_raises_at_once():
    with pytest.raises(Interrupted) as e:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    assert e.value.exit_code == 143


def test_deferred_signal_is_raised_when_leaving_the_deferred_part():
    reached = []
    with pytest.raises(Interrupted) as e:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the signal")  # e.g. Optuna creating the trial, the objective recording its owner
    assert reached == ["after the signal"] and e.value.exit_code == 130


def test_deferred_signal_is_raised_on_entering_the_interruptible_part():
    steps = []
    with pytest.raises(Interrupted):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("owner recorded")
            with signals.interruptible():
                steps.append("trial ran")  # must not happen
    assert steps == ["owner recorded"]


def test_a_second_signal_cannot_cut_cleanup_short():
    cleanup = []
    with pytest.raises(Interrupted) as first:
        os.kill(os.getpid(), signal.SIGTERM)
    # Cleaning up (recording the trial as failed): another Ctrl-C is noted, not raised.
    os.kill(os.getpid(), signal.SIGINT)
    cleanup.append("trial recorded as failed")
    assert cleanup == ["trial recorded as failed"]
    assert first.value.exit_code == 143  # the exit code stays the first signal's


def test_a_signal_noted_before_the_interruptible_part_is_not_lost_when_it_ends_normally():
    """The deferred part ends without a signal check in between: the noted signal is raised there."""
    with pytest.raises(Interrupted) as e:
        with signals.deferred():
            with signals.interruptible():
                pass
            os.kill(os.getpid(), signal.SIGINT)
    assert e.value.signum == signal.SIGINT
