"""search.report.write: a report replaces an earlier one whole, never mixes with it, never leaves reports/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from search.errors import SearchError, UsageError
from search.report import figures, load
from search.report.write import default_out, write_report
from tests.test_report_fixtures import add, attrs, new_study, small_study, sqlite


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _one_trial(storage):
    study = new_study(storage, "search", [("test_accuracy", "maximize"), ("train_time_s", "minimize")])
    add(study, [0.5, 10.0], attrs(0.5, 0.9, 10.0, 100.0))


def test_a_new_report_replaces_an_earlier_one_whole(tmp_path):
    small_study(sqlite(tmp_path / "full.db"))
    _one_trial(sqlite(tmp_path / "one.db"))
    out = tmp_path / "rep"
    write_report(load.load("search", sqlite(tmp_path / "full.db")), out)
    assert (out / "param_importances.png").is_file()
    (out / "notes-from-last-time.txt").write_text("stale")
    write_report(load.load("search", sqlite(tmp_path / "one.db")), out)
    names = set(_files(out))
    # One COMPLETE trial cannot give importances: the earlier picture must not survive beside "Not drawn".
    assert "param_importances.png" not in names and "notes-from-last-time.txt" not in names
    assert "Not drawn: fewer than 2 COMPLETE trials" in (out / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.db", "one.db", "rep"]  # no temporary left


def test_a_report_that_fails_halfway_leaves_the_earlier_one_untouched(tmp_path, monkeypatch):
    small_study(sqlite(tmp_path / "s.db"))
    d = load.load("search", sqlite(tmp_path / "s.db"))
    out = tmp_path / "rep"
    write_report(d, out)
    before = _files(out)

    def broken(_):
        raise SearchError("disk full")

    monkeypatch.setattr(figures, "draw", broken)
    with pytest.raises(SearchError, match="disk full"):
        write_report(d, out)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "s.db"]


def test_a_directory_holding_something_else_is_never_replaced(tmp_path):
    _one_trial(sqlite(tmp_path / "s.db"))
    d = load.load("search", sqlite(tmp_path / "s.db"))
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(UsageError, match="is not empty and holds no earlier report"):
        write_report(d, precious)
    assert _files(precious) == {"chapter1.tex": b"years of work"}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        write_report(d, tmp_path / "afile")


def test_the_working_directory_is_never_replaced(tmp_path, monkeypatch):
    _one_trial(sqlite(tmp_path / "s.db"))
    d = load.load("search", sqlite(tmp_path / "s.db"))
    (tmp_path / "summary.md").write_text("looks like a report")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="holds the working directory"):
        write_report(d, Path("."))
    assert (tmp_path / "s.db").is_file()


def test_reports_are_readable_like_any_directory(tmp_path):
    _one_trial(sqlite(tmp_path / "s.db"))
    out = tmp_path / "rep"
    write_report(load.load("search", sqlite(tmp_path / "s.db")), out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("name, why", [("../escape", "starts with a dot"), ("a/b", "path separator"),
                                       (".hidden", "starts with a dot"), ("..", "starts with a dot"),
                                       ("a\\b", "path separator"), ("", "empty")])
def test_the_default_output_never_leaves_reports(name, why):
    with pytest.raises(UsageError, match=why) as e:
        default_out(name)
    assert "\n" not in str(e.value) and "--out" in str(e.value)


def test_the_default_output_is_reports_slash_the_study_name():
    assert default_out("fmnist_reg-random") == Path("reports") / "fmnist_reg-random"
    assert default_out("a..b") == Path("reports") / "a..b"  # dots inside one name stay inside reports/


def test_a_file_system_error_is_one_line_and_leaves_no_temporary_directory(tmp_path, monkeypatch):
    from search.report import tables

    _one_trial(sqlite(tmp_path / "s.db"))
    d = load.load("search", sqlite(tmp_path / "s.db"))

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tables, "write_csv", full)
    with pytest.raises(SearchError) as e:
        write_report(d, tmp_path / "rep")
    assert str(e.value) == f"--out: cannot write the report to {tmp_path / 'rep'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
