"""The service's named choices as Markdown, generated from the registries (the README's tables come from here).

``python -m search.catalog`` prints the tables; ``--write README.md`` replaces the block between
``<!-- catalog:begin -->`` and ``<!-- catalog:end -->`` in that file; ``--check README.md`` exits 1 when that
block is stale.  Nothing is listed by hand: a registry entry shows up here, in validation and in every
"unknown ...; valid: ..." message at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search import runtime
from search.config import choices

BEGIN, END = "<!-- catalog:begin -->", "<!-- catalog:end -->"


def _table(title: str, field: str, rows: list[tuple[str, str]]) -> str:
    lines = [f"**{title}** (`{field}`)", "", "| name | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {doc} |" for name, doc in rows]
    return "\n".join(lines)


def tables() -> str:
    """Every registry as a Markdown table, in the order a config file reads."""
    c = choices
    parts = [
        _table("Datasets", "[dataset] name", [(k, v.doc) for k, v in c.DATASETS.items()]),
        _table("Imbalance profiles", "[balance] profile", list(c.PROFILES.items())),
        _table("Backbones", "[backbone] name", [(k, f"{b.doc}; input_size at least {b.min_size}")
                                                for k, b in c.BACKBONES.items()]),
        _table("Preprocessing", "[preprocessing] name", list(c.PREPROCESSINGS.items())),
        _table("Augmentation", "[augmentation] mode", list(c.AUGMENTATIONS.items())),
        _table("Imbalance handling", "[training] handling",
               [(k, f"{h.doc} (changes the {h.changes})") for k, h in c.HANDLINGS.items()]),
        _table("Evaluation protocol", "[training] evaluation", list(c.EVALUATIONS.items())),
        _table("Metrics", "[[objectives]] metric",
               [(k, f"{m.doc}; {'higher' if m.direction == 'maximize' else 'lower'} is better"
                 + ("; stored as `val_<name>` / `test_<name>`" if m.kind == "quality" else ""))
                for k, m in c.METRICS.items()]),
        _table("Samplers", "[sampler] name", list(c.SAMPLERS.items())),
        _table("Early stopping", "[run] early_stopping", list(c.EARLY_STOPPING.items())),
        _table("Keras backends of the trials", "--backend",
               [(k, f"package `{v}`" + (" (the default)" if k == runtime.DEFAULT_BACKEND else ""))
                for k, v in c.BACKENDS.items()]),
    ]
    return "\n\n".join(parts) + "\n"


def replace_block(text: str, block: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.catalog", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, help="replace the catalog block of this file")
    g.add_argument("--check", type=Path, help="exit 1 if this file's catalog block is stale")
    a = p.parse_args(argv)
    block = tables()
    if a.write or a.check:
        path = a.write or a.check
        text = path.read_text()
        if BEGIN not in text or END not in text:
            print(f"error: {path}: no {BEGIN} ... {END} block", file=sys.stderr)
            return 2
        new = replace_block(text, block)
        if a.check:
            if new != text:
                print(f"error: {path}: the catalog block is stale; run python -m search.catalog --write {path}",
                      file=sys.stderr)
                return 1
            return 0
        path.write_text(new)
        return 0
    print(block, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
