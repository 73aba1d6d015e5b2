"""search.dashboard: optuna-dashboard with named objectives, user attributes and per-trial pictures.

Fast tests talk HTTP to the server on a study built in-process; the browser
test (slow) runs the real ``smoke`` study and drives Debian's chromium
headless against the dashboard on localhost.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
import warnings

import optuna
import pytest

from search import artifacts
from search import objective as obj
from search.config import load_config
from search.isolate import Outcome
from tests import browser
from tests.conftest import cli_env, needs_real_fashion, run_cli
from tests.test_artifacts import _result


def dashboard_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.dashboard", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def pictured_study(tmp_path, tiny, monkeypatch):
    """A sqlite study of 2 trials run through the real objective, pictures in <db>-artifacts/."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config(str(tiny.config(n_trials=2)))
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    study = optuna.create_study(study_name="dash", storage=url, directions=config.directions)
    study.set_metric_names(config.metric_names)
    where = artifacts.prepare(study, url, None)
    calls = iter(range(100))
    monkeypatch.setattr(obj, "run_isolated", lambda *a, **k: Outcome(_result(next(calls)), 500.0, 400.0))
    ctx = obj.Context(config=config, cache_dir=tmp_path, cache_key="k", n_classes=10, target=2, artifact_dir=where)
    study.optimize(obj.make_objective(ctx, lambda e: None), n_trials=2)
    return url, study


def test_api_shows_named_objectives_user_attrs_and_serves_the_pictures(pictured_study):
    url, study = pictured_study
    with browser.serve_dashboard(url, cli_env()) as base:
        (summary,) = browser.get_json(f"{base}/api/studies")["study_summaries"]
        detail = browser.get_json(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["accuracy", "roc_auc", "train_time_s", "peak_memory_mb"]
        assert [t["number"] for t in detail["trials"]] == [0, 1]
        for t in detail["trials"]:
            keys = {a["key"] for a in t["user_attrs"]}
            assert {"precision", "recall", "f1", "test_time_s", "per_class_recall", "confusion_matrix"} <= keys
            names = sorted(a["filename"] for a in t["artifacts"])
            assert names == [artifacts.CONFUSION_PNG, artifacts.RECALL_PNG]
            for a in t["artifacts"]:
                with urllib.request.urlopen(f"{base}/artifacts/{summary['study_id']}/{t['trial_id']}/"
                                            f"{a['artifact_id']}", timeout=30) as r:
                    assert r.headers["Content-Type"] == "image/png"
                    body = r.read()
                assert body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) > 10_000


def test_missing_database_is_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "none.db"
    r = dashboard_cli("--storage", f"sqlite:///{missing}", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: --storage: no database at") and len(r.stderr.strip().splitlines()) == 1
    assert not missing.exists()


def test_busy_port_is_one_line(pictured_study, tmp_path):
    url, _ = pictured_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = dashboard_cli("--storage", url, "--port", str(s.getsockname()[1]), cwd=tmp_path)
    assert r.returncode == 2
    assert "error: --host/--port: cannot listen on 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- the browser, on a real smoke study

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    reason = browser.browser_missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("smoke")
    storage = f"sqlite:///{tmp / 'smoke.db'}"
    r = run_cli("--study", "smoke", "--storage", storage, "--cache-dir", str(tmp / "cache"), cwd=tmp, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="smoke", storage=storage)
    with browser.serve_dashboard(storage, cli_env()) as base:
        yield base, study


@pytest.mark.slow
@needs_real_fashion
def test_study_page_draws_the_pareto_front_with_named_objectives(smoke):
    base, study = smoke
    n_complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    with browser.chrome() as d:
        d.get(f"{base}/dashboard/studies/{study._study_id}")
        # plotly draws one marker per COMPLETE trial into the Pareto-front plot.
        points = browser.wait_for(d, f"{browser.PARETO_POINTS_JS} >= {n_complete} && "
                                     f"{browser.PARETO_POINTS_JS}", what="Pareto-front markers")
        assert points == n_complete
        # The objectives are named (set by search.run), not "Objective 0", on the plot's axis pickers.
        text = d.execute_script("return document.body.innerText")
        assert "Pareto Front" in text and "Objective X:\naccuracy" in text and "Objective Y:\nroc_auc" in text
        assert "Objective 0" not in text


@pytest.mark.slow
@needs_real_fashion
def test_trials_page_lists_the_trials_and_loads_their_pictures(smoke):
    base, study = smoke
    trials = study.get_trials()
    with browser.chrome() as d:
        d.get(f"{base}/dashboard/studies/{study._study_id}/trials")
        browser.wait_for(d, "document.body.innerText.includes('Trial 0')", what="trial list")
        page = d.execute_script("return document.body.innerText")
        assert f"{len(trials)} Trials" in page
        for t in trials:
            assert f"Trial {t.number}" in page
        assert "per_class_recall" in page and "precision" in page  # user attributes of the selected trial
        images = browser.wait_for(d, browser.ARTIFACTS_LOADED_JS, what="artifact images loaded")
        assert {i["width"] for i in images} >= {1400, 700}  # confusion matrix and recall chart, full size


def test_studies_with_pictures_in_different_directories_are_all_served(tmp_path):
    """Two studies in one database, each with its recorded artifact directory: the dashboard reads both."""
    import io

    from optuna.artifacts.exceptions import ArtifactNotFound

    from search.dashboard import MultiDirArtifactStore, find_artifact_dirs, open_readonly_storage

    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("a", "b"):
        s = optuna.create_study(study_name=name, storage=url)
        artifacts.prepare(s, url, tmp_path / f"pics-{name}")
    storage = open_readonly_storage(url)
    dirs = find_artifact_dirs(storage, None)
    assert dirs == [(tmp_path / "pics-a").resolve(), (tmp_path / "pics-b").resolve()]
    artifacts.store(dirs[1]).write("0123-abcd", io.BytesIO(b"picture of b"))
    store = MultiDirArtifactStore(dirs)
    assert store.open_reader("0123-abcd").read() == b"picture of b"
    with pytest.raises(ArtifactNotFound):
        store.open_reader("dead-beef")
