"""Test-suite configuration.

Under CI (``CI`` set) hypothesis runs derandomized: every run explores the same examples,
so a result never depends on the day's random draw. Locally it draws new examples.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
