"""Per-group settings given as mappings from constraint-name patterns to values.

Several settings of the dual side can differ between constraint groups: the controller,
the multiplier bound, restarts, the update cadence, the initial penalty and the
right-hand-side schedule. Each is given as one value for every group or as a mapping from
shell-style glob patterns (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[abc]``) to values,
e.g. ``{"budget": "gda", "parity*": "nupi"}``. This module resolves such a mapping against
the groups of a problem, refusing ambiguous or mistyped mappings with the lists needed to
fix them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TypeVar

from ._errors import ConfigError

__all__ = ["match_patterns", "resolve"]

V = TypeVar("V")


def match_patterns(
    patterns: Iterable[str], names: Sequence[str], *, what: str, require_all: bool
) -> dict[str, str]:
    """Assign each constraint group to the one pattern that matches its name.

    Args:
        patterns: Glob patterns (case-sensitive, matched against the whole name).
        names: Constraint group names, in the problem's order.
        what: The setting, for error messages (e.g. ``"controller"``).
        require_all: Every group must be matched (controllers, initial penalties); when
            false, unmatched groups keep the setting's default.

    Returns:
        ``{group name: pattern}`` for the matched groups, in the order of ``names``.

    Raises:
        ConfigError: If a group is matched by two or more patterns, if a pattern matches
            no group (a typo would otherwise pass silently) or, with ``require_all``, if a
            group is matched by none. The message lists the patterns and the groups.
    """
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(
                f"{what}: constraint-name patterns must be non-empty strings; got "
                f"{pattern!r} in {patterns}."
            )
    assigned: dict[str, str] = {}
    unmatched: list[str] = []
    for name in names:
        hits = [p for p in patterns if fnmatchcase(name, p)]
        if len(hits) > 1:
            raise ConfigError(
                f"{what}: constraint {name!r} is matched by several patterns {hits}; each "
                f"constraint must match exactly one. Make the patterns disjoint (patterns: "
                f"{patterns}; constraints: {list(names)})."
            )
        if hits:
            assigned[name] = hits[0]
        else:
            unmatched.append(name)
    unused = [p for p in patterns if p not in assigned.values()]
    if unused:
        raise ConfigError(
            f"{what}: pattern(s) {unused} match no constraint; constraints: {list(names)}. "
            "Check the spelling (patterns are case-sensitive globs such as 'parity*')."
        )
    if require_all and unmatched:
        raise ConfigError(
            f"{what}: constraint(s) {unmatched} are matched by no pattern; every constraint "
            f"needs one (patterns: {patterns}). Add a pattern that matches them (their "
            "names, or a glob that no other pattern overlaps)."
        )
    return assigned


def resolve(
    setting: V | Mapping[str, V], names: Sequence[str], default: V, *, what: str
) -> dict[str, V]:
    """The value of a per-group setting for every group.

    Args:
        setting: One value for all groups, or a mapping from patterns to values.
        names: Constraint group names.
        default: The value of groups that no pattern matches.
        what: The setting, for error messages.

    Raises:
        ConfigError: See :func:`match_patterns` (``require_all=False``).
    """
    if not isinstance(setting, Mapping):
        return dict.fromkeys(names, setting)
    assigned = match_patterns(setting, names, what=what, require_all=False)
    return {name: setting[assigned[name]] if name in assigned else default for name in names}
