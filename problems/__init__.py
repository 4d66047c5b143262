"""Reference problems and studies for :mod:`constrain` (installed as ``constrain_problems``)."""

PROBLEMS: dict[str, str] = {}
