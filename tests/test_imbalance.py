"""Issue 5: imbalance profiles, handling, the validation protocol, minority metrics, constraints.

All on small data: synthetic labels for counts and splits, a tiny cached feature
set for whole trials (Keras in this process: a few seconds each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from search import config as cfg
from search import data, features, head, metrics
from search.errors import ConfigError

LABELS = np.repeat(np.arange(10), 100)  # 100 per class; a 0.5 split leaves 50 per class for training


# ---------------------------------------------------------------- profiles: exact counts

@pytest.mark.parametrize("profile, rho, expected", [
    # paper: round(0.1 * 50) = 5 removed from classes 0, 1, 2
    ("paper", 10.0, [45, 45, 45] + [50] * 7),
    # long_tail: floor(50 * rho ** (-i / 9)); 50 * 10 ** (-1/9) = 38.7 -> 38, ..., class 9: 50 / 10 = 5
    ("long_tail", 10.0, [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]),
    # rho 100: class 9 would keep 0.5 -> floor 0, raised to the minimum of one sample
    ("long_tail", 100.0, [50, 29, 17, 10, 6, 3, 2, 1, 1, 1]),
    # step: classes 5-9 keep floor(50 / rho)
    ("step", 10.0, [50] * 5 + [5] * 5),
    ("step", 4.0, [50] * 5 + [12] * 5),
])
def test_profile_class_counts_are_exact(profile, rho, expected):
    tr, te = data.split_indices(LABELS, 0.5, seed=0)
    kept = data.apply_profile(tr, LABELS, 10, profile, seed=0, rho=rho, paper_classes=(0, 1, 2), fraction=0.1)
    assert data.class_counts(LABELS[kept], 10) == expected
    assert data.profile_targets([50] * 10, profile, rho=rho) == expected
    assert set(kept) <= set(tr) and len(set(kept)) == len(kept)  # a subset of the training part, no repeats
    assert data.class_counts(LABELS[te], 10) == [50] * 10  # the test part is untouched
    again = data.apply_profile(tr, LABELS, 10, profile, seed=0, rho=rho)
    assert np.array_equal(kept, again)  # seeded


def test_paper_profile_is_the_original_imbalance():
    tr, _ = data.split_indices(LABELS, 0.5, seed=0)
    assert np.array_equal(data.apply_profile(tr, LABELS, 10, "paper", 3, paper_classes=(0, 1, 2), fraction=0.1),
                          data.imbalance(tr, LABELS, (0, 1, 2), 0.1, 3))


def test_reduced_classes_per_profile():
    assert data.reduced_classes("paper", 10, (0, 1, 2)) == (0, 1, 2)
    assert data.reduced_classes("step", 10, (0, 1, 2)) == (5, 6, 7, 8, 9)
    assert data.reduced_classes("long_tail", 10, (0, 1, 2)) == (5, 6, 7, 8, 9)


# ---------------------------------------------------------------- evaluation protocol

def test_validation_split_is_carved_from_the_training_part():
    fit, val, test = data.protocol_split(LABELS, 0.8, seed=0, evaluation="validation", validation_fraction=0.25)
    assert not set(fit) & set(val) and not set(fit) & set(test) and not set(val) & set(test)
    assert sorted([*fit, *val, *test]) == list(range(len(LABELS)))
    # stratified: 80 training per class -> 60 fit + 20 validation; 20 test
    assert data.class_counts(LABELS[fit], 10) == [60] * 10
    assert data.class_counts(LABELS[val], 10) == [20] * 10
    # the test split is the one of the paper's protocol, so test metrics of both protocols are comparable
    tr, te = data.split_indices(LABELS, 0.8, seed=0)
    assert np.array_equal(test, te) and sorted([*fit, *val]) == tr.tolist()
    fit_t, val_t, test_t = data.protocol_split(LABELS, 0.8, seed=0, evaluation="test", validation_fraction=0.25)
    assert val_t is None and np.array_equal(fit_t, tr) and np.array_equal(test_t, te)
    # seeded
    assert np.array_equal(val, data.protocol_split(LABELS, 0.8, 0, "validation", 0.25)[1])
    assert not np.array_equal(val, data.protocol_split(LABELS, 0.8, 1, "validation", 0.25)[1])


# ---------------------------------------------------------------- handling

def test_random_oversampling_brings_every_class_to_the_largest():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [40, 20, 10, 5])
    x = rng.normal(size=(len(y), 8)).astype(np.float32)
    xr, yr = data.resample(x, y, "oversample", seed=0)
    assert data.class_counts(yr, 4) == [40] * 4
    # random oversampling only duplicates: every row is one of the originals, and all originals are kept
    originals = {r.tobytes() for r in x}
    assert {r.tobytes() for r in xr} == originals


def test_smote_makes_new_rows_between_same_class_neighbours():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [30, 6, 3])
    x = (rng.normal(size=(len(y), 8)) + 10 * y[:, None]).astype(np.float32)
    xr, yr = data.resample(x, y, "smote", seed=0)
    assert data.class_counts(yr, 3) == [30] * 3
    new = xr[len(y):]
    assert not {r.tobytes() for r in new} <= {r.tobytes() for r in x}  # synthetic, not copies
    for c in (1, 2):  # interpolations stay inside their class's bounding box
        own, made = x[y == c], xr[len(y):][yr[len(y):] == c]
        assert np.all(made >= own.min(0) - 1e-5) and np.all(made <= own.max(0) + 1e-5)


def test_smote_with_a_single_sample_class_fails_the_trial_clearly():
    from search.errors import TrialFailed

    y = np.array([0] * 10 + [1])
    with pytest.raises(TrialFailed, match="smote needs at least 2"):
        data.resample(np.zeros((11, 3), np.float32), y, "smote", 0)


def test_class_weights_are_balanced():
    y = np.repeat(np.arange(3), [60, 30, 10])
    w = head.class_weights(y, 3)
    assert w == pytest.approx({0: 100 / 180, 1: 100 / 90, 2: 100 / 30})
    assert sum(w[c] * n for c, n in zip(range(3), [60, 30, 10])) == pytest.approx(100)


# ---------------------------------------------------------------- metrics

def test_reduced_recall_is_the_mean_recall_of_the_reduced_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 0, 2]].astype(float) * 0.9 + 0.1 / 3
    m = metrics.evaluate(y, proba, 3, reduced=(0, 2))
    assert m["per_class_recall"] == [0.5, 1.0, 0.5]
    assert m["reduced_recall"] == 0.5 and m["worst_class_recall"] == 0.5
    assert metrics.evaluate(y, proba, 3, reduced=(1,))["reduced_recall"] == 1.0
    assert "reduced_recall" in metrics.QUALITY_METRICS and "reduced_recall" in cfg.METRIC_NAMES


# ---------------------------------------------------------------- whole trials on a tiny feature cache

def _cache(tmp_path: Path, n_per_class: int = 60, dim: int = 16) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), n_per_class)
    centers = rng.normal(size=(10, dim)) * 1.2
    x = (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32)

    def build(tmp: Path) -> None:
        np.save(tmp / "features.npy", x)
        np.save(tmp / "labels.npy", y)

    features.ensure_cached(tmp_path, "k", build)
    return str(tmp_path), "k"


def _spec(cache: tuple[str, str], evaluation: str = "validation", **params) -> dict:
    p = dict(split_ratio=0.8, epochs=3, batch_size=32, learning_rate=3e-3, dropout=0.1, l1=0.0, l2=0.0,
             units=16, balance="balanced", profile="step", rho=4.0, handling="none", focal_gamma=2.0,
             label_smoothing=0.0)
    p.update(params)
    return {"cache_dir": cache[0], "key": cache[1], "n_classes": 10, "params": p, "seed": 0,
            "reduce_classes": [0, 1, 2], "reduce_fraction": 0.1, "evaluation": evaluation,
            "validation_fraction": 0.25}


def _run(spec: dict) -> dict:
    from search.trial import run_trial

    return run_trial(spec, lambda **kw: None)


def test_trial_validation_protocol_keeps_test_metrics_apart(tmp_path):
    r = _run(_spec(_cache(tmp_path)))
    # 600 images: 480 training (48/class) -> 360 fit + 120 validation; 120 test
    assert (r["n_train"], r["n_val"], r["n_test"]) == (360, 120, 120)
    assert sum(map(sum, r["confusion_matrix"])) == r["n_val"]
    assert sum(map(sum, r["test_confusion_matrix"])) == r["n_test"]
    assert r["evaluation"] == "validation" and r["val_class_counts"] == [12] * 10
    for m in metrics.QUALITY_METRICS:
        assert f"test_{m}" in r
    # validation and test are different samples: their metrics differ
    assert (r["accuracy"], r["roc_auc"]) != (r["test_accuracy"], r["test_roc_auc"])


def test_trial_test_protocol_is_the_papers(tmp_path):
    r = _run(_spec(_cache(tmp_path), evaluation="test"))
    assert (r["n_train"], r["n_test"]) == (480, 120) and "n_val" not in r
    assert not any(k.startswith("test_") and k != "test_time_s" and k != "test_class_counts" for k in r)
    assert sum(map(sum, r["confusion_matrix"])) == 120


@pytest.mark.parametrize("handling, fit_counts", [
    ("none", [36] * 5 + [9] * 5),          # step rho 4 on 36 per class: floor(36 / 4) = 9
    ("class_weight", [36] * 5 + [9] * 5),  # the loss is weighted, the data unchanged
    ("focal", [36] * 5 + [9] * 5),
    ("oversample", [36] * 10),             # every class up to the largest
    ("smote", [36] * 10),
])
def test_trial_handling(tmp_path, handling, fit_counts):
    r = _run(_spec(_cache(tmp_path), balance="imbalanced", handling=handling, label_smoothing=0.1))
    assert r["train_class_counts"] == [36] * 5 + [9] * 5
    assert r["fit_class_counts"] == fit_counts
    assert r["reduced_classes"] == [5, 6, 7, 8, 9] and r["imbalance_profile"] == "step"
    assert r["val_class_counts"] == [12] * 10  # validation keeps the original distribution
    assert 0.0 <= r["reduced_recall"] <= 1.0 and np.isfinite(r["test_reduced_recall"])


# ---------------------------------------------------------------- the objective: what the sampler sees

IMB_CONFIG = """
[dataset]
name = "fashion_mnist"
[balance]
mode = "imbalanced"
profile = "step"
rho = 4.0
[backbone]
weights = "random"
[head]
units = 16
[training]
epochs = 2
learning_rate = 3e-3
validation_fraction = 0.25
[search_space]
handling = {{ type = "categorical", choices = ["none", "oversample"] }}
[[objectives]]
metric = "balanced_accuracy"
direction = "maximize"
[[objectives]]
metric = "reduced_recall"
direction = "maximize"
[[objectives]]
metric = "peak_memory_mb"
direction = "minimize"
{constraints}
[sampler]
name = "grid"
[run]
n_trials = 2
"""


def _optimize(tmp_path: Path, constraints: str = "", trial_fn: str | None = None, monkeypatch=None):
    from search import objective as obj

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "imb.toml"
    path.write_text(IMB_CONFIG.format(constraints=constraints))
    config = cfg.load_config(str(path))
    cache = _cache(tmp_path / "cache")
    if trial_fn:
        monkeypatch.setenv("SEARCH_TRIAL_FN", trial_fn)
    ctx = obj.Context(config=config, cache_dir=Path(cache[0]), cache_key=cache[1], n_classes=10, target=2)
    from search.samplers import make_sampler

    study = optuna.create_study(directions=config.directions, sampler=make_sampler(config))
    study.optimize(obj.make_objective(ctx, lambda e: None), n_trials=2)
    return study, config


def test_objective_values_are_validation_metrics_never_test(tmp_path):
    study, config = _optimize(tmp_path)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert t.user_attrs["evaluation"] == "validation"
        # what the sampler got is exactly the validation metrics ...
        assert t.values == [t.user_attrs[m] for m in config.metric_names]
        # ... and not the held-out test ones, which exist only as user attributes
        assert (t.values[0], t.values[1]) != (t.user_attrs["test_balanced_accuracy"],
                                              t.user_attrs["test_reduced_recall"])
        assert t.user_attrs["n_val"] == 120 and t.user_attrs["n_test"] == 120
    by = {t.params["handling"]: t for t in trials}
    assert by["none"].user_attrs["fit_class_counts"] == [36] * 5 + [9] * 5
    assert by["oversample"].user_attrs["fit_class_counts"] == [36] * 10
    # without budgets, no constraints are recorded
    assert all(not t.constraints for t in trials)


def test_budget_constraints_keep_infeasible_trials_off_the_pareto_set(tmp_path, monkeypatch):
    study, _ = _optimize(tmp_path, "[constraints]\nmax_peak_memory_mb = 1.0",
                         "search.workers:fast_trial", monkeypatch)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:  # a real process peaks far above 1 MB: infeasible by (peak - budget) > 0
        assert t.constraints["peak_memory_mb"] == pytest.approx(t.user_attrs["peak_memory_mb"] - 1.0)
        assert t.constraints["peak_memory_mb"] > 0 and t.user_attrs["feasible"] is False
    assert study.best_trials == []

    study, _ = _optimize(tmp_path / "b", "[constraints]\nmax_peak_memory_mb = 100000\nmax_train_time_s = 600",
                         "search.workers:fast_trial", monkeypatch)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert all(t.user_attrs["feasible"] and set(t.constraints) == {"peak_memory_mb", "train_time_s"}
               for t in trials)
    assert study.best_trials


# ---------------------------------------------------------------- config validation

BASE = """
[dataset]
name = "fashion_mnist"
[balance]
{balance}
[training]
{training}
[search_space]
{space}
[[objectives]]
metric = "{metric}"
direction = "maximize"
{constraints}
[run]
n_trials = 2
"""


def _cfg(tmp_path: Path, balance: str = "", training: str = "", space: str = "", metric: str = "accuracy",
         constraints: str = ""):
    path = tmp_path / "bad.toml"
    path.write_text(BASE.format(balance=balance, training=training, space=space, metric=metric,
                                constraints=constraints))
    return cfg.load_config(str(path))


@pytest.mark.parametrize("kw, message", [
    (dict(balance='profile = "zipf"'), "balance.profile: Input should be 'paper', 'long_tail' or 'step'"),
    (dict(balance="rho = 1.0"), "balance.rho: Input should be greater than 1"),
    (dict(balance="rho = nan"), "balance.rho: Input should be a finite number"),
    (dict(balance="reduce_classes = [3, 10]"), "balance.reduce_classes: class 10 does not exist in fashion_mnist"),
    (dict(training='handling = "undersample"'), "training.handling: Input should be 'none', 'class_weight'"),
    (dict(training="focal_gamma = -1.0"), "training.focal_gamma: Input should be greater than or equal to 0"),
    (dict(training="label_smoothing = 1.0"), "training.label_smoothing: Input should be less than 1"),
    (dict(training='evaluation = "train"'), "training.evaluation: Input should be 'validation' or 'test'"),
    (dict(training="validation_fraction = 0.0"), "training.validation_fraction: Input should be greater than 0"),
    (dict(space='handling = { type = "float", low = 0.0, high = 1.0 }'),
     "search_space.handling.type: must be 'categorical'"),
    (dict(space='profile = { type = "categorical", choices = ["step", "pareto"] }'),
     "search_space.profile.choices[1]: Input should be 'paper', 'long_tail' or 'step'"),
    (dict(space='rho = { type = "float", low = 0.5, high = 100.0 }'),
     "search_space.rho.low: Input should be greater than 1"),
    (dict(space='label_smoothing = { type = "float", low = 0.0, high = 1.5 }'),
     "search_space.label_smoothing.high: Input should be less than 1"),
    (dict(metric="minority_recall"), "objectives.0.metric: unknown metric 'minority_recall'"),
    (dict(constraints="[constraints]\nmax_peak_memory_mb = -5"),
     "constraints.max_peak_memory_mb: Input should be greater than 0"),
    (dict(constraints="[constraints]\nmax_train_time_s = inf"),
     "constraints.max_train_time_s: Input should be a finite number"),
    (dict(constraints="[constraints]\nmax_gpu_mb = 5"), "constraints.max_gpu_mb: unknown key"),
])
def test_bad_new_fields_are_refused_naming_file_and_field(tmp_path, kw, message):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, **kw)
    assert str(e.value).startswith(f"{tmp_path / 'bad.toml'}: ")
    assert message in str(e.value)


def test_good_new_fields_load(tmp_path):
    c = _cfg(tmp_path, balance='mode = "imbalanced"\nprofile = "long_tail"\nrho = 100.0',
             training='handling = "smote"\nlabel_smoothing = 0.1\nevaluation = "validation"',
             space='profile = { type = "categorical", choices = ["paper", "long_tail", "step"] }\n'
                   'rho = { type = "categorical", choices = [10.0, 100.0] }\n'
                   'handling = { type = "categorical", choices = ["none", "class_weight", "focal", "oversample", "smote"] }\n'
                   'focal_gamma = { type = "float", low = 0.5, high = 5.0 }\n'
                   'label_smoothing = { type = "float", low = 0.0, high = 0.2 }',
             metric="reduced_recall", constraints="[constraints]\nmax_peak_memory_mb = 4000")
    assert c.balance.profile == "long_tail" and c.training.handling == "smote"
    assert c.constraints.budgets() == {"peak_memory_mb": 4000.0}


def test_new_studies_default_to_validation_and_record_it(tmp_path):
    c = _cfg(tmp_path)
    assert c.training.evaluation == "validation"
    assert c.identity()["training"]["evaluation"] == "validation"
    assert "constraints" not in c.identity()  # no budgets: nothing to agree on


def test_paper_studies_keep_the_test_protocol_and_their_identity():
    for name in ("smoke", "fmnist_reg", "fmnist_splits", "cifar10_splits", "fmnist_balance", "cifar10_balance"):
        c = cfg.load_config(name)
        assert c.training.evaluation == "test", name
        # studies stored before these settings existed resume: their identity has none of them
        ident = c.identity()
        assert not {"evaluation", "handling", "label_smoothing"} & set(ident["training"]), name
        assert not {"profile", "rho"} & set(ident["balance"]) and "constraints" not in ident, name


def test_imbalance_studies_are_shipped():
    for name in ("fmnist_imbalance", "cifar10_imbalance"):
        c = cfg.load_config(name)
        assert c.training.evaluation == "validation" and c.balance.profile == "step"
        assert {"balance", "handling"} <= set(c.search_space)
        assert "reduced_recall" in c.metric_names and c.constraints.budgets()


# ---------------------------------------------------------------- search.confirm end to end

@pytest.mark.slow
def test_confirm_repeats_pareto_trials_with_other_seeds(tiny):
    """search.run on a tiny validation study, then search.confirm --seeds 2: mean/std stored on the study."""
    import subprocess
    import sys

    from .conftest import TINY_CONFIG, cli_env
    from .test_workers import seed_cache

    text = (TINY_CONFIG.format(n_trials=2).replace('evaluation = "test"', 'evaluation = "validation"')
            .replace('metric = "accuracy"', 'metric = "balanced_accuracy"'))
    path = tiny.config(text=text)
    entry = seed_cache(tiny, path)
    labels = np.load(entry / "labels.npy")
    x = (np.eye(10)[labels] * 3 + np.random.default_rng(0).normal(size=(len(labels), 10))).astype(np.float32)
    np.save(entry / "features.npy", x)  # informative features, so that seeds give different results
    from search.features import _sha256
    import json

    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"]["features"] = _sha256(entry / "features.npy")
    (entry / "meta.json").write_text(json.dumps(meta))

    r = tiny.run(*tiny.args(path))
    assert r.returncode == 0, r.stderr
    c = subprocess.run([sys.executable, "-m", "search.confirm", "--study", "tiny", "--storage", tiny.storage,
                        "--cache-dir", str(tiny.cache_dir), "--seeds", "2"],
                       cwd=tiny.tmp, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr
    assert "mean ± std" in c.stdout
    study = optuna.load_study(study_name="tiny", storage=tiny.storage)
    out = study.user_attrs["search:confirm"]
    assert out["seeds"] == [1, 2] and out["evaluation"] == "validation"
    assert set(out["trials"]) == {str(t.number) for t in study.best_trials}
    for entry in out["trials"].values():
        m = entry["metrics"]
        assert m["balanced_accuracy"]["n"] == 2 and len(m["test_balanced_accuracy"]["values"]) == 2
        vals = m["balanced_accuracy"]["values"]
        assert m["balanced_accuracy"]["mean"] == pytest.approx(sum(vals) / 2)
        assert m["balanced_accuracy"]["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)

    bad = subprocess.run([sys.executable, "-m", "search.confirm", "--study", "nope", "--storage", tiny.storage],
                         cwd=tiny.tmp, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no study 'nope'" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "search.confirm", "--study", "tiny", "--storage", tiny.storage,
                          "--cache-dir", str(tiny.cache_dir), "--trials", "0,99"],
                         cwd=tiny.tmp, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --trials: not COMPLETE trials of 'tiny': [99]")
    assert optuna.load_study(study_name="tiny", storage=tiny.storage).user_attrs["search:confirm"] == out

    # --all adds the other trials with the same seeds and keeps what was confirmed; the report shows them all.
    c = subprocess.run([sys.executable, "-m", "search.confirm", "--study", "tiny", "--storage", tiny.storage,
                        "--cache-dir", str(tiny.cache_dir), "--seeds", "2", "--all"],
                       cwd=tiny.tmp, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr
    both = optuna.load_study(study_name="tiny", storage=tiny.storage).user_attrs["search:confirm"]
    assert set(both["trials"]) == {"0", "1"}
    r = subprocess.run([sys.executable, "-m", "search.report", "--study", "tiny", "--storage", tiny.storage,
                        "--out", str(tiny.tmp / "rep")], cwd=tiny.tmp, env=cli_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = (tiny.tmp / "rep" / "summary.md").read_text()
    assert "## Repeats" in summary and (tiny.tmp / "rep" / "repeats.png").stat().st_size > 10_000
