"""Repeats of chosen trials with other seeds: run them, store them per (trial, seed), summarize, compare arms.

A single trial is one draw: one data split, one imbalance subsample, one
initialization.  ``repeat`` re-runs a trial's parameters with another seed (a
new split, subsample and initialization), in its own process like any trial,
on the backend the study's trials trained on.  Each run is stored in its own
study user attribute ``search:confirm:<trial>:<seed>``, so concurrent
confirmations merge instead of overwriting each other, and a failed run is
stored with its reason (``{"error": ...}``) so summaries name missing seeds.

``confirmed`` gathers them into per-trial summaries (mean, standard deviation,
95% t-interval, the value of each seed); ``differences`` compares two confirmed
trials whose parameters differ in one parameter: the difference of the means
with its 95% interval, paired over the seeds both measured (same seed, same
split), never by position.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any

from search.config.choices import QUALITY

PREFIX = "search:confirm:"
LEGACY_ATTR = "search:confirm"  # one attribute for every trial, written before runs were stored one by one


def attr_name(trial_number: int, seed: int) -> str:
    return f"{PREFIX}{trial_number}:{seed}"


def store_run(study: Any, trial_number: int, seed: int, params: dict[str, Any], result: dict[str, Any] | None,
              error: str | None = None) -> None:
    """One repeat's measures (or its failure) as its own study attribute."""
    value: dict[str, Any] = {"params": params, "seed": seed}
    if error is not None:
        value["error"] = error
    else:
        value["metrics"] = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float))
                            and not isinstance(v, bool)}
    study.set_user_attr(attr_name(trial_number, seed), value)


def summarize(values: dict[int, float]) -> dict[str, Any]:
    """Mean, std (ddof=1), 95% t-interval of the mean over the finite values; values kept by seed."""
    from scipy import stats

    by_seed = {int(s): float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}
    vals = list(by_seed.values())
    mean = statistics.fmean(vals) if vals else float("nan")
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    ci = None
    if len(vals) > 1:
        lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=mean, scale=std / math.sqrt(len(vals)))
        ci = [float(lo), float(hi)]
    return {"mean": mean, "std": std, "n": len(vals), "ci95": ci, "by_seed": {str(s): v for s, v in by_seed.items()}}


def _legacy_runs(study_attrs: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Runs of the old single ``search:confirm`` attribute, where the values of each measure are in seed order.

    Its values dropped non-finite entries, so a measure whose list is shorter than the seeds cannot be
    paired by seed and is left out rather than shifted.
    """
    old = study_attrs.get(LEGACY_ATTR) or {}
    seeds = old.get("seeds") or []
    runs: dict[int, list[dict[str, Any]]] = {}
    for number, entry in (old.get("trials") or {}).items():
        per_seed = [{"params": entry.get("params", {}), "seed": s, "metrics": {}} for s in seeds]
        for name, summary in (entry.get("metrics") or {}).items():
            values = summary.get("values") or []
            if len(values) == len(seeds):
                for run, v in zip(per_seed, values):
                    run["metrics"][name] = v
        runs[int(number)] = per_seed
    return runs


def confirmed(study_attrs: dict[str, Any]) -> dict[str, Any]:
    """Every stored repeat, per trial: params, the seeds run, the seeds that failed, and a summary per measure."""
    runs = _legacy_runs(study_attrs)
    for key, value in study_attrs.items():
        if key.startswith(PREFIX):
            number = int(key[len(PREFIX):].split(":")[0])
            runs.setdefault(number, []).append(value)
    out: dict[str, Any] = {"trials": {}}
    for number in sorted(runs):
        ok = [r for r in runs[number] if "metrics" in r]
        names = sorted({m for r in ok for m in r["metrics"]})
        out["trials"][str(number)] = {
            "params": runs[number][0]["params"],
            "seeds": sorted(r["seed"] for r in runs[number]),
            "failed": {str(r["seed"]): r["error"] for r in runs[number] if "error" in r},
            "metrics": {m: summarize({r["seed"]: r["metrics"].get(m) for r in ok}) for m in names},
        }
    return out


@dataclass(frozen=True)
class Difference:
    """Trial ``b`` minus trial ``a`` on ``metric``; the two differ only in parameter ``param``."""

    param: str
    a: str
    b: str
    a_value: Any
    b_value: Any
    metric: str
    diff: float
    low: float
    high: float
    n: int
    test: str              # "paired" over the shared seeds, or "welch" when they share fewer than 2
    missing: tuple[str, ...]  # seeds measured in one arm only (a failed run, or another confirmation)

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return f"{self.param}={self.b_value} higher"
        if self.high < 0:
            return f"{self.param}={self.b_value} lower"
        return "no difference shown"


def differences(summary: dict[str, Any], metrics: list[str]) -> list[Difference]:
    """Every pair of confirmed trials one parameter apart, per metric: difference of means, 95% interval."""
    from scipy import stats

    out = []
    entries = sorted(summary.get("trials", {}).items(), key=lambda kv: int(kv[0]))
    for (na, ea), (nb, eb) in itertools.combinations(entries, 2):
        pa, pb = ea["params"], eb["params"]
        changed = [k for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
        if len(changed) != 1:
            continue
        for m in metrics:
            ma, mb = ea["metrics"].get(m), eb["metrics"].get(m)
            if not ma or not mb or ma["n"] < 2 or mb["n"] < 2:
                continue
            sa, sb = ma["by_seed"], mb["by_seed"]
            shared = sorted(set(sa) & set(sb), key=int)
            missing = tuple(sorted(set(sa) ^ set(sb), key=int))
            if len(shared) >= 2:  # the same seed gave both arms the same split: pair by seed
                va, vb = [sa[s] for s in shared], [sb[s] for s in shared]
                r, test = stats.ttest_rel(vb, va), "paired"
            else:
                va, vb = list(sa.values()), list(sb.values())
                r, test = stats.ttest_ind(vb, va, equal_var=False), "welch"
            ci = r.confidence_interval(0.95)
            diff = statistics.fmean(vb) - statistics.fmean(va)
            low, high = (float(ci.low), float(ci.high)) if math.isfinite(ci.low) else (diff, diff)
            out.append(Difference(changed[0], na, nb, pa.get(changed[0]), pb.get(changed[0]), m, diff,
                                  low, high, len(shared) if test == "paired" else min(len(va), len(vb)), test,
                                  missing))
    return out


def repeat_metrics(metric_names: list[str]) -> list[str]:
    """What is summarized per repeat: the objectives, every quality metric on both splits, time and memory."""
    names = [*metric_names, *(f"{p}_{m}" for p in ("val", "test") for m in QUALITY),
             "train_time_s", "epoch_time_s", "peak_memory_mb", "trial_memory_mb"]
    return list(dict.fromkeys(names))


def interval(s: dict[str, Any]) -> str:
    """``mean ± std [lo, hi]`` of a summarize() entry."""
    text = f"{s['mean']:.4g} ± {s['std']:.2g}"
    return text + (f" [{s['ci95'][0]:.4g}, {s['ci95'][1]:.4g}]" if s.get("ci95") else "")
