"""The regularizer stage: smooth penalties in the primal loss, proximal steps after it.

:class:`RegularizerStage` resolves each :class:`~constrain.problem.Regularizer` of a
problem to the model's parameters once (names or ``fnmatch`` patterns), then

* :meth:`RegularizerStage.penalty` adds the smooth penalties ``strength * penalty(p)`` to
  the primal loss;
* :meth:`RegularizerStage.apply` runs each prox on its parameters after the primal step,
  with strength ``strength * lr`` (``lr``: the parameter's current learning rate);
* :meth:`RegularizerStage.diagnostics` reports what the stage knows about itself (the
  number of distinct values of each parameter, for regularizers that count clusters).

See docs/algorithms.md, 'The weight-sharing proximal operator'.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._errors import ConfigError
from .problem import Regularizer

__all__ = ["RegularizerStage"]


@dataclass
class _ProxTarget:
    regularizer: Regularizer
    fn: Callable[..., Tensor]
    params: list[tuple[str, nn.Parameter]]


class RegularizerStage:
    """The problem's regularizers bound to a model and its optimizer(s).

    Args:
        regularizers: The problem's regularizers.
        model: The model whose parameters they act on.
        group_of: ``id(parameter) -> (optimizer index, parameter group index)`` for every
            parameter an optimizer owns (the prox reads that group's ``lr``).
        optimizers: The primal optimizers.

    Raises:
        ConfigError: If a regularizer's ``params`` match no parameter, a prox acts on a
            parameter no optimizer owns, or a prox name is unknown.
    """

    def __init__(
        self,
        regularizers: tuple[Regularizer, ...] | list[Regularizer],
        model: nn.Module,
        group_of: dict[int, tuple[int, int]],
        optimizers: list[torch.optim.Optimizer],
    ) -> None:
        self._optimizers = optimizers
        self._group_of = group_of
        self._proxes: list[_ProxTarget] = []
        self._penalties: list[tuple[Regularizer, list[nn.Parameter]]] = []
        named = list(model.named_parameters())
        for reg in regularizers:
            if reg.params is None:
                chosen = named
            else:
                chosen = [
                    (n, p)
                    for n, p in named
                    if any(fnmatch.fnmatchcase(n, pat) for pat in reg.params)
                ]
                if not chosen:
                    raise ConfigError(
                        f"regularizer {reg.label!r}: params {list(reg.params)} match no parameter "
                        f"of the model; parameters: {[n for n, _ in named]}."
                    )
            if reg.penalty is not None:
                self._penalties.append((reg, [p for _, p in chosen]))
                continue
            for n, p in chosen:
                if id(p) not in group_of:
                    raise ConfigError(
                        f"regularizer {reg.label!r} acts on parameter {n!r}, which no "
                        "optimizer owns; its step size is unknown."
                    )
            self._proxes.append(_ProxTarget(reg, _prox_function(reg), chosen))
        self.active = bool(self._proxes or self._penalties)
        """Whether there is a penalty or a prox to run (else the stage is skipped)."""
        self.counts_clusters = any(t.regularizer.counts_clusters for t in self._proxes)
        """Whether :meth:`diagnostics` has clusters to count."""

    @property
    def has_prox(self) -> bool:
        """True if some regularizer runs a proximal step."""
        return bool(self._proxes)

    def penalty(self, loss: Tensor) -> Tensor:
        """``loss`` plus every smooth penalty ``strength * penalty(p)``."""
        for reg, params in self._penalties:
            for p in params:
                value = reg.penalty(p)
                if not isinstance(value, Tensor) or value.dim() != 0:
                    raise ConfigError(
                        f"regularizer {reg.label!r}: its penalty returned {_shape_text(value)}; "
                        "a penalty must return a scalar tensor (sum it, e.g. p.abs().sum())."
                    )
                loss = loss + reg.strength * value
        return loss

    def apply(self) -> None:
        """Run every prox on its parameters, in place, with strength ``strength * lr``."""
        if not self._proxes:
            return
        from .prox._checks import without_input_checks

        with torch.no_grad(), without_input_checks():
            for target in self._proxes:
                reg = target.regularizer
                for name, p in target.params:
                    k, g = self._group_of[id(p)]
                    lr = float(self._optimizers[k].param_groups[g].get("lr", 1.0))
                    out = target.fn(p.detach(), reg.strength * lr, **reg.options)
                    if not isinstance(out, Tensor) or out.shape != p.shape:
                        raise ConfigError(
                            f"regularizer {reg.label!r}: its prox returned "
                            f"{_shape_text(out)} for parameter {name!r} of shape "
                            f"{tuple(p.shape)}; a prox must return a tensor of the "
                            "parameter's shape."
                        )
                    p.copy_(out)

    def diagnostics(self) -> dict[str, Tensor]:
        """Number of distinct values of each parameter whose regularizer counts clusters
        (``{parameter name: count}``, int64 scalars on the device; one sort each)."""
        out: dict[str, Tensor] = {}
        for target in self._proxes:
            if target.regularizer.counts_clusters:
                for name, p in target.params:
                    values = p.detach().reshape(-1).sort().values
                    out[name] = 1 + (values[1:] != values[:-1]).sum()
        return out


def _prox_function(reg: Regularizer) -> Callable[..., Tensor]:
    """The prox callable of ``reg``, with its ``options`` checked against its signature."""
    if isinstance(reg.prox, str):
        from . import prox as _prox

        fn: Callable[..., Tensor] = _prox.get(reg.prox)
    else:
        fn = reg.prox
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return fn
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return fn
    accepted = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(reg.options) - set(accepted[2:]))
    if unknown:
        close = {u: difflib.get_close_matches(u, accepted[2:], n=1) for u in unknown}
        hints = "; ".join(f"{u!r}: did you mean {c[0]!r}?" for u, c in close.items() if c)
        raise ConfigError(
            f"regularizer {reg.label!r}: unknown prox option(s) {unknown}; its prox accepts "
            f"{accepted[2:]}" + (f" ({hints})" if hints else "") + "."
        )
    required = [
        p.name
        for p in list(parameters)[2:]
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    missing = [name for name in required if name not in reg.options]
    if missing:
        raise ConfigError(
            f"regularizer {reg.label!r}: its prox needs the option(s) {missing}; give them "
            f"in options, e.g. Regularizer(prox=..., options={{{missing[0]!r}: ...}})."
        )
    return fn


def _shape_text(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
