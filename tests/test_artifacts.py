"""search.study.artifacts: a study's pictures live in one place fixed at creation; uploading them never fails a
trial and
never leaves an artifact that points at nothing; readers find every study's directory."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound

from search.errors import UsageError
from search.study import artifacts, optuna_compat as compat
from tests.conftest import fill_disk, trial_artifacts

from .stand_ins import PNG


@pytest.fixture
def study(tmp_path):
    url = f"sqlite:///{tmp_path / 'pics.db'}"
    return url, optuna.create_study(study_name="pics", storage=url)


def _pictures(tmp_path: Path, names=("test_confusion_matrix.png", "learning_curves.png")) -> list[str]:
    d = tmp_path / "search-pictures-x"
    d.mkdir()
    for n in names:
        (d / n).write_bytes(PNG)
    return [str(d / n) for n in names]


def test_pictures_go_beside_the_database_and_the_place_is_recorded(study, tmp_path):
    url, s = study
    where = artifacts.prepare(s, url, None)
    assert where == tmp_path / "pics-artifacts" and where.is_dir()
    assert s.user_attrs[artifacts.ARTIFACT_DIR_ATTR] == str(where)


def test_a_study_keeps_its_artifact_directory(study, tmp_path):
    url, s = study
    first = artifacts.prepare(s, url, tmp_path / "mine")
    assert first == (tmp_path / "mine").resolve()
    assert artifacts.prepare(s, url, None) == first  # a resume finds it again
    assert artifacts.prepare(s, url, tmp_path / "mine") == first
    with pytest.raises(UsageError, match=f"--artifact-dir: study 'pics' keeps its pictures in {first}; pass that"):
        artifacts.prepare(s, url, tmp_path / "elsewhere")


def test_a_machine_that_cannot_reach_a_servers_artifact_directory_says_so(tmp_path):
    s = optuna.create_study(study_name="pg")
    s.set_user_attr(artifacts.ARTIFACT_DIR_ATTR, str(tmp_path / "on-another-machine"))
    with pytest.raises(UsageError, match="which this machine cannot reach; mount that directory there"):
        artifacts.prepare(s, "postgresql://u:p@db/x", None)


def test_default_directory_for_database_servers_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifacts.default_artifact_dir("postgresql://u:p@db/x") == tmp_path / artifacts.NON_FILE_DEFAULT
    assert artifacts.default_artifact_dir(f"sqlite:///{tmp_path}/a/s.db") == tmp_path / "a" / "s-artifacts"


def test_uploaded_pictures_are_the_trials_artifacts_and_the_drawing_directory_is_removed(study, tmp_path):
    url, s = study
    where = artifacts.prepare(s, url, None)
    trial = s.ask()
    files = _pictures(tmp_path)
    ids = artifacts.upload_pictures(trial, files, where)
    s.tell(trial, 1.0)
    metas = trial_artifacts(s.get_trials()[0], compat.storage_of(s))
    assert sorted(m["filename"] for m in metas) == ["learning_curves.png", "test_confusion_matrix.png"]
    assert sorted(ids) == sorted(m["artifact_id"] for m in metas)
    with artifacts.store(where).open_reader(ids[0]) as f:
        assert f.read() == PNG
    assert not Path(files[0]).parent.exists()


def test_a_picture_that_cannot_be_stored_never_fails_the_trial_nor_points_at_nothing(study, tmp_path):
    url, s = study
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the artifact directory should be")
    trial = s.ask()
    files = _pictures(tmp_path) + ["error: ValueError: could not draw the ROC curves"]
    assert artifacts.upload_pictures(trial, files, blocked) == []
    s.tell(trial, 1.0)
    (t,) = s.get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert "could not draw the ROC curves" in t.user_attrs["artifact_error"]
    assert "is not a writable directory" in t.user_attrs["artifact_error"]
    assert trial_artifacts(t, compat.storage_of(s)) == []
    assert not Path(files[0]).parent.exists()  # the drawing directory is cleaned up anyway


def test_a_full_artifact_disk_leaves_no_half_picture_and_the_next_upload_is_whole(study, tmp_path, small_disk):
    url, s = study  # the database has space: only the pictures' directory is full
    where = artifacts.prepare(s, url, small_disk / "pictures")
    fill_disk(small_disk)
    full = s.ask()
    assert artifacts.upload_pictures(full, _pictures(tmp_path), where) == []
    s.tell(full, 1.0)
    (t,) = s.get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE and "No space left on device" in t.user_attrs["artifact_error"]
    assert trial_artifacts(t, compat.storage_of(s)) == []
    assert list(where.iterdir()) == []  # neither a part-written picture nor its temporary file
    (small_disk / "filler").unlink()
    later = s.ask()
    (tmp_path / "later").mkdir()
    (first, _) = artifacts.upload_pictures(later, _pictures(tmp_path / "later"), where)
    with optuna.artifacts.FileSystemArtifactStore(str(where)).open_reader(first) as f:  # the dashboard's reader
        assert f.read() == PNG
    assert sorted(p.name for p in where.iterdir()) == sorted(m["artifact_id"] for m in
                                                            trial_artifacts(s.get_trials()[1], compat.storage_of(s)))


class Killed(BaseException):
    """Stands for a kill -9: nothing of the upload's own clean-up runs after it."""


