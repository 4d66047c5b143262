"""Citations of the mathematics reference, docs/algorithms.md, resolve to its sections.

Docstrings, tests, documentation pages and problems cite the reference as
``docs/algorithms.md, '<section title>'``. Every such citation must name a heading that
exists on the page, so renaming a section without updating its citations fails here; and
nothing may cite the design notes that live outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "algorithms.md"
SCANNED = ("src", "tests", "docs", "problems", "examples", "benchmarks", "README.md")
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".txt", ".cfg"}

# The path (possibly in code markup), a comma, then one or more quoted titles joined by
# commas or "and"; each title on one line, with only blanks and comment markers between the
# parts (a citation broken across lines of a docstring or a comment).
_TITLE = r"'[^'\n]+'"
_GAP = r"[\s#*]*"
CITATION = re.compile(
    rf"docs/algorithms\.md`{{0,2}},{_GAP}(?P<titles>{_TITLE}(?:{_GAP}(?:,|and){_GAP}{_TITLE})*)"
)
TITLE = re.compile(r"'(?P<title>[^'\n]+)'")
MENTION = re.compile(r"docs/algorithms\.md")
# The design notes outside the repository (spelled in two pieces so that this file does
# not match itself).
OUTSIDE = re.compile(r"\b" + "ALGORITHMS" + r"\.md\b")


def _files() -> list[Path]:
    found: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix in SUFFIXES
                and "__pycache__" not in p.parts
                and p != Path(__file__).resolve()
            )
    return found


def headings(text: str) -> set[str]:
    """The Markdown heading titles of ``text`` (ATX headings outside code fences)."""
    titles: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6}\s+(?P<title>.+?)\s*#*\s*$", line)
        if match and not fenced:
            titles.add(match["title"])
    return titles


TITLES = headings(PAGE.read_text(encoding="utf-8"))


def test_the_reference_has_its_stable_sections() -> None:
    expected = {
        "Notation and conventions",
        "Standard form and signs",
        "Projection and controller state",
        "Multiplier controllers",
        "GDA",
        "Polyak momentum",
        "Nesterov momentum",
        "Adam",
        "nuPI",
        "PID Lagrangian",
        "Optimistic gradient ascent",
        "Extragradient",
        "Multiplicative weights",
        "The nuPI reduction table",
        "Update orders",
        "Formulations",
        "Lagrangian",
        "Quadratic penalty",
        "Augmented Lagrangian",
        "Penalty schedule",
        "Proxy constraints",
        "The weight-sharing proximal operator",
        "Weight-sharing facts",
        "Sort, shift and PAVA",
        "Parallel PAV",
        "Divide and conquer",
        "The convex-minorant view",
        "Sparsity proxes",
        "The iris hard-margin SVM",
        "Penalty updaters",
        "Per-group dual settings",
        "Per-group controllers",
        "Multiplier bounds and restarts",
        "Infrequent and partial dual updates",
        "Right-hand-side schedules",
        "References",
    }
    assert expected <= TITLES, sorted(expected - TITLES)


def test_citation_forms() -> None:
    text = (
        "see docs/algorithms.md, 'GDA'; ``docs/algorithms.md``, 'A' and\n    'B', and "
        "docs/algorithms.md,\n    # 'C', 'D'"
    )
    titles = [t["title"] for c in CITATION.finditer(text) for t in TITLE.finditer(c["titles"])]
    assert titles == ["GDA", "A", "B", "C", "D"]


def test_headings_are_found_and_fences_skipped() -> None:
    text = "# Top\n\n## A, b and c\n\n```python\n# not a heading\n```\n### Last ##\n"
    assert headings(text) == {"Top", "A, b and c", "Last"}


def test_nothing_cites_the_design_notes_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, f"cite docs/algorithms.md and a section title instead: {offenders}"


def _citations() -> list[tuple[str, str]]:
    found = []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        found += [
            (str(path.relative_to(ROOT)), title["title"])
            for citation in CITATION.finditer(text)
            for title in TITLE.finditer(citation["titles"])
        ]
    return found


def test_citations_exist() -> None:
    cited = _citations()
    assert len(cited) >= 12, cited  # the docstrings and tests that rest on the reference
    assert {title for _, title in cited} >= {"The nuPI reduction table", "Weight-sharing facts"}


@pytest.mark.parametrize(("where", "title"), sorted(set(_citations())))
def test_every_citation_names_an_existing_section(where: str, title: str) -> None:
    assert title in TITLES, (
        f"{where} cites docs/algorithms.md, {title!r}, which has no such heading; "
        f"headings: {sorted(TITLES)}"
    )


def test_every_mention_is_a_citation_with_a_section() -> None:
    """docs/algorithms.md alone says too little: name the section."""
    bare = []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        cited = {m.start() for m in CITATION.finditer(text)}
        bare += [
            f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
            for m in MENTION.finditer(text)
            if m.start() not in cited
        ]
    assert not bare, f"cite as docs/algorithms.md, '<section title>': {bare}"
