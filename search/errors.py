"""The one error hierarchy of the service.

Every error a user can cause or meet carries the exit code the CLI returns:
2 for usage and configuration mistakes, 1 for failures at run time.  The CLI
prints ``str(error)`` on one line; tracebacks only with ``--debug``.
"""


class SearchError(Exception):
    """Base class: a failure the CLI reports in one line."""

    exit_code = 1


class UsageError(SearchError):
    """A bad flag, an unknown study, a malformed storage URL."""

    exit_code = 2


class ConfigError(UsageError):
    """A study config that does not validate; the message names file and field."""


class DriftError(UsageError):
    """Resuming a study with a config, data or weights other than it was created with."""


class DataError(SearchError):
    """A dataset that cannot be found or read."""


class BadData(DataError):
    """A user's own dataset that cannot be used as given (no such path, one class, an unreadable image)."""

    exit_code = 2


class WeightsError(SearchError):
    """Backbone weights that cannot be had (offline ImageNet, missing file)."""


class CacheError(SearchError):
    """The feature cache cannot be written (disk full, read-only)."""


class StorageError(SearchError):
    """The Optuna storage cannot be opened or written."""


class TrialFailed(SearchError):
    """One trial failed; the study records the reason and goes on.

    ``kind`` says why, which decides whether the same parameters are tried again
    (search.study.lifecycle.RetryPolicy): "error" (an exception in the trial), "nan" (the
    loss became NaN/inf), "killed" (the kernel or someone killed the trial
    process, e.g. out of memory), "timeout" (run.trial_timeout), "lost" (its
    owner process died), "interrupted" (SIGINT/SIGTERM).
    """

    def __init__(self, message: str, kind: str = "error"):
        self.kind = kind
        super().__init__(message)


class TooManyFailures(SearchError):
    """Consecutive trial failures reached the configured limit."""


class Interrupted(SearchError):
    """SIGINT or SIGTERM arrived; exit code follows the shell's 128 + signal."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        self.retried: list[int] = []  # this process's trials failed and queued for retry (search.api)
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def unknown(what: str, name: object, registry) -> str:
    """The one wording of an unknown name: what it is, the name, and every valid one of ``registry``."""
    return f"unknown {what} {name!r}; valid: {', '.join(map(str, registry))}"


class MissingExtra(UsageError):
    """An optional feature whose package is not installed; the message names the extra that brings it."""


def require_modules(what: str, extra: str, *modules: str) -> None:
    """Raise MissingExtra naming ``pip install -e '.[extra]'`` unless every module can be imported."""
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)} (the '{extra}' extra): "
                           f"pip install -e '.[{extra}]'")


def cli_main(body, args) -> int:
    """Run a command's ``body(args)``: a SearchError becomes one line on stderr and its exit code.

    Tracebacks only with ``args.debug``.  Every command line of the service ends here.
    """
    import sys

    try:
        return body(args)
    except SearchError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
