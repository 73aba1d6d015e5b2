"""search.dashboard: optuna-dashboard with split-named objectives, user attributes and per-trial pictures; bad input
in one line before anything says "open http".

Fast tests talk HTTP to the server on a study built by the real objective (its trial process replaced by a
function returning measures and a picture); the browser tests run the real ``smoke`` study and drive
Debian's chromium headless against the dashboard on localhost.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import optuna
import pytest

from search import dashboard
from search.config import load_config
from search.isolate import Outcome
from search.study import artifacts, objective as obj, optuna_compat as compat
from tests import browser

from .conftest import cli_env, lines, needs_real_fashion, requires
from .stand_ins import PNG, measures

SECRET = "S3CRETPW"


@pytest.fixture(scope="module")
def pictured_study(tmp_path_factory) -> tuple[str, optuna.Study]:
    """A SQLite study of 2 trials run through the real objective; pictures in <db>-artifacts/."""
    from .conftest import TINY_CONFIG

    tmp = tmp_path_factory.mktemp("dash")
    (tmp / "c.toml").write_text(TINY_CONFIG.format(n_trials=2))
    config = load_config(str(tmp / "c.toml"))
    url = f"sqlite:///{tmp / 'dash.db'}"
    study = optuna.create_study(study_name="dash", storage=url, directions=config.directions)
    study.set_metric_names(config.metric_names)
    where = artifacts.prepare(study, url, None)

    def runner(spec, on_event, timeout):
        d = Path(tmp / f"pics-{len(list(tmp.glob('pics-*')))}")
        d.mkdir()
        (d / "test_confusion_matrix.png").write_bytes(PNG)
        return Outcome({**measures(spec), "pictures": [str(d / "test_confusion_matrix.png")]}, 900.0, 50.0)

    ctx = obj.Context(config=config, cache_dir=tmp, cache_key="k", n_classes=10, target=2, artifact_dir=where,
                      runner=runner)
    study.optimize(obj.make_objective(ctx, lambda e: None), n_trials=2)
    return url, study


def test_the_api_shows_split_named_objectives_user_attributes_and_serves_the_pictures(pictured_study):
    url, study = pictured_study
    with browser.serve_dashboard(url, cli_env()) as base:
        (summary,) = browser.get_json(f"{base}/api/studies")["study_summaries"]
        detail = browser.get_json(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["test_accuracy", "test_roc_auc", "train_time_s", "peak_memory_mb"]
        assert [t["number"] for t in detail["trials"]] == [0, 1]
        for t in detail["trials"]:
            keys = {a["key"] for a in t["user_attrs"]}
            assert {"test_precision", "test_recall", "test_f1", "test_time_s", "test_per_class_recall",
                    "test_confusion_matrix", "objective_split"} <= keys
            (a,) = t["artifacts"]
            assert a["filename"] == "test_confusion_matrix.png"
            with urllib.request.urlopen(f"{base}/artifacts/{summary['study_id']}/{t['trial_id']}/"
                                        f"{a['artifact_id']}", timeout=30) as r:
                assert r.headers["Content-Type"] == "image/png" and r.read() == PNG


def test_a_missing_database_is_one_line_and_creates_nothing(main_here):
    code, err = main_here(dashboard.main, "--storage", "sqlite:///none.db")
    assert code == 2
    assert lines(err) == ["error: --storage: no database at none.db; run `python -m search.run --study NAME` "
                          "first or pass --storage"]
    assert os.listdir(main_here.work) == []


def test_a_malformed_url_never_prints_its_password(main_here):
    code, err = main_here(dashboard.main, "--storage", f"postgresql//search:{SECRET}@db/search")
    assert code == 2 and SECRET not in err
    assert lines(err) == ["error: --storage: malformed storage URL 'postgresql//search:***@db/search' "
                          "(e.g. sqlite:///studies.db, postgresql://user:pass@host/db)"]


def test_a_busy_port_is_one_line_before_any_address_is_announced(pictured_study, main_here):
    url, _ = pictured_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = main_here(dashboard.main, "--storage", url, "--port", str(port))
    assert code == 2
    assert len(lines(err)) == 1
    assert lines(err)[0].startswith(f"error: --host/--port: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "open http" not in err


# ---------------------------------------------------------------- the browser, on the real smoke study

@pytest.fixture(scope="module")
def smoke_dashboard(smoke_study):
    requires("browser")
    storage, r, _ = smoke_study
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="smoke", storage=storage)
    with browser.serve_dashboard(storage, cli_env()) as base:
        yield base, study


@pytest.mark.slow
@needs_real_fashion
def test_the_study_page_draws_the_pareto_front_with_split_named_objectives(smoke_dashboard):
    base, study = smoke_dashboard
    n_complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    with browser.chrome() as d:
        d.get(f"{base}/dashboard/studies/{compat.study_id(study)}")
        # plotly draws one marker per COMPLETE trial into the Pareto-front plot.
        points = browser.wait_for(d, f"{browser.PARETO_POINTS_JS} >= {n_complete} && "
                                     f"{browser.PARETO_POINTS_JS}", what="Pareto-front markers")
        assert points == n_complete
        text = d.execute_script("return document.body.innerText")
        assert "Pareto Front" in text and "Objective X:\ntest_accuracy" in text
        assert "Objective Y:\ntest_roc_auc" in text and "Objective 0" not in text


@pytest.mark.slow
@needs_real_fashion
def test_the_trials_page_lists_the_trials_and_loads_their_pictures(smoke_dashboard):
    base, study = smoke_dashboard
    trials = study.get_trials()
    with browser.chrome() as d:
        d.get(f"{base}/dashboard/studies/{compat.study_id(study)}/trials")
        browser.wait_for(d, "document.body.innerText.includes('Trial 0')", what="trial list")
        page = d.execute_script("return document.body.innerText")
        assert f"{len(trials)} Trials" in page
        for t in trials:
            assert f"Trial {t.number}" in page
        assert "test_per_class_recall" in page and "test_precision" in page  # the selected trial's attributes
        images = browser.wait_for(d, browser.ARTIFACTS_LOADED_JS, what="artifact images loaded")
        assert len(images) >= 4 and all(i["width"] >= 500 for i in images)  # drawn pictures, full size
