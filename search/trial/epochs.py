"""The trial process's side of epoch snapshots and early stopping (search.study.snapshots has the rules in words):
which epochs to evaluate, their measures, and the rung decisions of the ranking rule.  Imports no Optuna.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

STOPPED_AT = "stopped_at_rung"       # user attribute of a trial early stopping ended
MIN_EARLIER = 2                      # earlier rung vectors needed before a trial can be stopped


# ---------------------------------------------------------------- the ranking rule

def dominates(p: Sequence[float], q: Sequence[float], directions: Sequence[str]) -> bool:
    """``p`` is at least as good as ``q`` in every objective and better in one (NaN/inf: never)."""
    better = False
    for a, b, d in zip(p, q, directions, strict=True):
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        if d == "minimize":
            a, b = -a, -b
        if a < b:
            return False
        better = better or a > b
    return better


@dataclass(frozen=True)
class RungDecision:
    rung: int
    dominated_by: int     # how many earlier rung vectors dominate this one
    compared_with: int    # how many earlier rung vectors there were
    stop: bool

    def as_dict(self) -> dict[str, Any]:
        return {"dominated_by": self.dominated_by, "compared_with": self.compared_with, "stop": self.stop}


def judge(rung: int, vector: Sequence[float], earlier: Sequence[Sequence[float]],
          directions: Sequence[str]) -> RungDecision:
    """Stop when at least MIN_EARLIER earlier vectors exist and more than half of them dominate ``vector``."""
    d = sum(dominates(p, vector, directions) for p in earlier)
    return RungDecision(rung, d, len(earlier), len(earlier) >= MIN_EARLIER and 2 * d > len(earlier))


def fronts(vectors: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Non-dominated sorting: indices of the first Pareto front, of the front after it, and so on."""
    left = list(range(len(vectors)))
    out = []
    while left:
        front = [i for i in left if not any(dominates(vectors[j], vectors[i], directions) for j in left if j != i)]
        out.append(front)
        left = [i for i in left if i not in front]
    return out


def crowding(vectors: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each index of ``front``: the ends of every objective infinite, else the
    sum over objectives of the gap between its neighbours, as a share of that objective's range in the front
    (direction plays no part: a gap is a gap)."""
    out = {i: 0.0 for i in front}
    for k in range(len(vectors[front[0]]) if front else 0):
        order = sorted(front, key=lambda i: (vectors[i][k], i))
        lo, hi = vectors[order[0]][k], vectors[order[-1]][k]
        out[order[0]] = out[order[-1]] = math.inf
        for a, i, b in zip(order, order[1:], order[2:]):
            if hi > lo:
                out[i] += (vectors[b][k] - vectors[a][k]) / (hi - lo)
    return out


def ranked(vectors: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Every index, best first: front by front (non-dominated sorting); inside a front, the larger crowding
    distance first (the spread-out ends of a trade-off before the crowded middle), then the earlier index.
    A vector with a NaN or infinite value comes after every finite one."""
    finite = [i for i, v in enumerate(vectors) if all(math.isfinite(x) for x in v)]
    out: list[int] = []
    for front in fronts([vectors[i] for i in finite], directions):
        members = [finite[i] for i in front]
        dist = crowding(vectors, members)
        out += sorted(members, key=lambda i: (-dist[i], i))
    kept = set(finite)
    return out + [i for i in range(len(vectors)) if i not in kept]


def promotable(vectors: Sequence[Sequence[float]], directions: Sequence[str], eta: int) -> list[int]:
    """The rung's top 1/eta (MOASHA's promotion rule, Schmucker et al. 2021): the first ``len // eta`` of
    ``ranked``; none while fewer than ``eta`` trials have reached the rung."""
    if eta < 2:
        raise ValueError(f"eta must be at least 2, not {eta}")
    return ranked(vectors, directions)[:len(vectors) // eta]


# ---------------------------------------------------------------- the trial process side

class EpochSnapshots:
    """In the trial process: which epochs to evaluate, their measures, and the rung decisions."""

    def __init__(self, plan: dict[str, Any] | None):
        plan = plan or {}
        self.epochs = set(plan.get("epochs", ()))
        self.quality = list(plan.get("quality", ()))
        self.directions = list(plan.get("directions", ()))
        self.rungs = {int(r): v for r, v in plan.get("rungs", {}).items()}
        self.records: list[dict[str, Any]] = []
        self.checks: dict[str, dict[str, Any]] = {}
        self.stopped: RungDecision | None = None

    def wants(self, epoch: int) -> bool:
        return epoch in self.epochs

    def add(self, epoch: int, measures: dict[str, Any], times: dict[str, float]) -> bool:
        """Keep epoch ``epoch``'s split-prefixed quality measures and prediction times; True: stop training."""
        self.records.append({"epoch": epoch, **measures, **times})
        if epoch not in self.rungs:
            return False
        decision = judge(epoch, [float(measures[n]) for n in self.quality], self.rungs[epoch], self.directions)
        self.checks[str(epoch)] = decision.as_dict()
        if decision.stop:
            self.stopped = decision
        return decision.stop

    def result(self, epoch_times: Sequence[float], train_time_s: float) -> dict[str, Any]:
        """What the trial returns about its snapshots (empty when they are off).

        A snapshot's ``train_time_s`` is the fit's set-up (its time outside any epoch) plus its
        first e epochs: what a trial of e epochs pays, and the parent's own value at e = E.
        """
        if not self.epochs:
            return {}
        setup = max(0.0, train_time_s - sum(epoch_times))
        out: dict[str, Any] = {"snapshots": [{**r, "train_time_s": setup + sum(epoch_times[:r["epoch"]])}
                                             for r in self.records]}
        if self.checks:
            out["rung_checks"] = self.checks
        if self.stopped is not None:
            s = self.stopped
            out[STOPPED_AT] = s.rung
            out["stopped_reason"] = (f"stopped at rung {s.rung}: dominated by {s.dominated_by} of "
                                     f"{s.compared_with} earlier trials at epoch {s.rung} on {', '.join(self.quality)}")
        return out
