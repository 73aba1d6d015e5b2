"""search (the public API): what the command lines are built on, driven from Python as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import search
from search.errors import DriftError, UsageError
from search.study import repeats

from .conftest import ROOT, cli_env, needs_real_fashion, without_keras_backend

README = ROOT / "README.md"


def test_every_public_name_resolves_and_says_what_it_is():
    assert 10 <= len(search.__all__) <= 20
    for name in search.__all__:
        value = getattr(search, name)
        doc = (value.__doc__ or "").strip()
        assert doc and not doc.startswith(f"{name}("), name  # a dataclass's generated signature is no docstring
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        search.nope  # noqa: B018


def test_importing_the_package_loads_no_optuna():
    """A trial process imports search.trial.child, so search/__init__ must not pull in the study layer."""
    code = "import sys, search; print('optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_load_config_applies_overrides_and_names_the_file_on_bad_input(tmp_path):
    c = search.load_config("smoke", n_trials=5, seed=7, weights="random")
    assert (c.run.n_trials, c.sampler.seed, c.backbone.weights) == (5, 7, "random")
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "study_configs" / "smoke.toml").read_text().replace("n_trials = 3", "n_trials = '3'"))
    with pytest.raises(search.ConfigError, match=r"bad\.toml.*run\.n_trials"):
        search.load_config(bad)
    assert search.load_config("fmnist_reg", subset=2000).dataset.subset == 2000
    with pytest.raises(search.ConfigError, match=r"fmnist_reg\.toml.*dataset\.subset"):
        search.load_config("fmnist_reg", subset=30)  # too few images for a stratified split of 10 classes


def test_a_bad_storage_url_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(UsageError, match="storage"):
        search.Search(search.load_config("smoke"), storage="nosuch://x", cache_dir=tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


def _search(tiny, n_trials: int = 2, **kw) -> search.Search:
    return search.Search(search.load_config(tiny.config(n_trials=n_trials)), storage=tiny.storage,
                         data_dir=tiny.data_dir, cache_dir=tiny.cache_dir, **kw)


def test_optimize_runs_the_study_to_its_target_and_the_same_call_resumes_it(tiny):
    with without_keras_backend():
        s = _search(tiny)
        summary = s.optimize()
        assert (summary.complete_after, summary.ran) == (2, 2)
        assert s.extractions == []  # the features were cached: read, never extracted again
        assert isinstance(s.study, optuna.Study) and s.study.study_name == "tiny"
        assert s.study.metric_names == ["test_accuracy", "test_roc_auc", "train_time_s", "peak_memory_mb"]
        t = s.study.trials[0]
        assert {"resolved_params", "test_accuracy", "keras_backend", "sampler_seed"} <= set(t.user_attrs)
        again = _search(tiny, n_trials=3).optimize()
        assert (again.complete_before, again.complete_after, again.ran) == (2, 3, 1)
        # One more trial of the same study, run alone: no storage is touched.
        spec = s.trial_spec({"dropout": 0.2, "l2": 0.0})
        stored = [(t.number, t.state) for t in s.study.trials]
        result = search.run_trial(spec)
    assert (spec.params.dropout, spec.params.units, spec.params.epochs) == (0.2, 32, 1)  # the rest: the config's
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["epochs_run"] == 1 and result["peak_memory_mb"] > 0
    assert [(t.number, t.state) for t in s.study.trials] == stored


@pytest.mark.slow  # the command line's refusal is tested fast in tests/test_run.py
def test_a_resume_with_other_settings_is_refused_before_the_extraction(tiny):
    with without_keras_backend():
        _search(tiny, n_trials=1).optimize()
        other = search.Search(search.load_config(tiny.config(n_trials=1), seed=5), storage=tiny.storage,
                              data_dir=tiny.data_dir, cache_dir=tiny.tmp / "empty-cache")
        with pytest.raises(DriftError, match="other settings"):
            other.prepare()
    assert not (tiny.tmp / "empty-cache").exists()


def _readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_shows_the_api_with_names_that_exist():
    code = _readme_example()
    for name in re.findall(r"search\.(\w+)\(", code):
        assert name in search.__all__, name


@pytest.mark.slow
@needs_real_fashion
def test_the_readme_python_example_runs(tmp_path):
    """The README's example as a user runs it: the smoke study, a single trial, a confirmation."""
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                       env=cli_env(SEARCH_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "studies.db").exists()
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3
    assert [k for k in study.user_attrs if k.startswith(repeats.PREFIX)] == [repeats.attr_name(0, 1),
                                                                           repeats.attr_name(0, 2)]


def test_cli_flags_and_api_arguments_agree():
    """search.run builds its Search from the flags alone: every Search field it sets is a flag."""
    from search import run

    args = run.parse_args(["--study", "smoke"])
    fields = set(search.Search.__dataclass_fields__)
    assert {"storage", "study_name", "weights", "data_dir", "cache_dir", "backend", "artifact_dir", "heartbeat",
            "debug", "worker", "workers"} <= fields & set(vars(args))
    assert Path(run.__file__).read_text().count("api.Search(") == 1
