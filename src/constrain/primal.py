"""The primal side: the optimizer(s) of the model's parameters.

:class:`PrimalSide` runs ``backward`` (with the cross-process gradient reduction) and the
optimizer step(s), handing a closure to optimizers that need one (LBFGS); it reports the
gradients' max-norms on the device (for the non-finite check at the next flush) or checks
them on the host where the step must be skipped. :func:`make_optimizer` builds an optimizer from a name.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from ._errors import ConfigError, NonFiniteError, describe
from ._registry import Registry
from .problem import ConstrainedProblem, ProblemState

__all__ = ["OptimizerSpec", "PrimalSide", "SignalReducer", "make_optimizer"]

logger = logging.getLogger("constrain")

OptimizerSpec = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]

_SCREEN_SUM: dict[torch.dtype, torch.dtype | None] = {
    torch.float32: None,
    torch.float64: None,
    torch.bfloat16: None,
    torch.float16: torch.float32,
}
"""The real gradient dtypes :meth:`PrimalSide.gradient_norms` screens by their sum, and
the dtype each is summed in (``None``: its own)."""


class SignalReducer(Protocol):
    """Combines evaluations and gradients across processes (see
    :class:`constrain.distributed.DistributedReducer`); the default does nothing."""

    def reduce_state(self, problem: ConstrainedProblem, state: ProblemState) -> ProblemState: ...

    def reduce_gradients(self, model: nn.Module) -> None: ...


class LocalReducer:
    """The reducer of a single process: nothing to combine."""

    def reduce_state(self, problem: ConstrainedProblem, state: ProblemState) -> ProblemState:
        return state

    def reduce_gradients(self, model: nn.Module) -> None:
        return None


class PrimalSide:
    """The model's optimizer(s), the gradient reduction and the gradient check.

    Args:
        model: The model.
        optimizer: One ``torch.optim.Optimizer`` or a non-empty list of them.
        reducer: Cross-process gradient reduction.
        on_nonfinite: ``"raise"``: a NaN/Inf gradient raises :class:`NonFiniteError`
            naming the parameters; ``"skip"``: the gradients are dropped and
            :meth:`backward` returns False.

    Raises:
        ConfigError: If an optimizer is not a ``torch.optim.Optimizer``, no optimizer owns
            a parameter of the model, or two optimizers own the same parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerSpec,
        reducer: SignalReducer,
        on_nonfinite: Literal["raise", "skip"],
    ) -> None:
        self.model = model
        self.optimizers = _as_optimizers(optimizer)
        self.reducer = reducer
        self.on_nonfinite = on_nonfinite
        self.group_of = _parameter_groups(self.optimizers, model)
        self._needs_closure = [_needs_closure(o) for o in self.optimizers]
        self.needs_closure = any(self._needs_closure)
        """Whether an optimizer needs a closure (LBFGS): :meth:`step` then takes one."""
        self.local = type(reducer) is LocalReducer
        """Whether the reducer is the single process's, which has nothing to combine (a
        subclass may combine something: its hooks run)."""
        self._named = list(model.named_parameters())
        self._one_device = len({p.device for _, p in self._named}) <= 1

    def backward(self, loss: Tensor) -> None:
        """``zero_grad``, ``loss.backward()`` and the gradient reduction (no host
        synchronisation; see :meth:`gradient_norms` and :meth:`check_gradients`)."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if not self.local:
            self.reducer.reduce_gradients(self.model)

    def step(self, closure: Callable[[], Tensor] | None = None) -> None:
        """Step every optimizer (with ``closure`` for those that require one)."""
        optimizers = self.optimizers
        if closure is None and len(optimizers) == 1:  # the common case, without the loop
            optimizers[0].step()
            return
        for optimizer, needs in zip(self.optimizers, self._needs_closure, strict=True):
            if closure is not None and needs:
                optimizer.step(closure)  # type: ignore[arg-type]
            else:
                optimizer.step()

    def gradient_norms(
        self, *, screen: bool = False
    ) -> tuple[tuple[str, ...], list[Tensor]] | None:
        """The names of the parameters with a gradient and the max-norm ``max |g|`` of
        each (0-d tensors on the device, NaN/Inf exactly where a gradient is not finite;
        no host synchronisation), or ``None`` if no parameter has a gradient.

        With ``screen``, real gradients on the CPU give their sums instead (float16 summed
        in float32), a cheaper test for the same thing: a sum is NaN/Inf whenever an entry
        is, and finite entries give a non-finite sum only if the sum overflows, so a
        non-finite screen must be confirmed by the max-norms before anything is reported.
        On other devices the screen is the max-norms (one fused call for all gradients).
        """
        names: list[str] = []
        tensors: list[Tensor] = []
        for name, p in self._named:
            grad = p.grad
            if grad is not None:
                names.append(name)
                tensors.append(grad)
        if not tensors:
            return None
        if screen and self._one_device and tensors[0].is_cpu:
            sums = []
            for t in tensors:
                dtype = t.dtype
                if dtype not in _SCREEN_SUM:
                    break
                sums.append(t.sum(dtype=_SCREEN_SUM[dtype]))
            else:
                return tuple(names), sums
        try:
            norms = list(torch._foreach_norm(tensors, math.inf))
        except (NotImplementedError, RuntimeError):  # a sparse gradient (nn.Embedding)
            norms = [_max_norm(t) for t in tensors]
        if not self._one_device:
            device = norms[0].device
            norms = [x.to(device) for x in norms]
        return tuple(names), norms

    def check_gradients(self, step: int) -> bool:
        """Host check (``on_nonfinite="skip"``): False, with the gradients dropped and a
        warning, if a gradient is NaN/Inf; raise :class:`NonFiniteError` naming the
        parameters with ``on_nonfinite="raise"``."""
        found = self.gradient_norms()
        if found is None:
            return True
        values = torch.stack([x.double() for x in found[1]]).tolist()  # one synchronisation
        bad = [n for n, norm in zip(found[0], values, strict=True) if not math.isfinite(norm)]
        if not bad:
            return True
        message = (
            f"the gradient of parameter(s) {bad} is not finite at step {step} "
            "although the objective and the constraints are finite (e.g. a NaN/Inf proxy, "
            "sqrt or log at 0, or an overflow in backward); guard the offending operation or "
            "lower the lr."
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteError(message)
        logger.warning("%s Primal step skipped.", message)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return False


def _max_norm(grad: Tensor) -> Tensor:
    """``max |g|`` of one gradient, dense or sparse (the stored values of a sparse one,
    summed over repeated indices first: what the optimizer applies; its implicit zeros
    are finite)."""
    if grad.layout is torch.sparse_coo:
        grad = grad.coalesce().values()
    elif grad.layout is not torch.strided:  # CSR, CSC, BSR, BSC
        grad = grad.values()
    return torch.linalg.vector_norm(grad, math.inf) if grad.numel() else grad.new_zeros(())


def _as_optimizers(optimizer: OptimizerSpec) -> list[torch.optim.Optimizer]:
    items = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence) or not items:
        raise ConfigError(
            "optimizer must be a torch.optim.Optimizer instance or a non-empty list of them; "
            f"got {describe(optimizer)}."
        )
    for k, item in enumerate(items):
        if not isinstance(item, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer #{k} must be a torch.optim.Optimizer instance; got {describe(item)}."
            )
    return list(items)


def _parameter_groups(
    optimizers: list[torch.optim.Optimizer], model: nn.Module
) -> dict[int, tuple[int, int]]:
    """``id(parameter) -> (optimizer index, group index)``.

    Raises:
        ConfigError: If no optimizer owns any parameter of a model that has parameters,
            or two optimizers own the same parameter.
    """
    group_of: dict[int, tuple[int, int]] = {}
    for k, optimizer in enumerate(optimizers):
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) in group_of and group_of[id(p)][0] != k:
                    name = next(
                        (n for n, q in model.named_parameters() if q is p), "(not in the model)"
                    )
                    raise ConfigError(
                        f"optimizers #{group_of[id(p)][0]} and #{k} both own the parameter "
                        f"{name!r} of shape {tuple(p.shape)}; give each parameter to one "
                        "optimizer."
                    )
                group_of[id(p)] = (k, g)
    owned = [name for name, p in model.named_parameters() if id(p) in group_of]
    if not owned and any(True for _ in model.parameters()):
        raise ConfigError(
            "the optimizer does not own any parameter of the model; build it from "
            "model.parameters() (or named groups of them)."
        )
    return group_of


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True for optimizers whose ``step`` requires a closure (LBFGS)."""
    parameter = inspect.signature(optimizer.step).parameters.get("closure")
    return parameter is not None and parameter.default is inspect.Parameter.empty


_OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
for _name, _cls in (
    ("sgd", torch.optim.SGD),
    ("adam", torch.optim.Adam),
    ("adamw", torch.optim.AdamW),
    ("rmsprop", torch.optim.RMSprop),
    ("adagrad", torch.optim.Adagrad),
    ("lbfgs", torch.optim.LBFGS),
):
    _OPTIMIZERS.add(_name, _cls)


def make_optimizer(
    spec: str | torch.optim.Optimizer, params: Iterable[nn.Parameter], **options: Any
) -> torch.optim.Optimizer:
    """Build a primal optimizer from a name (``sgd``, ``adam``, ...) or pass one through.

    Raises:
        UnknownNameError: For an unknown name (lists the known ones).
        ConfigError: For invalid options (the optimizer's own message, with its name), or
            a learning rate that is not a finite number.
    """
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    cls = _OPTIMIZERS.get(spec)
    lr = options.get("lr")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
    ):
        raise ConfigError(
            f"optimizer {spec!r}: lr must be a finite number; got {lr!r}. A NaN or infinite "
            "learning rate would turn every parameter non-finite at the first step."
        )
    try:
        return cls(params, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options for optimizer {spec!r} {options}: {exc}") from None
