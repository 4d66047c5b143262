"""The documentation: API reference coverage and the tutorials' executed examples.

* Every name in ``constrain.__all__`` is rendered by an mkdocstrings directive
  (``::: path``) of a page under ``docs/api/`` and has a docstring.
* Every page's ``python exec="on"`` blocks run (in a subprocess, the way the documentation
  build runs them), so a tutorial broken by an API change fails the test suite even where
  MkDocs is not installed. The full build (``mkdocs build --strict``) also runs them.
* Every page in ``docs/`` is in the navigation of ``mkdocs.yml``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import constrain

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNER = DOCS / "_hooks" / "run_examples.py"
DIRECTIVE = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.MULTILINE)

# Pages whose examples take a few seconds at most (interpreter start included) run in the
# default suite; the others (many training runs, subprocesses of the command line; 7 to 40 s
# each) are marked slow. Every page's shown code is checked statically in the default suite
# (test_page_code_needs_no_hidden_block), so a page that cannot run verbatim fails fast.
FAST_PAGES = {
    "index.md",
    "how-it-works.md",
    "tutorials/proxy-constraints.md",
    "tutorials/per-sample-constraints.md",
    "tutorials/multiplier-models.md",
}


def _resolve(path: str) -> object:
    """The object a dotted path names (``constrain.controllers.NuPI``)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot resolve {path!r}")


def _api_directives() -> dict[str, list[str]]:
    """Directive path -> pages of docs/api/ that render it."""
    found: dict[str, list[str]] = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            found.setdefault(match["path"], []).append(page.name)
    return found


def _same(a: object, b: object) -> bool:
    if isinstance(a, ModuleType) and isinstance(b, ModuleType):
        return a.__name__ == b.__name__
    return a is b


def test_api_directives_resolve() -> None:
    directives = _api_directives()
    assert directives, "no ::: directives found under docs/api/"
    for path in directives:
        _resolve(path)  # raises if a directive names something that does not exist


def test_every_public_name_is_in_the_api_reference() -> None:
    rendered = [_resolve(path) for path in _api_directives()]
    missing = [
        name
        for name in constrain.__all__
        if not any(_same(getattr(constrain, name), obj) for obj in rendered)
    ]
    assert not missing, (
        f"names of constrain.__all__ not rendered by any '::: path' directive in docs/api/: "
        f"{missing}; add them to docs/api/index.md (or a submodule page)."
    )


@pytest.mark.parametrize("name", sorted(set(constrain.__all__) - {"__version__"}))
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(constrain, name)
    doc = inspect.getdoc(obj)
    assert doc and doc.strip(), f"constrain.{name} has no docstring"
    if inspect.isclass(obj) and obj.__doc__ is None:
        pytest.fail(f"constrain.{name} only inherits its docstring; document the class itself")


def test_every_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*.md")
        if "_hooks" not in p.parts and p.name != "README.md"
    )
    missing = [page for page in pages if page not in config]
    assert not missing, f"pages not in the nav of mkdocs.yml: {missing}"


def _pages_with_examples() -> list[Path]:
    sys.path.insert(0, str(RUNNER.parent))
    try:
        from run_examples import python_blocks
    finally:
        sys.path.pop(0)
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts and python_blocks(p))


def _page_param(page: Path) -> object:
    name = str(page.relative_to(DOCS))
    marks = [] if name in FAST_PAGES else [pytest.mark.slow]
    return pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in _pages_with_examples()])
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(page)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"examples of {page.name} failed:\n{done.stderr[-6000:]}"


def test_runner_reports_a_failing_block(tmp_path: Path) -> None:
    page = tmp_path / "broken.md"
    page.write_text(
        '# t\n\n```python exec="on" session="s"\nx = 1\n```\n\n'
        "```console\nnot executed = syntax error\n```\n\n"
        '```python exec="on" session="s"\nassert x == 2, \'x is 1\'\n```\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(page)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "1/2 blocks ran" in done.stdout
    assert "x is 1" in done.stderr


def _runner() -> ModuleType:
    sys.path.insert(0, str(RUNNER.parent))
    try:
        import run_examples
    finally:
        sys.path.pop(0)
    return run_examples


@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_needs_no_hidden_block(page: Path) -> None:
    """Static and fast (every page, default run): the code a page shows never reads a name
    that only a hidden block defines. test_page_examples_run checks the same by running."""
    assert _runner().hidden_dependencies(page) == []


def test_hidden_dependencies_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '```python exec="on" source="above" session="s"\nimport tempfile\n```\n'
        '```python exec="on" session="s"\nwork = tempfile.mkdtemp()\nprint(work)\n```\n'
        '```python exec="on" source="above" session="s"\nprint(work)\n```\n'
        '```python exec="on" source="above" session="t"\nprint(work)\n```\n',
        encoding="utf-8",
    )
    (problem,) = _runner().hidden_dependencies(page)
    assert problem.startswith(f"{page}:8: 'work' is defined only in a hidden block")


def test_runner_refuses_visible_code_that_needs_a_hidden_block(tmp_path: Path) -> None:
    """A page must run verbatim: a name defined only in a hidden block (exec without source)
    is not visible to the code the page shows; hidden blocks still see visible names and
    each other's, and plain python blocks run too."""
    page = tmp_path / "hidden.md"
    page.write_text(
        "# t\n\n"
        '```python exec="on" source="above" session="s"\nshown = 1\n```\n\n'
        '```python exec="on" session="s"\nsecret = shown + 1\n```\n\n'
        '```python exec="on" session="s"\nassert secret == 2\n```\n\n'
        '```python exec="on" source="above" session="s"\nprint(secret)\n```\n\n'
        "```python\nraise ValueError('plain blocks run')\n```\n\n"
        '```python\n--8<-- "examples/distributed_training.py"\n```\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(page)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "3/5 blocks ran" in done.stdout
    assert "'secret' is defined only in a hidden block" in done.stderr
    assert "plain blocks run" in done.stderr


@pytest.mark.slow
def test_failing_example_fails_the_docs_build(tmp_path: Path) -> None:
    """The build configuration turns a failing example into a build failure."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("markdown_exec")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(
        "# t\n\n```python exec=\"on\"\nraise ValueError('boom')\n```\n", encoding="utf-8"
    )
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\nstrict: true\nplugins:\n  - markdown-exec\n"
        "markdown_extensions:\n  - pymdownx.superfences\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "boom" in done.stderr
