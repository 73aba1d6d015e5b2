"""Epoch snapshots and multi-objective early stopping (MOASHA-style rungs) on top of them.

A trial that trains E epochs passes through every shorter schedule of the same
parameters; with ``run.epoch_snapshots`` each epoch e < E inside the searched
``epochs`` range is evaluated and recorded as its own COMPLETE trial.  Optuna
cannot prune multi-objective studies (``Trial.report`` raises with more than one
direction), so early stopping ranks snapshots itself: see ``EARLY_STOPPING``.
"""

from __future__ import annotations

EARLY_STOPPING: dict[str, str] = {
    "none": "every trial trains its full number of epochs",
    "moasha": "at each rung, a trial whose snapshot is dominated (on the quality objectives) by more than half "
              "of the earlier trials' snapshots at that rung stops; it is recorded PRUNED with its rung",
}
