"""search.report.cli: ``python -m search.report`` end to end, one-line errors, exit codes, nothing created on error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from search.report import cli
from tests.conftest import cli_env
from tests.test_report_fixtures import search_study, small_study, sqlite


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.report", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def test_help_works():
    r = report_cli("--help", cwd=Path.cwd())
    assert r.returncode == 0 and "--study" in r.stdout and "--paper" in r.stdout


def test_report_prints_the_context_and_the_pareto_set_and_writes_into_reports(tmp_path):
    study = small_study(sqlite(tmp_path / "s.db"))
    r = report_cli("--study", "search", "--storage", sqlite(tmp_path / "s.db"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("study search: objectives on the test split; Keras backend jax; weights imagenet:")
    assert "Pareto-optimal trials of search" in r.stdout
    printed = {int(m) for m in re.findall(r"^│\s+(\d+) │", r.stdout, re.M)}  # the first column: trial
    assert printed == {t.number for t in study.best_trials}
    assert lines[-1] == "report: reports/search/summary.md (3 trials, 6 figures)"
    assert (tmp_path / "reports" / "search" / "trials.csv").is_file()


def test_errors_are_one_line_with_the_usage_exit_code_and_create_nothing(tmp_path):
    search_study(sqlite(tmp_path / "s.db"), infeasible=False, failed=False)
    r = report_cli("--study", "nope", "--storage", sqlite(tmp_path / "s.db"), cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "error: --study: no study 'nope' in this storage; studies: search\n")
    missing = tmp_path / "missing.db"
    r = report_cli("--study", "x", "--storage", sqlite(missing), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: --storage: no database at {missing}")
    assert len(r.stderr.splitlines()) == 1
    r = report_cli("--study", "../escape", "--storage", sqlite(tmp_path / "s.db"), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: --study: the study name '../escape' cannot be a directory in reports/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # no database, no reports/, no escape/


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(Exception) as e:
        cli.main(["--study", "x", "--storage", sqlite(tmp_path / "missing.db"), "--debug"])
    assert "no database at" in str(e.value)
    assert cli.main(["--study", "x", "--storage", sqlite(tmp_path / "missing.db")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_study_without_trials_is_a_runtime_error(tmp_path, capsys):
    from tests.test_report_fixtures import new_study

    new_study(sqlite(tmp_path / "e.db"), "empty", [("test_accuracy", "maximize")])
    assert cli.main(["--study", "empty", "--storage", sqlite(tmp_path / "e.db"), "--out", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.startswith("error: study 'empty' has no trials yet")
    assert not (tmp_path / "r").exists()


def test_a_refused_output_directory_is_reported_before_the_storage_is_opened(tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    missing = tmp_path / "missing.db"
    assert cli.main(["--study", "x", "--storage", sqlite(missing), "--out", str(precious)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out: {precious} is not empty and holds no earlier report")
    assert not missing.exists() and [p.name for p in precious.iterdir()] == ["chapter1.tex"]


def test_a_study_of_plain_optuna_is_refused_in_one_line_and_no_report_is_written(tmp_path, capsys):
    import optuna

    study = optuna.create_study(storage=sqlite(tmp_path / "f.db"), study_name="foreign", directions=["maximize"])
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert cli.main(["--study", "foreign", "--storage", sqlite(tmp_path / "f.db"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == ("error: --study: 'foreign' was not created by search.run (it has no "
                                       "search:config attribute); search.report reads only this service's studies\n")
    assert not (tmp_path / "r").exists()
