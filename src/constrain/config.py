"""Serializable run configuration (JSON/YAML round-trip) and ``--set key=value`` overrides."""

from __future__ import annotations

import codecs
import contextlib
import copy
import json
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._components import format_validation_error
from ._errors import ConfigError, short_repr
from ._io import atomic_write_text

__all__ = [
    "MAX_SEED",
    "RunConfig",
    "apply_overrides",
    "load_config",
    "merge_config",
    "parse_override",
    "read_config_file",
]

MAX_SEED = 2**63 - 1
"""Largest accepted seed (torch seeds are 64-bit integers)."""

MAX_CONFIG_BYTES = 1 << 20
"""Largest configuration file read (1 MiB; a run configuration is a few hundred bytes)."""

MAX_CONFIG_NODES = 100_000
"""Largest number of values a configuration may expand to (aliases counted as copies)."""

Component = dict[str, Any]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeNumber = Annotated[float, Field(ge=0)]


class RunConfig(BaseModel):
    """Everything needed to reproduce a run of a registered problem.

    Components (``problem``, ``controller``, ``formulation``, ``optimizer``) are mappings
    with a ``name`` key plus that component's own validated options, e.g.
    ``{"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0}``. The controller may
    instead map constraint-name patterns to controllers (per-group controllers):
    ``{"budget": "gda", "parity*": {"name": "nupi", "kp": 5, "ki": 0.5}}``.

    Attributes:
        problem: Registered problem name and its hyperparameters.
        controller: Multiplier controller, or ``{pattern: controller}``.
        formulation: Formulation.
        optimizer: Primal optimizer (``sgd``, ``adam``, ...) and its options.
        order: Update order.
        steps: Number of steps.
        batch_size: Minibatch size (``None``: full batch).
        seed: Seed for data order and initialisation.
        dtype: Floating dtype of the run.
        record_every: History recording interval.
        on_nonfinite: What to do on NaN/Inf.
        max_multiplier: Multiplier bound: a number or ``{pattern: number}``.
        restart: Dual restarts: a bool or ``{pattern: bool}``.
        dual_every: Multiplier step every ``k`` steps: an int or ``{pattern: int}``.
        rhs_schedule: Right-hand sides by pattern (schedules as ``{"name": "linear",
            ...}`` mappings, or numbers) that replace the problem's declared ones.
    """

    model_config = ConfigDict(extra="forbid")

    problem: Component
    controller: Component = Field(default_factory=lambda: {"name": "gda"})
    formulation: Component = Field(default_factory=lambda: {"name": "lagrangian"})
    optimizer: Component = Field(default_factory=lambda: {"name": "sgd", "lr": 1e-2})
    order: Literal["simultaneous", "dual_primal", "primal_dual", "cgd"] = "simultaneous"
    steps: int = Field(default=1000, ge=0)
    batch_size: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    dtype: Literal["float32", "float64"] = "float32"
    record_every: int = Field(default=1, ge=1)
    on_nonfinite: Literal["raise", "skip"] = "raise"
    max_multiplier: NonNegativeNumber | dict[str, NonNegativeNumber] | None = None
    restart: bool | dict[str, bool] = False
    dual_every: PositiveInt | dict[str, PositiveInt] = 1
    rhs_schedule: dict[str, Any] = Field(default_factory=dict)

    @field_validator("controller", mode="before")
    @classmethod
    def _controller(cls, value: object) -> object:
        if isinstance(value, Mapping) and "name" not in value and value:
            groups: dict[str, Any] = {}
            for pattern, spec in value.items():
                if isinstance(spec, str):
                    spec = {"name": spec}
                if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
                    raise ValueError(
                        f"needs a 'name' key (one controller) or maps constraint-name patterns "
                        f"to controllers; {pattern!r} maps to {spec!r}, which is neither a "
                        "name nor a mapping with a 'name' key"
                    )
                groups[str(pattern)] = dict(spec)
            return groups
        if isinstance(value, Mapping):
            nested = sorted(str(k) for k, v in value.items() if isinstance(v, Mapping))
            if nested:
                raise ValueError(
                    f"mixes one controller ('name': {value.get('name')!r}) with "
                    f"constraint-name patterns {nested}; give either {{'name': ..., options}} "
                    "for all groups or {pattern: controller, ...} (e.g. --set "
                    "'controller={budget: gda, parity*: {name: nupi, kp: 5}}')"
                )
        return _as_component(value)

    @property
    def controller_label(self) -> str:
        """The controller's name, or ``"{pattern: name, ...}"`` for per-group controllers."""
        if "name" in self.controller:
            return str(self.controller["name"])
        return "{" + ", ".join(f"{p}: {c['name']}" for p, c in self.controller.items()) + "}"

    @field_validator("problem", "formulation", "optimizer", mode="before")
    @classmethod
    def _component(cls, value: object) -> object:
        return _as_component(value)

    @field_validator("steps", "batch_size", "seed", "record_every", mode="before")
    @classmethod
    def _strict_integer(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("expected an integer, not a bool (true/false is not 1/0 here)")
        return value

    @field_validator("max_multiplier", "dual_every", mode="before")
    @classmethod
    def _strict_group_numbers(cls, value: object) -> object:
        items = value.items() if isinstance(value, Mapping) else [("", value)]
        for pattern, item in items:
            if isinstance(item, bool):
                where = f" (pattern {pattern!r})" if pattern else ""
                raise ValueError(
                    f"expected a number, not a bool{where} (true/false is not 1/0 here)"
                )
        return value

    @field_validator("optimizer", mode="after")
    @classmethod
    def _finite_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        def check(item: object, where: str) -> None:
            if isinstance(item, Mapping):
                for key, child in item.items():
                    check(child, f"{where}.{key}")
            elif isinstance(item, (list, tuple)):
                for k, child in enumerate(item):
                    check(child, f"{where}[{k}]")
            elif (
                isinstance(item, numbers.Real)
                and not isinstance(item, bool)
                and not math.isfinite(float(item))
            ):
                raise ValueError(
                    f"{where} must be a finite number, got {item!r} (a NaN or infinite option "
                    "makes every parameter non-finite at the first step)"
                )

        for key, item in value.items():
            if key != "name":
                check(item, f"optimizer.{key}")
        return value

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> RunConfig:
        """Validate ``data``, raising :class:`ConfigError` that names every bad key."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "run configuration")) from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML (written atomically to ``path`` if given)."""
        text: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON (written atomically to ``path`` if given)."""
        text = json.dumps(self.model_dump(mode="json"), indent=2)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text


def _as_component(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        if "name" not in value or not isinstance(value["name"], str):
            raise ValueError("needs a 'name' key with a string value")
        return dict(value)
    raise ValueError(f"expected a name or a mapping with a 'name' key; got {short_repr(value)}")


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(data: bytes, where: str) -> str:
    """Text of a configuration file: UTF-8, or UTF-8/16/32 with a byte-order mark."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not valid {encoding.upper().replace('-SIG', '')} text (byte "
            f"{data[exc.start : exc.start + 1]!r} at offset {exc.start}: {exc.reason}); expected "
            "UTF-8 (or UTF-16/32 with a byte-order mark). Save it as UTF-8."
        ) from None


