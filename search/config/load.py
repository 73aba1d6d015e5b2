"""Finding and reading study configs; errors that name the file and the dotted field; safe study names."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from pydantic import ValidationError

from search.config.schema import FieldError, StudyConfig
from search.errors import ConfigError, UsageError

MAX_STUDY_NAME = 100
# A study name becomes a directory name (reports/<name>, artifacts, caches): no separators, no leading dot.
_STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def configs_dir() -> Path:
    """$SEARCH_CONFIGS_DIR, else ./study_configs, else the one beside this package (editable install)."""
    if "SEARCH_CONFIGS_DIR" in os.environ:
        return Path(os.environ["SEARCH_CONFIGS_DIR"])
    here = Path.cwd() / "study_configs"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "study_configs"


def available_studies(directory: Path | None = None) -> list[str]:
    """The names of the study configs in ``directory`` (default: ``configs_dir()``)."""
    return sorted(p.stem for p in (directory or configs_dir()).glob("*.toml"))


def load_config(study: str, directory: Path | None = None, subset: int | None = None) -> StudyConfig:
    """Load ``study`` (a name in the configs directory or a path to a .toml file) into a StudyConfig.

    Raises UsageError for an unknown study or missing file, ConfigError (naming the
    file and the field) for anything that does not validate.
    """
    path = Path(study)
    if path.suffix != ".toml":
        directory = directory or configs_dir()
        path = directory / f"{study}.toml"
        if not path.is_file():
            names = ", ".join(available_studies(directory)) or "(none)"
            raise UsageError(f"--study: unknown study {study!r}; available: {names}")
    elif not path.is_file():
        raise UsageError(f"--study: no such config file {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if "name" in raw:
        raise ConfigError(f"{path}: name: unknown key (the study name is the file name)")
    if subset is not None:  # validated with the file, so that a slice too small for its splits is refused here
        raw["dataset"] = {**raw.get("dataset", {}), "subset": subset}
    try:
        return StudyConfig.model_validate({"name": path.stem, **raw})
    except ValidationError as e:
        raise ConfigError(format_validation(path, e)) from None


def format_validation(path: Path, err: ValidationError) -> str:
    """One line: the file, the dotted field of the first error (typos first), the message."""
    errs = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errs[0]
    msg = first["msg"].removeprefix("Value error, ")
    ctx_err = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_err, FieldError):
        loc = [str(p) for p in ctx_err.loc]
        msg = ctx_err.msg
    else:
        # Drop pydantic's union-member tags (e.g. 'float', 'function-after[...]').
        loc = [str(p) for p in first["loc"]
               if not (isinstance(p, str) and (p in ("float", "int", "categorical", "bool", "str")
                                                or "[" in p))]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif not isinstance(ctx_err, FieldError) and isinstance(first.get("input"), (bool, int, float, str)):
        msg = f"{msg} (got {first['input']!r})"
    more = len(errs) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {'.'.join(loc) or '(top level)'}: {msg}{suffix}"


def check_study_name(name: str, flag: str = "--study-name") -> str:
    """A study name that is safe as a directory name: letters, digits, ``-_.``, no leading dot, <= 100 chars."""
    if not name:
        raise UsageError(f"{flag}: must not be empty")
    if len(name) > MAX_STUDY_NAME:
        raise UsageError(f"{flag}: longer than {MAX_STUDY_NAME} characters")
    if not _STUDY_NAME.fullmatch(name):
        raise UsageError(f"{flag}: {name!r} may hold only letters, digits, '-', '_' and '.', "
                         f"and must not start with '.'")
    return name


def safe_name(text: str) -> str:
    """``text`` made into a valid study-name part (for names derived from a weights file's name)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "weights"
    return out[:MAX_STUDY_NAME]
