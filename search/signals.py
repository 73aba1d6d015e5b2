"""SIGINT/SIGTERM handling: stop promptly, but never between a trial's creation and its owner record.

Optuna creates a trial (RUNNING) before our objective can record who owns it.
A signal that unwound the stack in that gap would leave an ownerless RUNNING
trial that no one can recognise as lost (it may not even have a heartbeat yet),
and a resume would wait for it forever.  So inside ``study.optimize`` signals
are *deferred*: the handler only notes them, and they are raised at the next
safe point: when the objective enters its interruptible part (after the owner
is recorded), or when ``optimize`` returns.  Everywhere else (data loading,
feature extraction) a signal raises ``Interrupted`` at once.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

from search.errors import Interrupted

_state: dict = {"raise": True, "pending": None}


def _handler(signum: int, frame: object) -> None:
    if _state["pending"] is not None:
        return  # already stopping: cleanup must not be cut short
    _state["pending"] = signum
    if _state["raise"]:
        raise Interrupted(signum)


def install() -> None:
    _state.update({"raise": True, "pending": None})
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def raise_pending() -> None:
    if _state["pending"] is not None and _state["raise"]:
        raise Interrupted(_state["pending"])


@contextmanager
def _mode(raise_now: bool) -> Iterator[None]:
    before = _state["raise"]
    _state["raise"] = raise_now
    try:
        raise_pending()
        yield
    finally:
        _state["raise"] = before
    raise_pending()


def deferred():
    """Note signals instead of raising them; raise a noted one on leaving."""
    return _mode(False)


def interruptible():
    """Raise signals at once (and a noted one on entering)."""
    return _mode(True)
