"""Where a study's trial pictures live, and their upload as Optuna artifacts.

The pictures are drawn inside each trial's process (search.trial.pictures); the
coordinating process uploads the files with ``optuna.artifacts.upload_artifact``
to a ``FileSystemArtifactStore``.  The store's place is fixed once per study,
when it is created, and recorded on the study (user attribute
``search:artifact_dir``) so that every worker, ``search.dashboard`` and
``search.report`` use the same one: beside a SQLite database by default
(``studies.db`` -> ``studies-artifacts/``); for a database server
``--artifact-dir`` or ``./search-artifacts`` of the creating machine, which
other machines must reach at the same path (a shared mount).

A picture that cannot be stored never fails the trial: the error is recorded
as the trial's user attribute ``artifact_error``.  No file is ever left that no
trial references: a picture is written whole under a hidden name that names its
trial, recorded, then renamed into place, and what a kill -9 leaves is settled
by ``sweep_leftovers`` at the end of a run.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from search.errors import UsageError
from search.study import optuna_compat as compat

if TYPE_CHECKING:
    import optuna

ARTIFACT_DIR_ATTR = "search:artifact_dir"
NON_FILE_DEFAULT = "search-artifacts"


def default_artifact_dir(storage_url: str) -> Path:
    """``<db stem>-artifacts/`` beside a SQLite file; ``./search-artifacts`` for a database server."""
    from sqlalchemy.engine import make_url

    u = make_url(storage_url)
    if u.get_backend_name() == "sqlite" and u.database:
        db = Path(u.database).resolve()
        return db.with_name(f"{db.stem}-artifacts")
    return (Path.cwd() / NON_FILE_DEFAULT).resolve()


def prepare(study: "optuna.Study", storage_url: str, requested: Path | None) -> Path:
    """The study's artifact directory: recorded at creation, the same for every process afterwards.

    Asking for another one is refused (the pictures would be split over two places); a
    recorded directory that this machine cannot reach is an error naming it, except
    beside a SQLite file, where it is simply made again.
    """
    recorded = study.user_attrs.get(ARTIFACT_DIR_ATTR)
    wanted = requested.expanduser().resolve() if requested is not None else None
    if recorded and wanted is not None and Path(recorded) != wanted:
        raise UsageError(f"--artifact-dir: study {study.study_name!r} keeps its pictures in {recorded}; "
                         f"pass that directory or leave the flag out")
    path = Path(recorded) if recorded else (wanted or default_artifact_dir(storage_url))
    local = storage_url.startswith("sqlite")
    if recorded and not path.is_dir() and not local:
        raise UsageError(f"study {study.study_name!r} keeps its pictures in {path}, which this machine cannot reach; "
                         f"mount that directory there (every machine shares it)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--artifact-dir: cannot create {path}: {e.strerror}") from None
    if not recorded:
        study.set_user_attr(ARTIFACT_DIR_ATTR, str(path))
    return path


def store(path: Path | str) -> "WholeFileStore":
    return WholeFileStore(path)


class WholeFileStore:
    """Optuna's FileSystemArtifactStore (its layout, its reads), writing each artifact whole: the bytes go to a
    hidden temporary file that is renamed into place, so that a full disk leaves no half-written picture."""

    def __init__(self, path: Path | str):
        import optuna

        self.path = Path(path)
        self._store = optuna.artifacts.FileSystemArtifactStore(str(path))

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._store.open_reader(artifact_id)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        os.replace(self.stage(artifact_id, f"p{os.getpid()}", content_body), self.path / artifact_id)

    def stage(self, artifact_id: str, owner: str, content_body: BinaryIO) -> Path:
        """Write the artifact whole to a hidden ``.<id>.<owner>.tmp`` (removed again if the write fails)."""
        tmp = self.path / f".{artifact_id}.{owner}.tmp"
        try:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(content_body, f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp


def upload_pictures(trial: "optuna.Trial", pictures: list[str], artifact_dir: Path | None) -> list[str]:
    """Upload the picture files a trial process drew, then remove them; return the artifact ids.  Never raises."""
    if artifact_dir is None or not pictures:
        return []
    errors = [p.removeprefix("error: ") for p in pictures if p.startswith("error:")]
    files = [p for p in pictures if not p.startswith("error:")]
    ids = []
    try:
        if not Path(artifact_dir).is_dir() or not os.access(artifact_dir, os.W_OK):
            raise OSError(f"artifact directory {artifact_dir} is not a writable directory")
        st = store(artifact_dir)
        for path in files:
            ids.append(_upload(trial, st, path))
    except Exception as e:  # a picture is never worth a trial
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        for d in {str(Path(p).parent) for p in files}:
            shutil.rmtree(d, ignore_errors=True)
    if errors:
        try:
            trial.set_user_attr("artifact_error", "; ".join(errors)[:500])
        except Exception:
            pass
    return ids


def _upload(trial: "optuna.Trial", st: WholeFileStore, path: str) -> str:
    """One picture as the trial's artifact: written whole under a hidden name that names the trial, recorded on
    the trial, then renamed into place.  A failed write records nothing; a kill -9 on the way leaves only the
    hidden file, which ``sweep_leftovers`` finishes or removes once the trial has ended."""
    artifact_id, tid = str(uuid.uuid4()), compat.trial_id(trial)
    key, value = compat.artifact_record(artifact_id, Path(path).name, "image/png")
    with open(path, "rb") as f:
        tmp = st.stage(artifact_id, f"t{tid}", f)
    try:  # a trial that another process has finished refuses the record
        trial.storage.set_trial_system_attr(tid, key, value)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, st.path / artifact_id)
    return artifact_id


# A write outside a trial (``WholeFileStore.write``: the dashboard's uploads) takes milliseconds; its temporary
# file is removed once it is older than this, whichever process or machine wrote it.
STALE_WRITE_S = 3600.0


def sweep_leftovers(study: "optuna.Study", artifact_dir: Path | None) -> list[str]:
    """Settle the uploads a kill -9 cut short, once their trial has ended: a recorded picture is renamed into
    place, an unrecorded one removed.  A trial that still runs may still be uploading, so its files stay.
    A write outside a trial left for over STALE_WRITE_S is removed.  Returns the names settled; never raises
    (the next sweep tries again)."""
    try:
        leftovers = list(Path(artifact_dir).glob(".*.t*.tmp"))
        stale = [p for p in Path(artifact_dir).glob(".*.p*.tmp") if time.time() - p.stat().st_mtime > STALE_WRITE_S]
    except (OSError, TypeError):
        return []
    storage = compat.storage_of(study)
    return [tmp.name for tmp in leftovers if _settle(storage, tmp)] + [p.name for p in stale if _remove(p)]


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except OSError:
        return False


def _settle(storage: "optuna.storages.BaseStorage", tmp: Path) -> bool:
    try:
        artifact_id, owner = tmp.name[1:-len(".tmp")].rsplit(".", 1)
        trial = storage.get_trial(int(owner[1:]))
        if not trial.state.is_finished():
            return False
        if compat.ARTIFACT_PREFIX + artifact_id in trial.system_attrs:
            os.replace(tmp, tmp.parent / artifact_id)
        else:
            tmp.unlink(missing_ok=True)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- reading (dashboard)

class MultiDirArtifactStore:
    """Read-mostly artifact store over several FileSystemArtifactStore directories (first hit wins)."""

    def __init__(self, dirs: list[Path]):
        import optuna

        self.dirs = dirs
        self._stores = [optuna.artifacts.FileSystemArtifactStore(str(d)) for d in dirs]

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for s in self._stores:
            try:
                return s.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of {', '.join(map(str, self.dirs))}")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for s in self._stores:
            try:
                s.remove(artifact_id)
                return
            except ArtifactNotFound:
                continue


def find_artifact_dirs(storage, requested: Path | None) -> list[Path]:
    """--artifact-dir, else every existing directory the studies recorded (in study order)."""
    if requested is not None:
        if not requested.is_dir():
            raise UsageError(f"--artifact-dir: {requested} is not a directory")
        return [requested.resolve()]
    dirs: list[Path] = []
    for s in storage.get_all_studies():
        d = s.user_attrs.get(ARTIFACT_DIR_ATTR)
        if d and Path(d).is_dir() and Path(d) not in dirs:
            dirs.append(Path(d))
    return dirs


def read_store(dirs: list[Path]):
    """One store over the directories: a FileSystemArtifactStore for one, first-hit-wins for several, None for none."""
    if not dirs:
        return None
    return store(dirs[0]) if len(dirs) == 1 else MultiDirArtifactStore(dirs)
