"""Griffe extension used by the documentation build: Sphinx-style roles to Markdown.

The docstrings of ``constrain`` are written in Google style with Sphinx cross-reference
roles (``:class:`Solver```, ``:func:`~constrain.solve```) and reST literal-block markers
(``computes::``). mkdocstrings renders Markdown, so before the docstrings are parsed this
extension rewrites

* each role into an *optional* autorefs link (a link when the target is rendered somewhere
  in the site, plain code otherwise: never a broken link, never a build warning), and
* each paragraph ending in ``::`` into one ending in ``:`` (the indented block after it is
  already a Markdown code block).

Pydantic models have no ``__init__`` in their source, so static analysis sees no
parameters and the ``Args:`` sections of their docstrings would look like unknown
parameters. The extension gives each model the signature pydantic generates: its fields
as keyword-only parameters, in declaration order, with their defaults (a field alias is the
parameter name; an explicit ``__init__(..., **data)``'s positional-only parameters are
kept, and an explicit ``__init__`` without ``**data`` is documented as written).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):`(?P<text>[^`]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::[ \t]*$", re.MULTILINE)


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """Full path of ``target`` seen from ``obj``'s scope, or ``None``."""
    if target.startswith(("constrain.", "constrain_problems.")) or target in (
        "constrain",
        "constrain_problems",
    ):
        return target
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except Exception:  # griffe raises several error types here
            resolved = None
        if resolved:
            return f"{resolved}.{rest}" if rest else resolved
        scope = scope.parent
    return None


def rewrite(text: str, obj: griffe.Object | None = None) -> str:
    """Return ``text`` with roles turned into optional autorefs and ``::`` into ``:``."""

    def replace(match: re.Match[str]) -> str:
        raw = match["text"].strip()
        short = raw.startswith("~")
        target = raw.lstrip("~")
        title = target.rsplit(".", 1)[-1] if short else target
        identifier = _resolve(obj, target) if obj is not None else None
        if identifier is None:
            return f"`{title}`"
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return _LITERAL_MARKER.sub(":", _ROLE.sub(replace, text))


def _is_pydantic_model(cls: griffe.Class, seen: set[str] | None = None) -> bool:
    seen = set() if seen is None else seen
    if cls.path in seen:
        return False
    seen.add(cls.path)
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, griffe.Expr) else str(base)
        if path.startswith("pydantic"):
            return True
    try:
        resolved = cls.resolved_bases
    except Exception:  # an unresolvable base is not a pydantic model
        return False
    return any(_is_pydantic_model(base, seen) for base in resolved)


def _factory_default(factory: str | griffe.Expr) -> str | griffe.Expr:
    """What a ``default_factory`` produces, written as an expression."""
    if isinstance(factory, griffe.ExprLambda):
        return factory.body
    known = {"list": "[]", "dict": "{}", "tuple": "()", "set": "set()"}
    return known.get(str(factory), f"{factory}()")


def _field_default(
    value: str | griffe.Expr | None,
) -> tuple[bool, str | griffe.Expr | None, str | None]:
    """``(required, default, alias)`` of a field from its assigned value."""
    if value is None:
        return True, None, None
    if isinstance(value, griffe.ExprCall) and value.function.canonical_path in (
        "pydantic.Field",
        "pydantic.fields.Field",
    ):
        default: str | griffe.Expr | None = None
        required = True
        alias = None
        for k, arg in enumerate(value.arguments):
            if isinstance(arg, griffe.ExprKeyword):
                if arg.name == "default":
                    default, required = arg.value, False
                elif arg.name == "default_factory":
                    default, required = _factory_default(arg.value), False
                elif arg.name == "alias":
                    alias = str(arg.value).strip("'\"")
            elif k == 0:
                default, required = arg, str(arg) == "..."
        return required, default, alias
    return False, value, None


def _pydantic_fields(cls: griffe.Class, seen: set[str] | None = None) -> list[griffe.Parameter]:
    seen = set() if seen is None else seen
    if cls.path in seen:
        return []
    seen.add(cls.path)
    fields: dict[str, griffe.Parameter] = {}
    try:
        bases = list(cls.resolved_bases)
    except Exception:  # unresolvable bases: no inherited fields
        bases = []
    for base in reversed(bases):
        for param in _pydantic_fields(base, seen):
            fields[param.name] = param
    for name, member in cls.members.items():
        if member.is_alias or not member.is_attribute or name.startswith("_"):
            continue
        if name == "model_config" or member.annotation is None or "property" in member.labels:
            continue
        if "instance-attribute" not in member.labels:  # a ClassVar
            continue
        required, default, alias = _field_default(member.value)
        key = alias or name
        fields.pop(key, None)
        fields[key] = griffe.Parameter(
            key,
            annotation=member.annotation,
            kind=griffe.ParameterKind.keyword_only,
            default=None if required else default,
        )
    return list(fields.values())


_SYNTHESIZED: set[int] = set()


def _explicit_init(cls: griffe.Class) -> griffe.Function | None:
    """The first ``__init__`` written in the source along the loaded MRO, if any."""
    try:
        chain = [cls, *cls.mro()]
    except Exception:  # unresolvable bases: look at the class only
        chain = [cls]
    for klass in chain:
        init = klass.members.get("__init__")
        if isinstance(init, griffe.Function) and id(init) not in _SYNTHESIZED:
            return init
    return None


def _synthesize_init(cls: griffe.Class) -> None:
    fields = _pydantic_fields(cls)
    if not fields:
        return
    explicit = _explicit_init(cls)
    if explicit is not None and not any(
        p.kind is griffe.ParameterKind.var_keyword for p in explicit.parameters
    ):
        return  # a hand-written signature (not just **data): document it as written
    own = cls.members.get("__init__")
    params: list[griffe.Parameter] = []
    positional: dict[str, griffe.Parameter] = {}
    if isinstance(own, griffe.Function):
        for p in own.parameters:
            if p.kind is griffe.ParameterKind.positional_only:
                positional[p.name] = p
    by_name = {f.name: f for f in fields}
    for name in positional:
        field = by_name.get(name)
        params.append(
            griffe.Parameter(
                name,
                annotation=field.annotation if field else positional[name].annotation,
                kind=griffe.ParameterKind.positional_only,
                default=field.default if field else positional[name].default,
            )
        )
    params += [f for f in fields if f.name not in positional]
    init = griffe.Function(
        "__init__",
        parameters=griffe.Parameters(*params),
        lineno=own.lineno if isinstance(own, griffe.Function) else cls.lineno,
        endlineno=own.endlineno if isinstance(own, griffe.Function) else cls.lineno,
    )
    _SYNTHESIZED.add(id(init))
    cls.set_member("__init__", init)


def _walk(obj: griffe.Object) -> Any:
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield member
        if member.is_module or member.is_class:
            yield from _walk(member)


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite the docstring of every loaded object and give pydantic models their
    generated signature (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, loader: Any, **kwargs: Any) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        obj.docstring.value = rewrite(obj.docstring.value, obj)

    def on_package(self, *, pkg: griffe.Module, loader: Any, **kwargs: Any) -> None:
        for obj in list(_walk(pkg)):
            if obj.is_class and _is_pydantic_model(obj):  # type: ignore[arg-type]
                _synthesize_init(obj)  # type: ignore[arg-type]
