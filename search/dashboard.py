"""Command line: ``python -m search.dashboard`` serves optuna-dashboard on the studies, with their trial pictures.

Objective names come from the study (the service sets them), every measure
that is not an objective is a trial user attribute, and the per-trial
confusion matrix and per-class recall are artifacts.  The artifact store is
found from the studies' ``search:artifact_dir`` attribute (several
directories are searched in turn), else ``--artifact-dir``.  Bound to
127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import BinaryIO

from search.errors import SearchError, StorageError, UsageError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.dashboard", description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///studies.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--artifact-dir", type=Path,
                   help="artifact directory (default: the one each study recorded as search:artifact_dir)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


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


def open_readonly_storage(url: str | None):
    """An RDB storage on an existing database; a missing SQLite file is an error, not a new empty one."""
    import optuna
    from sqlalchemy.engine import make_url

    from search.study import DEFAULT_STORAGE, _masked, check_storage_url

    url = check_storage_url(url or DEFAULT_STORAGE)
    engine_kwargs = {}
    if url.startswith("sqlite"):
        db = Path(make_url(url).database)
        if not db.is_file():
            raise UsageError(f"--storage: no database at {db}; run `python -m search.run --study NAME` first "
                             f"or pass --storage")
        engine_kwargs = {"connect_args": {"timeout": 300}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as e:  # driver-specific errors all mean "cannot open"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"--storage: cannot open {_masked(url)}: {first}") from None


def find_artifact_dirs(storage, requested: Path | None) -> list[Path]:
    """--artifact-dir, else every existing directory the studies recorded (in study order)."""
    from search.artifacts import ARTIFACT_DIR_ATTR

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except SearchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: must be 1-65535, got {args.port}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_readonly_storage(args.storage)
    dirs = find_artifact_dirs(storage, args.artifact_dir)
    store = None
    if len(dirs) == 1:
        store = optuna.artifacts.FileSystemArtifactStore(str(dirs[0]))
    elif dirs:
        store = MultiDirArtifactStore(dirs)
    studies = storage.get_all_studies()
    where = ", ".join(map(str, dirs)) if dirs else "none found (trial pictures will not show)"
    print(f"optuna-dashboard: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'} "
          f"({', '.join(s.study_name for s in studies) or '-'}); artifacts: {where}", file=sys.stderr)
    print(f"open http://{args.host}:{args.port}/dashboard/ (Ctrl-C to stop)", file=sys.stderr, flush=True)

    from optuna_dashboard import run_server

    try:
        run_server(storage, host=args.host, port=args.port, artifact_store=store)
    except OSError as e:
        raise UsageError(f"--host/--port: cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