def _kill(*args, **kwargs):
    raise Killed


@pytest.mark.parametrize("cut", ["before the record", "before the rename"])
def test_an_upload_a_kill_cut_short_is_settled_once_its_trial_has_ended(study, tmp_path, monkeypatch, cut):
    url, s = study
    where, storage = artifacts.prepare(s, url, None), compat.storage_of(s)
    trial = s.ask()
    with monkeypatch.context() as m:
        if cut == "before the record":
            m.setattr(storage, "set_trial_system_attr", _kill)
        else:
            m.setattr(artifacts.os, "replace", _kill)
        with pytest.raises(Killed):
            artifacts.upload_pictures(trial, _pictures(tmp_path), where)
    (left,) = where.iterdir()
    assert left.name.startswith(".") and artifacts.sweep_leftovers(s, where) == []  # still running: still uploading
    s.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert artifacts.sweep_leftovers(s, where) == [left.name]
    recorded = [m["artifact_id"] for m in trial_artifacts(s.get_trials()[0], storage)]
    assert [p.name for p in where.iterdir()] == recorded  # no file that no trial references
    assert len(recorded) == (cut == "before the rename")
    for artifact_id in recorded:
        with optuna.artifacts.FileSystemArtifactStore(str(where)).open_reader(artifact_id) as f:
            assert f.read() == PNG


def test_a_write_outside_a_trial_a_kill_cut_short_is_removed_once_stale(study, tmp_path):
    import os
    import time

    url, s = study
    where = artifacts.prepare(s, url, None)
    old, new = where / ".a1.p111.tmp", where / ".a2.p222.tmp"  # WholeFileStore.write's names
    for p in (old, new):
        p.write_bytes(PNG)
    hour_ago = time.time() - artifacts.STALE_WRITE_S - 60
    os.utime(old, (hour_ago, hour_ago))
    assert artifacts.sweep_leftovers(s, where) == [old.name]  # the fresh one may still be being written
    assert [p.name for p in where.iterdir()] == [new.name]


def test_a_trial_another_process_finished_gets_no_picture_file(study, tmp_path):
    url, s = study
    where, trial = artifacts.prepare(s, url, None), s.ask()
    compat.storage_of(s).set_trial_state_values(compat.trial_id(trial), optuna.trial.TrialState.FAIL)
    assert artifacts.upload_pictures(trial, _pictures(tmp_path), where) == []
    assert list(where.iterdir()) == []


def test_studies_with_pictures_in_different_directories_are_all_found(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("a", "b"):
        artifacts.prepare(optuna.create_study(study_name=name, storage=url), url, tmp_path / f"pics-{name}")
    from search.study.storage import open_existing

    dirs = artifacts.find_artifact_dirs(open_existing(url), None)
    assert dirs == [(tmp_path / "pics-a").resolve(), (tmp_path / "pics-b").resolve()]
    artifacts.store(dirs[1]).write("0123-abcd", io.BytesIO(b"picture of b"))
    store = artifacts.read_store(dirs)
    assert store.open_reader("0123-abcd").read() == b"picture of b"
    with pytest.raises(ArtifactNotFound):
        store.open_reader("dead-beef")
    assert artifacts.read_store([]) is None
    with pytest.raises(UsageError, match="--artifact-dir: .* is not a directory"):
        artifacts.find_artifact_dirs(open_existing(url), tmp_path / "missing")
