"""search.errors: what a command prints and returns for each kind of failure."""

from __future__ import annotations

import argparse
import signal

import pytest

from search import errors


def _fail(exc):
    def body(args):
        raise exc
    return body


@pytest.mark.parametrize("exc, code", [(errors.ConfigError("study_configs/x.toml: dropout: bad"), 2),
                                       (errors.UsageError("--seed: must be 0-4294967295, got -1"), 2),
                                       (errors.StorageError("cannot open"), 1),
                                       (errors.Interrupted(signal.SIGINT), 130),
                                       (errors.Interrupted(signal.SIGTERM), 143)])
def test_a_command_prints_one_line_and_returns_the_errors_exit_code(exc, code, capsys):
    assert errors.cli_main(_fail(exc), argparse.Namespace(debug=False)) == code
    err = capsys.readouterr().err
    assert err == f"error: {exc}\n"


def test_debug_shows_the_traceback():
    with pytest.raises(errors.DataError):
        errors.cli_main(_fail(errors.DataError("no files")), argparse.Namespace(debug=True))


def test_an_unexpected_exception_is_not_hidden():
    with pytest.raises(ZeroDivisionError):
        errors.cli_main(_fail(ZeroDivisionError()), argparse.Namespace(debug=False))


def test_an_unknown_name_lists_every_valid_one():
    msg = errors.unknown("sampler", "tpee", {"tpe": 1, "random": 2, "grid": 3})
    assert msg == "unknown sampler 'tpee'; valid: tpe, random, grid"


def test_an_interruption_names_its_signal():
    assert str(errors.Interrupted(signal.SIGTERM)) == "interrupted by SIGTERM"
