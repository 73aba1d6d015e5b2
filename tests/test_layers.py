"""The package's layers, read from the source: every module imports only its own layer or those below it, no
import circle (function-local and TYPE_CHECKING imports counted), no function over 80 lines, no Optuna
internals outside search/study/optuna_compat.py, and the trial process imports no Optuna."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "search"

# Bottom to top; a module is named without the "search." prefix, a package by its first part.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("config",),                        # names, the study's schema and the trial's typed spec
    ("runtime", "isolate", "signals"),  # what every process needs
    ("data",),
    ("features",),
    ("training",),
    ("trial",),                         # the trial process: no Optuna
    ("study",),                         # the lowest layer that imports Optuna
    ("api", ""),                        # "": search/__init__.py, the public API
    ("run", "workers", "confirm", "dashboard", "catalog", "progress", "report"),  # front doors
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Every search module that ``name`` imports, anywhere in the file."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # "from search import data" imports search.data.datasets; "from search.config import X" imports search.config.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    short = module.removeprefix("search").removeprefix(".")
    return LAYER_OF[short.split(".")[0]]


def test_every_module_has_a_layer():
    assert [m for m in modules() if m.removeprefix("search").removeprefix(".").split(".")[0] not in LAYER_OF] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} -> {t}" for m, ts in graph().items() for t in ts if layer(t) > layer(m))
    assert upward == []


def test_there_is_no_import_circle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_checker_sees_a_function_local_circle(tmp_path):
    """The static check above can fail: a circle hidden in function bodies is found."""
    (tmp_path / "search").mkdir()
    a, b = tmp_path / "search" / "a.py", tmp_path / "search" / "b.py"
    a.write_text("def f():\n    from search import b\n")
    b.write_text("def g():\n    from search.a import f\n")
    known = {"search.a", "search.b"}
    assert imported("search.a", a, known) == {"search.b"} and imported("search.b", b, known) == {"search.a"}


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert long == []


def test_optuna_internals_only_in_the_compatibility_module():
    private = re.compile(r"\._(trial_id|study_id|storage|cached_frozen_trial)\b|Cannot tell a")
    hits = [f"{name}: {line.strip()}" for name, path in modules().items() if name != "search.study.optuna_compat"
            for line in path.read_text().splitlines() if private.search(line)]
    assert hits == []


@pytest.mark.parametrize("module", ["search.trial.child", "search.features.feature_cache", "search.trial.epochs"])
def test_the_trial_process_imports_no_optuna(module):
    code = f"import sys, {module}; print(sorted(m for m in ('optuna', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_layer_below_study_names_optuna():
    """Statically, function-local imports too: Optuna is the study layer's, never a layer beneath it."""
    study = LAYER_OF["study"]
    hits = []
    for name, path in modules().items():
        if layer(name) >= study:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            hits += [f"{name}: {n}" for n in names if n.split(".")[0] in ("optuna", "optuna_dashboard")]
    assert hits == []


def test_the_package_folders_are_the_layers():
    """Each layer's modules sit in the folder named after it, so the tree itself shows the layering."""
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert folders == sorted(["config", "data", "features", "training", "trial", "study", "report"])
