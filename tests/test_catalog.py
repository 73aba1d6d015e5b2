"""search.catalog: the README's tables of named choices are the registries', and a stale block is caught."""

from __future__ import annotations

from pathlib import Path

from search import catalog
from search.config import choices

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_catalog_block_is_the_registries():
    assert catalog.main(["--check", str(README)]) == 0, "run: python -m search.catalog --write README.md"


def test_every_registry_name_is_listed():
    block = catalog.tables()
    for name in (*choices.DATASETS, *choices.HANDLINGS, *choices.SAMPLERS):
        assert f"| `{name}` |" in block


def test_a_stale_block_is_reported_and_write_fixes_it(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{catalog.BEGIN}\n| `old` | gone |\n{catalog.END}\noutro\n")
    assert catalog.main(["--check", str(doc)]) == 1
    assert catalog.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert "`old`" not in text and text.startswith("intro\n") and text.endswith(f"{catalog.END}\noutro\n")
    assert catalog.main(["--check", str(doc)]) == 0
