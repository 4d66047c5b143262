"""Serializable run configuration (JSON/YAML round-trip) and ``--set key=value`` overrides."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._components import format_validation_error
from ._errors import ConfigError
from ._io import atomic_write_text

__all__ = ["RunConfig", "apply_overrides", "load_config", "parse_override"]

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
    order: Literal["simultaneous", "dual_primal", "primal_dual"] = "simultaneous"
    steps: int = Field(default=1000, ge=0)
    batch_size: int | None = Field(default=None, ge=1)
    seed: int = 0
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
    raise ValueError(f"expected a name or a mapping with a 'name' key; got {value!r}")


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML or JSON run configuration with safe loaders.

    Raises:
        ConfigError: If the file is missing, unreadable, not a mapping or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}.") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid {path.suffix or 'YAML'}: {exc}"
        ) from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping; got {type(data).__name__}."
        )
    return RunConfig.parse(data)


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
    except yaml.YAMLError:
        value = raw
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
