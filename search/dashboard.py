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

from search.errors import UsageError, cli_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.dashboard", description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: $SEARCH_STORAGE, else sqlite:///studies.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--artifact-dir", type=Path,
                   help="artifact directory (default: the one each study recorded as search:artifact_dir)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli_main(_run, parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: must be 1-65535, got {args.port}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from search.study import artifacts, storage as sto

    storage = sto.open_readonly(sto.storage_url(args.storage))
    dirs = artifacts.find_artifact_dirs(storage, args.artifact_dir)
    store = artifacts.read_store(dirs)
    _check_port(args.host, args.port)
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


def _check_port(host: str, port: int) -> None:
    """Bind and release the address first, so a busy port is one line before anything says "open ..."."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UsageError(f"--host/--port: cannot listen on {host}:{port}: {e.strerror or e}") from None


if __name__ == "__main__":
    sys.exit(main())
