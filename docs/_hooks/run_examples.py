"""Run the executed code blocks of documentation pages without building the site.

The documentation build runs every ```` ```python exec="on" ```` block with markdown-exec;
this script runs the same blocks the same way (blocks of one ``session`` share their
globals, other blocks get fresh ones; ``docs/_hooks`` is importable), so the test suite
can check the tutorials without MkDocs installed:

    python docs/_hooks/run_examples.py docs/tutorials/first-problem.md [...]

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
    """One executed code block of a page."""

    page: Path
    line: int
    code: str
    session: str | None


def executed_blocks(page: Path) -> list[Block]:
    """The ``python exec="on"`` blocks of ``page`` in order (other blocks are skipped)."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        options = dict(_OPTION.findall(match["options"]))
        if options.get("exec", "").lower() not in ("on", "1", "true", "yes"):
            continue
        indent = match["indent"]
        code = "\n".join(
            line[len(indent):] if line.startswith(indent) else line
            for line in match["code"].splitlines()
        )
        blocks.append(
            Block(page, text.count("\n", 0, match.start()) + 1, code, options.get("session"))
        )
    return blocks


def run_page(page: Path) -> list[str]:
    """Execute the blocks of ``page``; return one message per failing block."""
    sessions: dict[str, dict[str, object]] = {}
    failures = []
    for number, block in enumerate(executed_blocks(page), start=1):
        if block.session is None:
            namespace: dict[str, object] = {"__name__": f"docs_block_{number}"}
        else:
            namespace = sessions.setdefault(block.session, {"__name__": f"docs_{block.session}"})
        try:
            exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
        except BaseException:  # report every failure, then go on
            failures.append(f"{page}:{block.line}: block failed\n{traceback.format_exc()}")
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
        count = len(executed_blocks(page))
        page_failures = run_page(page)
        print(f"{page}: {count - len(page_failures)}/{count} blocks ran")
        failures += page_failures
    for failure in failures:
        sys.stderr.write(failure + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
