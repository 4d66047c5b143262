"""Run the code blocks of documentation pages without building the site.

The documentation build runs every ```` ```python exec="on" ```` block with markdown-exec;
this script runs the same blocks the same way (blocks of one ``session`` share their
globals, other blocks get fresh ones; ``docs/_hooks`` is importable), so the test suite
can check the tutorials without MkDocs installed:

    python docs/_hooks/run_examples.py docs/tutorials/first-problem.md [...]

It also checks that every page runs *verbatim*, as a reader would run the code the page
shows:

* a *visible* block (``exec="on"`` with a ``source`` option, so the page shows its code)
  sees only what visible blocks of its session defined: a *hidden* block (``exec="on"``
  without ``source``: only its output is shown, e.g. a figure or a command's output) may
  read the session, but the names it defines are visible to later hidden blocks only, so
  visible code that needs a hidden definition fails (the message says so);
* a plain ```` ```python ```` block (shown, not executed by the build) runs on its own;
  blocks that only include a file (``--8<-- "path"``) are left to that file's own tests.

Exit status 0 if every block of every page ran, 1 otherwise (the failing block and its
traceback are printed on standard error).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>python|py)\b(?P<options>[^\n]*)\n"
    r"(?P<code>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_OPTION = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Block:
    """One Python code block of a page.

    Attributes:
        executed: The build runs it (``exec="on"``).
        visible: The page shows its code (a plain block, or ``exec="on"`` with ``source``).
    """

    page: Path
    line: int
    code: str
    session: str | None
    executed: bool = True
    visible: bool = True


_SNIPPET = re.compile(r"^\s*--8<--")


def python_blocks(page: Path) -> list[Block]:
    """Every Python block of ``page`` in order, except file includes (``--8<--``)."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        options = dict(_OPTION.findall(match["options"]))
        executed = options.get("exec", "").lower() in ("on", "1", "true", "yes")
        indent = match["indent"]
        code = "\n".join(
            line[len(indent):] if line.startswith(indent) else line
            for line in match["code"].splitlines()
        )
        if not executed and _SNIPPET.match(code):
            continue
        blocks.append(
            Block(
                page,
                text.count("\n", 0, match.start()) + 1,
                code,
                options.get("session"),
                executed=executed,
                visible=not executed or "source" in options,
            )
        )
    return blocks


def executed_blocks(page: Path) -> list[Block]:
    """The ``python exec="on"`` blocks of ``page`` in order (what the build runs)."""
    return [block for block in python_blocks(page) if block.executed]


def _hidden_name(error: BaseException, hidden: dict[str, object]) -> str:
    if isinstance(error, NameError) and error.name in hidden:
        return (
            f"\n{error.name!r} is defined only in a hidden block (exec without source) of "
            "this page: a reader cannot run the page verbatim. Define it in visible code."
        )
    return ""


def _names(code: str) -> tuple[set[str], set[str]]:
    """Names a block stores anywhere (assignments, imports, definitions, parameters) and
    names it reads (an over-approximation of what it needs from earlier blocks)."""
    import ast

    stored: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (stored if isinstance(node.ctx, (ast.Store, ast.Del)) else loaded).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            stored.add(node.name)
    return stored, loaded


def hidden_dependencies(page: Path) -> list[str]:
    """Without running anything: the names that visible code of ``page`` reads and that
    only hidden blocks of its session define (each is a reason the page cannot be run
    verbatim). Fast enough for every page in the default test run."""
    visible: dict[str, set[str]] = {}
    hidden: dict[str, set[str]] = {}
    problems = []
    for number, block in enumerate(python_blocks(page), start=1):
        key = block.session if block.session is not None else f"block {number}"
        shown, behind = visible.setdefault(key, set()), hidden.setdefault(key, set())
        stored, loaded = _names(block.code)
        if block.visible:
            for name in sorted((loaded - stored - shown) & (behind - shown)):
                problems.append(
                    f"{page}:{block.line}: {name!r} is defined only in a hidden block (exec "
                    "without source); define it in code the page shows"
                )
            shown |= stored
        else:
            behind |= stored
    return problems


def run_page(page: Path) -> list[str]:
    """Execute the blocks of ``page``; return one message per failing block."""
    sessions: dict[str, dict[str, object]] = {}
    hidden: dict[str, dict[str, object]] = {}
    failures = []
    for number, block in enumerate(python_blocks(page), start=1):
        key = block.session if block.session is not None else f"block {number}"
        visible = sessions.setdefault(key, {"__name__": f"docs_{key.replace(' ', '_')}"})
        behind = hidden.setdefault(key, {})
        namespace = visible if block.visible else {**visible, **behind}
        try:
            exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
        except BaseException as error:  # report every failure, then go on
            failures.append(
                f"{page}:{block.line}: block failed{_hidden_name(error, behind)}\n"
                f"{traceback.format_exc()}"
            )
        if not block.visible:
            behind.update(
                {k: v for k, v in namespace.items() if k not in visible or visible[k] is not v}
            )
    return failures


def main(argv: list[str]) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    helpers = str(Path(__file__).resolve().parent)
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    import torch

    torch.set_num_threads(1)
    failures = []
    for name in argv:
        page = Path(name)
        count = len(python_blocks(page))
        page_failures = run_page(page)
        print(f"{page}: {count - len(page_failures)}/{count} blocks ran")
        failures += page_failures
    for failure in failures:
        sys.stderr.write(failure + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
