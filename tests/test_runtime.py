"""search.runtime: the trial backend's choice, and the runtime identity a study and a cache key record."""

import pytest

from search import runtime
from search.errors import UsageError


def test_backend_is_the_flag_else_the_environment_else_jax(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert runtime.resolve_backend(None) == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert runtime.resolve_backend(None) == "tensorflow" and runtime.resolve_backend("jax") == "jax"
    with pytest.raises(UsageError, match="^unknown Keras backend 'theano'; valid: jax, tensorflow, torch$"):
        runtime.resolve_backend("theano")


def test_a_backend_that_is_not_installed_is_named_with_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(UsageError, match=r"^Keras backend torch is not installed \(pip install torch\)"):
        runtime.resolve_backend("torch")


def test_runtime_identity_names_backends_and_versions(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    rt = runtime.runtime_identity("jax")
    assert rt["trial_backend"] == "jax" and rt["extraction_backend"] == "tensorflow"
    assert rt["keras"] == runtime.package_version("keras") != "not installed"
    assert {"jax", "tensorflow"} <= set(rt)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert runtime.runtime_identity("jax")["extraction_backend"] == "jax"
