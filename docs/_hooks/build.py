"""MkDocs hooks of the documentation build (see mkdocs.yml).

* The executed examples run inside the MkDocs process: make them quiet, deterministic and
  independent of the caller's environment (non-interactive matplotlib, the ``constrain``
  command of this interpreter on ``PATH`` for the shell examples, one intra-op thread).
* ``docs/_hooks`` goes on ``sys.path`` so that hidden example blocks can use
  :mod:`docs_helpers` (embedding figures, running commands).
* Pages that take a second or more to render are logged with their time (INFO), to keep
  an eye on the build's duration.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any


def on_startup(command: str, dirty: bool, **kwargs: Any) -> None:
    os.environ["MPLBACKEND"] = "Agg"
    # The examples use tiny tensors: one intra-op thread is fastest, and several threads
    # fight each other badly when the machine is busy.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path
    # Executed examples log through the "constrain" logger; keep the build output clean.
    logging.getLogger("constrain").setLevel(logging.ERROR)
    import matplotlib

    matplotlib.use("Agg")
    import torch

    torch.set_num_threads(1)
    helpers = str(Path(__file__).parent)
    if helpers not in sys.path:
        sys.path.insert(0, helpers)


_log = logging.getLogger("mkdocs.hooks.timing")
_started: dict[str, float] = {}


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    import time

    _started[page.file.src_uri] = time.perf_counter()
    return markdown


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Log how long each page took to render (its examples run during rendering)."""
    import time

    start = _started.pop(page.file.src_uri, None)
    if start is not None:
        elapsed = time.perf_counter() - start
        if elapsed >= 1.0:
            _log.info("page %s rendered in %.1f s", page.file.src_uri, elapsed)
    return html
