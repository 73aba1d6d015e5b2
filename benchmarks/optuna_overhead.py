"""Optuna's cost per trial: the service's objective with the trial process replaced by a no-op, on SQLite.

Curve 1 ("service"): search.study.lifecycle.open_storage (SQLite, WAL, heartbeat) + the
fmnist_reg config's 4-objective TPE sampler + search.study.objective.make_objective
(owner mark, slot check, ~20 user attributes), its trial runner
(``Context.runner``) a stub returning a realistic result at once.  Curve 2
("sampler"): the same TPE sampler and search space on in-memory storage with a
bare no-op objective.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _fake_result(rng: np.random.Generator) -> dict[str, Any]:
    from search.trial import metrics

    y = rng.integers(0, 10, 500)
    proba = rng.dirichlet(np.ones(10), 500)
    r = metrics.prefixed(metrics.evaluate(y, proba, 10), "test")
    r.update(train_time_s=float(rng.uniform(60, 600)), test_time_s=0.5, n_train=56000, n_test=14000,
             train_class_counts=[5600] * 10, test_class_counts=[1400] * 10)
    return r


def _windows(stamps: list[float], width: int) -> list[dict[str, Any]]:
    d = np.diff(np.asarray(stamps))
    return [{"trials": f"{i + 1}-{min(i + width, len(d))}", "mean_ms": float(d[i:i + width].mean() * 1e3)}
            for i in range(0, len(d), width)]


def measure(n_trials: int, workdir: Path, window: int = 50) -> dict[str, Any]:
    import optuna

    from search import config as cfg, runtime
    from search.isolate import Outcome
    from search.study import lifecycle as st, objective as obj, storage as sto
    from search.study.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    config = cfg.load_config("fmnist_reg").with_weights("random").with_run(n_trials=n_trials)
    rng = np.random.default_rng(0)
    fake = _fake_result(rng)  # computed once: the stub's own cost must not count as Optuna's

    def runner(spec: dict[str, Any], on_event, timeout) -> Outcome:
        """The trial runner: no process, no training; values in a realistic range."""
        r = {**fake, "test_accuracy": float(rng.uniform(0.7, 0.9)), "test_roc_auc": float(rng.uniform(0.95, 0.99)),
             "train_time_s": float(rng.uniform(60, 600))}
        peak = float(rng.uniform(900, 1400))
        return Outcome(r, peak_memory_mb=peak, start_memory_mb=60.0, baseline_memory_mb=400.0,
                       trial_memory_mb=peak - 400.0)

    # Curve 1: the service's own loop on SQLite.
    db = workdir / "overhead.db"
    db.unlink(missing_ok=True)
    storage = sto.open_storage(f"sqlite:///{db}")
    ident = cfg.study_identity(config, "random(seed=0)", "bench", runtime.runtime_identity("jax"))
    study, _ = st.create_or_resume(storage, "overhead", config, ident, make_sampler(config))
    ctx = obj.Context(config=config, cache_dir=workdir, cache_key="none", n_classes=10, target=n_trials,
                      runner=runner)
    policy = st.RetryPolicy(grid=False, max_retries=config.run.max_retries, max_failures=3)
    stamps = [time.perf_counter()]
    st.optimize(study, obj.make_objective(ctx, lambda e: None), n_trials, None, policy,
                callbacks=[lambda s, t: stamps.append(time.perf_counter())])
    service = _windows(stamps, window)

    # Curve 2: the sampler alone.
    sampler_study = optuna.create_study(directions=config.directions, sampler=make_sampler(config))
    stamps2 = [time.perf_counter()]
    def noop(trial: optuna.Trial) -> list[float]:
        obj.suggest(trial, config)
        return [float(v) for v in rng.random(4)]

    sampler_study.optimize(noop, n_trials=n_trials, callbacks=[lambda s, t: stamps2.append(time.perf_counter())])
    sampler = _windows(stamps2, window)
    last_service = float(np.mean(np.diff(stamps)[-window:]))
    last_sampler = float(np.mean(np.diff(stamps2)[-window:]))
    return {"n_trials": n_trials, "window": window, "service_curve": service, "sampler_curve": sampler,
            "per_trial_at_end_s": last_service, "sampler_at_end_s": last_sampler,
            "storage_at_end_s": last_service - last_sampler, "total_s": stamps[-1] - stamps[0]}