def _expanded_size(data: object, where: str) -> int:
    """Number of values ``data`` holds, shared (aliased) parts counted once per use.

    Raises:
        ConfigError: For a structure that contains itself (a recursive YAML alias) or
            expands beyond :data:`MAX_CONFIG_NODES` values (an alias bomb).
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(item: object) -> int:
        if not isinstance(item, (Mapping, list, tuple)):
            return 1
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(
                f"{where} contains itself (a recursive YAML alias such as `a: &x [*x]`); "
                "expected a finite configuration. Write the values out."
            )
        active.add(key)
        children = list(item.keys()) + list(item.values()) if isinstance(item, Mapping) else item
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"{where} expands to more than {MAX_CONFIG_NODES} values through YAML "
                    "aliases (&anchor / *alias); a run configuration holds a few dozen. "
                    "Refusing to expand it; write the values out."
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(data)


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's safe loader, refusing a key given twice in one mapping (plain PyYAML keeps
    the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise json.JSONDecodeError(f"the key(s) {twice} are given twice", "", 0)
    return dict(pairs)


def _safe_load(text: str, where: str, *, json_only: bool = False, kind: str = "") -> Any:
    """Parse YAML (or JSON) text with the safe loader and bound what it expands to.

    Raises:
        ConfigError: For invalid syntax, nesting too deep for the parser, a recursive
            alias or an alias bomb (see :func:`_expanded_size`).
    """
    kind = kind or ("JSON" if json_only else "YAML")
    try:
        data = (
            json.loads(text, object_pairs_hook=_unique_json_keys)
            if json_only
            else yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
        )
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        message = str(exc)
        if len(message) > 300:
            message = message[:297] + "..."
        raise ConfigError(f"{where} is not valid {kind}: {message}") from None
    except RecursionError:
        raise ConfigError(
            f"{where} is nested too deeply to parse; expected a configuration a few levels deep."
        ) from None
    try:
        _expanded_size(data, where)
    except RecursionError:
        raise ConfigError(
            f"{where} is nested too deeply; expected a configuration a few levels deep."
        ) from None
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping held by a YAML or JSON configuration file, not yet validated.

    Any subset of the :class:`RunConfig` fields may be given: the command line merges it
    over the named problem's defaults (:func:`merge_config`) before validating the whole.
    The file is read as UTF-8 (a UTF-8, UTF-16 or UTF-32 byte-order mark is honoured) with
    PyYAML's safe loader (``.json`` files with the JSON parser); at most 1 MiB and
    :data:`MAX_CONFIG_NODES` values (YAML aliases counted as copies) are accepted.

    Raises:
        ConfigError: If the file is missing, unreadable, too large, not text, not valid
            YAML/JSON, a recursive or exploding alias structure, or not a mapping.
    """
    path = Path(path)
    where = f"config file {str(path)!r}"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {where}: {exc.strerror or exc}; expected a readable YAML or JSON file."
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where} is larger than {MAX_CONFIG_BYTES} bytes; expected a run configuration "
            "(a few hundred bytes)."
        )
    text = _decode(raw, where)
    data = _safe_load(text, where, json_only=path.suffix == ".json", kind=path.suffix or "YAML")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must hold a mapping; got {type(data).__name__}.")
    return dict(data)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a complete run configuration (see :func:`read_config_file`).

    Raises:
        ConfigError: As :func:`read_config_file`, or naming each invalid field.
    """
    return RunConfig.parse(read_config_file(path))


def _merge_tree(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = _merge_tree(old, value) if both else copy.deepcopy(value)  # type: ignore[arg-type]
    return out


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` (e.g. a partial config file) merged over ``base`` (a full config).

    Top-level values replace; a component (``problem``, ``controller``, ``formulation``,
    ``optimizer``) given without a name or with the name it has in ``base`` updates the
    options of ``base`` (nested mappings merged key by key), one with another name
    replaces it. Nothing is validated here: validate the result with
    :meth:`RunConfig.parse`.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if key in _COMPONENTS and isinstance(value, (str, Mapping)):
            new = {"name": value} if isinstance(value, str) else dict(value)
            old = out.get(key)
            if isinstance(old, Mapping) and new.get("name", old.get("name")) == old.get("name"):
                out[key] = _merge_tree(old, new)
                continue
            out[key] = new
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``"controller.kp=1"`` into ``(["controller", "kp"], 1)``.

    The value is read as YAML (so ``1`` is an int, ``0.1`` a float, ``true`` a bool,
    ``[1, 2]`` a list, anything else a string).

    Raises:
        ConfigError: If there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. controller.kp=1); got {text!r}.")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not parts or any(not p for p in parts):
        raise ConfigError(f"--set key {key!r} is empty or has an empty part.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    try:
        _expanded_size(value, f"--set {key.strip()}")  # alias bombs are refused
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}: the value is nested too deeply.") from None
    if isinstance(value, str):
        # YAML 1.1 reads "3e-3" (no dot) as a string; a number is what the user meant.
        with contextlib.suppress(ValueError):
            value = float(value)
    return parts, value


_TOP_LEVEL_SCALARS = {
    "order",
    "steps",
    "batch_size",
    "seed",
    "dtype",
    "record_every",
    "on_nonfinite",
}
_COMPONENTS = {"problem", "controller", "formulation", "optimizer"}
_PER_GROUP = {"max_multiplier", "restart", "dual_every", "rhs_schedule"}
"""Settings given for all groups or as ``{pattern: value}`` (``--set restart.parity*=true``)."""


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a config mapping (returns a new dict).

    Keys are dotted: ``steps=100``, ``controller.kp=1``, ``optimizer.momentum=0.9``,
    ``problem.tolerance=0.05``, ``formulation.schedule.growth=2``. Setting a ``name``
    (``controller.name``, ``controller.parity*.name``, ``formulation.updater.name``)
    switches that component and drops the old one's options. Per-group controllers take
    the pattern as a key (``controller.parity*.kp=5``); so do the per-group settings
    (``max_multiplier.budget=10``, ``restart.parity*=true``, ``dual_every=5``,
    ``rhs_schedule.gap.end=0.02``).

    Raises:
        ConfigError: For an unknown top-level key (naming it and listing valid ones), or a
            pattern key under a per-group setting that currently holds one value for all.
    """
    out = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        head = parts[0]
        if head in _TOP_LEVEL_SCALARS:
            if len(parts) != 1:
                raise ConfigError(f"--set key {'.'.join(parts)!r}: {head!r} has no sub-keys.")
            out[head] = value
            continue
        if head in _PER_GROUP:
            if len(parts) == 1:
                out[head] = value
                continue
            current = out.get(head)
            unset = current is None or current == RunConfig.model_fields[head].get_default(
                call_default_factory=True
            )
            if not unset and not isinstance(current, Mapping):
                raise ConfigError(
                    f"--set key {'.'.join(parts)!r}: {head} is {current!r} for every group; "
                    f"set it per pattern as a whole, e.g. --set '{head}={{{parts[1]}: ...}}'."
                )
            base = dict(current) if isinstance(current, Mapping) else {}
            out[head] = _set_nested(base, parts[1:], value)
            continue
        if head not in _COMPONENTS:
            valid = sorted(
                _TOP_LEVEL_SCALARS
                | {f"{c}.<option>" for c in _COMPONENTS}
                | {f"{c}[.<pattern>]" for c in _PER_GROUP}
            )
            raise ConfigError(
                f"unknown --set key {'.'.join(parts)!r}: {head!r} is not a config section; "
                f"valid keys: {valid}."
            )
        if len(parts) == 1:
            out[head] = {"name": value} if isinstance(value, str) else value
            continue
        out[head] = _set_nested(dict(out.get(head) or {}), parts[1:], value)
    return out


def _set_nested(node: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    """Set ``node[k1][k2]...[kn] = value`` (copying the mappings on the way; a name string
    on the way becomes ``{"name": ...}``); setting a ``name`` replaces its mapping."""
    root = node
    for key in keys[:-1]:
        child = node.get(key)
        if isinstance(child, str):
            child = {"name": child}
        node[key] = dict(child) if isinstance(child, Mapping) else {}
        node = node[key]
    if keys[-1] == "name":
        node.clear()
    node[keys[-1]] = value
    return root
