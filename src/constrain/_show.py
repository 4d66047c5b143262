"""What ``constrain show PROBLEM`` prints: a problem's description, hyperparameters (type,
default, bounds, meaning), default run configuration and whether ``validate`` applies."""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .problem import ConstrainedProblem
from .runner import ProblemSpec

__all__ = ["format_problem_info", "hyperparameters", "problem_info"]

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _type_name(annotation: Any) -> str:
    """A short, readable name of a type annotation (``int``, ``float or null``,
    ``one of 'a', 'b'``, ``list[float]``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return text + " or null" if type(None) in args else text
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(info: Any) -> str:
    parts = []
    for item in info.metadata:
        for attr, symbol in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _attribute_docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of the ``Attributes:`` section of ``cls``'s docstring."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\s*\n(?P<body>(?:[ \t]+.*\n?|\n)+)", doc, re.MULTILINE)
    if match is None:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in match["body"].splitlines():
        entry = re.match(r"^\s{2,8}(?P<name>\w+)(?: \([^)]*\))?:\s*(?P<text>.*)$", line)
        if entry is not None and (current is None or len(line) - len(line.lstrip()) <= 4):
            current = entry["name"]
            out[current] = entry["text"].strip()
        elif current is not None and line.strip():
            out[current] += " " + line.strip()
    return {name: text.replace("``", "") for name, text in out.items()}


def hyperparameters(spec: ProblemSpec) -> list[dict[str, Any]]:
    """One row per settable hyperparameter of ``spec`` (``--set problem.NAME=VALUE``):
    ``name``, ``type``, ``default`` (the value of the default run configuration),
    ``bounds`` and ``description``. Empty if the spec declares no ``params`` model."""
    params: type[BaseModel] | None = spec.params
    if params is None:
        return []
    hidden = set(spec.derived_params)
    if issubclass(params, ConstrainedProblem):
        hidden |= set(ConstrainedProblem.model_fields)
    configured = spec.default_config().problem
    docs = _attribute_docs(params)
    rows = []
    for name, info in params.model_fields.items():
        if name in hidden:
            continue
        if name in configured:
            default = configured[name]
        elif info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()  # type: ignore[call-arg]
        else:
            default = None
        rows.append(
            {
                "name": name,
                "type": _type_name(info.annotation),
                "default": default,
                "bounds": _bounds(info),
                "description": info.description or docs.get(name, ""),
            }
        )
    return rows


def problem_info(spec: ProblemSpec, controller: str | None = None) -> dict[str, Any]:
    """Everything ``constrain show`` prints, as a JSON-serialisable dict.

    Keys: ``name``, ``description``, ``hyperparameters`` (see :func:`hyperparameters`),
    ``controllers`` (the controllers with recommended settings), ``validates`` and
    ``default_config`` (the default run configuration, with ``controller`` switched if
    given; its YAML form runs with ``constrain run NAME --config FILE``).
    """
    config = spec.default_config(controller)
    return {
        "name": spec.name,
        "description": spec.description,
        "hyperparameters": hyperparameters(spec),
        "controllers": sorted(spec.controller_defaults),
        "validates": bool(spec.validates),
        "default_config": config.model_dump(mode="json"),
    }


def format_problem_info(info: dict[str, Any], yaml_text: str) -> str:
    """The text of ``constrain show``."""
    lines = [f"{info['name']}: {info['description']}", ""]
    rows = info["hyperparameters"]
    if rows:
        lines.append("hyperparameters (--set problem.NAME=VALUE):")
        table = [("name", "type", "default", "bounds", "meaning")] + [
            (r["name"], r["type"], repr(r["default"]), r["bounds"] or "-", r["description"])
            for r in rows
        ]
        widths = [max(len(row[k]) for row in table) for k in range(4)]
        for row in table:
            lines.append(
                "  "
                + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True))
                + "  "
                + row[4]
            )
    else:
        lines.append("hyperparameters: none declared")
    lines.append("")
    if info["controllers"]:
        lines.append(
            "controllers with recommended settings (--controller NAME): "
            + ", ".join(info["controllers"])
        )
    lines.append(
        "constrain validate: "
        + (
            "applies (declared from convex blocks; CVXPY solves it exactly)"
            if info["validates"]
            else "does not apply (no exact CVXPY twin)"
        )
    )
    lines += [
        "",
        f"default run configuration (save it and run `constrain run {info['name']} --config FILE`;",
        f"`constrain show {info['name']} --yaml > FILE` prints only this):",
        "",
        yaml_text.rstrip(),
    ]
    return "\n".join(lines)
