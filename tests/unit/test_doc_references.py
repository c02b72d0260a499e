"""Every test the docs cite exists: a claim "tested by X" must name a real test.

The docs name tests as ``tests/<path>.py::test_name`` and, right after one, as ``::other_test`` in
the same file. Each cited file must exist and define each cited function.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
CITATION = re.compile(r"(tests/[\w/]+\.py)?::(test_\w+)|(tests/[\w/]+\.py)")


def citations(text: str) -> list[tuple[str, str | None]]:
    """(file, test or None) for every citation, ``::name`` resolved against the last file named."""
    out: list[tuple[str, str | None]] = []
    last: str | None = None
    for m in CITATION.finditer(text):
        path, name, bare = m.group(1), m.group(2), m.group(3)
        if bare:
            last = bare
            out.append((bare, None))
            continue
        last = path or last
        if last is not None:
            out.append((last, name))
    return out


def test_citations_resolve_a_continuation_against_the_last_file() -> None:
    text = "`tests/a.py::test_x`, `::test_y` and tests/b.py"
    assert citations(text) == [
        ("tests/a.py", "test_x"),
        ("tests/a.py", "test_y"),
        ("tests/b.py", None),
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_test_exists(doc: Path) -> None:
    missing = []
    for path, name in citations(doc.read_text()):
        file = ROOT / path
        if not file.exists():
            missing.append(path)
        elif name is not None and not re.search(rf"^(async )?def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc.name} cites tests that do not exist: {sorted(set(missing))}"


def test_the_architecture_guide_names_every_module_of_the_kernel() -> None:
    """docs/architecture.md's package table lists each module: a new one must be placed there."""
    guide = (ROOT / "docs" / "architecture.md").read_text()
    modules = [
        p
        for pkg in ("ml", "mpc", "runtime", "web", "cli")
        for p in sorted((ROOT / "common" / pkg).glob("*.py"))
        if not p.name.startswith("__")
    ]
    missing = [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in guide]
    assert not missing, f"docs/architecture.md does not place {missing}"
