"""L0 sparsity: hard-concrete gates, gated layers and density constraints.

Hard-concrete gates (Louizos, Welling and Kingma, "Learning sparse neural networks
through L0 regularization", ICLR 2018) relax a binary mask ``z in {0, 1}`` to a random
variable in ``[0, 1]`` that is exactly 0 or 1 with positive probability. With a learnable
location ``log_alpha``, temperature ``beta`` and stretch interval ``(gamma, zeta)``,
``gamma < 0 < 1 < zeta``::

    u ~ U(0, 1)
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = min(1, max(0, s * (zeta - gamma) + gamma))

The probability that a gate is non-zero has the closed form

    P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)),

so the *expected density* (expected fraction of non-zero weights) is differentiable in
``log_alpha`` and can be constrained directly. At evaluation the gate is deterministic,
``z = min(1, max(0, sigmoid(log_alpha) * (zeta - gamma) + gamma))``, and the *achieved
density* counts its non-zero entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import ConfigError
from ..problem import ConstraintValue

__all__ = [
    "GateStructure",
    "HardConcreteGate",
    "L0Linear",
    "gated_layers",
    "achieved_density",
    "expected_density",
    "l0_density",
    "magnitude_density",
]

GateStructure = Literal["weight", "input", "output"]

_LOGIT_EPS = 1e-6


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates ``z in [0, 1]`` with learnable ``log_alpha``.

    In training mode :meth:`forward` draws a reparameterized sample (so gradients reach
    ``log_alpha``); in eval mode it returns the deterministic gate.

    Args:
        shape: Shape of the gate tensor.
        init_density: Initial probability ``P(z != 0)`` of every gate, in (0, 1).
        beta: Temperature ``beta > 0`` of the concrete distribution (2/3 in the paper).
        gamma: Lower end of the stretch interval (< 0).
        zeta: Upper end of the stretch interval (> 1).
        weights_per_gate: How many weights each gate switches (used for densities).

    Raises:
        ConfigError: For parameters outside their ranges.
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        *,
        init_density: float = 0.9,
        beta: float = 2.0 / 3.0,
        gamma: float = -0.1,
        zeta: float = 1.1,
        weights_per_gate: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 < init_density < 1.0:
            raise ConfigError(f"init_density must lie in (0, 1); got {init_density!r}.")
        if not beta > 0:
            raise ConfigError(f"beta (the gate temperature) must be > 0; got {beta!r}.")
        if not (gamma < 0.0 and zeta > 1.0):
            raise ConfigError(
                f"the stretch interval needs gamma < 0 < 1 < zeta; got gamma={gamma!r}, "
                f"zeta={zeta!r} (the paper uses -0.1 and 1.1)."
            )
        if weights_per_gate < 1:
            raise ConfigError(f"weights_per_gate must be >= 1; got {weights_per_gate!r}.")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.zeta = float(zeta)
        self.weights_per_gate = int(weights_per_gate)
        # Invert P(z != 0) = sigmoid(log_alpha - shift) for the initial location.
        init = math.log(init_density / (1.0 - init_density)) + self.shift
        self.log_alpha = nn.Parameter(torch.full(_as_shape(shape), init))

    @property
    def shift(self) -> float:
        """``beta * log(-gamma / zeta)`` (negative), the offset in ``P(z != 0)``."""
        return self.beta * math.log(-self.gamma / self.zeta)

    def prob_nonzero(self) -> Tensor:
        """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))`` per gate."""
        return torch.sigmoid(self.log_alpha - self.shift)

    def deterministic(self) -> Tensor:
        """Evaluation gate ``min(1, max(0, sigmoid(log_alpha) * (zeta - gamma) + gamma))``."""
        stretched = torch.sigmoid(self.log_alpha) * (self.zeta - self.gamma) + self.gamma
        return stretched.clamp(0.0, 1.0)

    def sample(self) -> Tensor:
        """A reparameterized sample of the gates (differentiable in ``log_alpha``)."""
        u = torch.rand_like(self.log_alpha).clamp(_LOGIT_EPS, 1.0 - _LOGIT_EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def forward(self) -> Tensor:
        """A sample in training mode, the deterministic gate in eval mode."""
        return self.sample() if self.training else self.deterministic()

    def expected_nonzero(self) -> Tensor:
        """Expected number of non-zero *weights*: ``weights_per_gate * sum P(z != 0)``."""
        return self.prob_nonzero().sum() * self.weights_per_gate

    def nonzero(self) -> Tensor:
        """Number of weights switched on by the deterministic gate (detached)."""
        with torch.no_grad():
            return (self.deterministic() > 0).sum().to(self.log_alpha.dtype) * self.weights_per_gate

    @property
    def num_weights(self) -> int:
        """Number of weights the gates switch."""
        return self.log_alpha.numel() * self.weights_per_gate


def _as_shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    if not shape or any(int(s) < 1 for s in shape):
        raise ConfigError(f"gate shape must be non-empty with positive sizes; got {shape!r}.")
    return tuple(int(s) for s in shape)


class L0Linear(nn.Module):
    """A linear layer whose weights are multiplied by hard-concrete gates.

    ``y = x (W * z)^T + b`` with ``z`` broadcast according to ``structure``:

    * ``"weight"``: one gate per weight (unstructured sparsity);
    * ``"input"``: one gate per input feature (removes whole input columns);
    * ``"output"``: one gate per output unit (removes whole rows, i.e. neurons; the bias
      of a removed unit is kept).

    Args:
        in_features: Input size.
        out_features: Output size.
        bias: Whether to learn a bias (never gated by ``"weight"``/``"input"``).
        structure: Gate granularity.
        init_density: Initial ``P(z != 0)``.
        **gate_options: ``beta``, ``gamma``, ``zeta`` of :class:`HardConcreteGate`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        structure: GateStructure = "weight",
        init_density: float = 0.9,
        **gate_options: float,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        shapes: dict[str, tuple[tuple[int, ...], int]] = {
            "weight": ((out_features, in_features), 1),
            "input": ((in_features,), out_features),
            "output": ((out_features,), in_features),
        }
        if structure not in shapes:
            raise ConfigError(
                f"L0Linear structure must be one of {sorted(shapes)}; got {structure!r}."
            )
        self.structure: GateStructure = structure
        shape, per_gate = shapes[structure]
        self.gate = HardConcreteGate(
            shape, init_density=init_density, weights_per_gate=per_gate, **gate_options
        )

    @property
    def weight(self) -> Tensor:
        """The ungated weight ``W``."""
        return self.linear.weight

    def mask(self, gates: Tensor | None = None) -> Tensor:
        """The gate broadcast to the weight's shape ``(out, in)``."""
        z = self.gate() if gates is None else gates
        if self.structure == "input":
            return z[None, :].expand_as(self.linear.weight)
        if self.structure == "output":
            return z[:, None].expand_as(self.linear.weight)
        return z

    def effective_weight(self) -> Tensor:
        """``W * z`` with the deterministic gate (what evaluation uses)."""
        return self.linear.weight * self.mask(self.gate.deterministic())

    def forward(self, x: Tensor) -> Tensor:
        """``x (W * z)^T + b`` with a fresh gate sample (training) or the fixed gate (eval)."""
        return F.linear(x, self.linear.weight * self.mask(), self.linear.bias)


def gated_layers(model: nn.Module) -> list[tuple[str, HardConcreteGate]]:
    """Every :class:`HardConcreteGate` of ``model`` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, HardConcreteGate)]


def _densities(model: nn.Module, per_layer: bool) -> tuple[Tensor, Tensor]:
    """(expected, achieved) density, model-wide or per gate module."""
    gates = gated_layers(model)
    if not gates:
        raise ConfigError(
            f"{type(model).__name__} has no HardConcreteGate; build it from L0Linear layers "
            "(or add HardConcreteGate modules) before asking for its density."
        )
    expected = torch.stack([g.expected_nonzero() for _, g in gates])
    achieved = torch.stack([g.nonzero() for _, g in gates])
    sizes = torch.tensor(
        [float(g.num_weights) for _, g in gates], dtype=expected.dtype, device=expected.device
    )
    if per_layer:
        return expected / sizes, achieved / sizes
    total = sizes.sum()
    return expected.sum() / total, achieved.sum() / total


def expected_density(model: nn.Module, *, per_layer: bool = False) -> Tensor:
    """Expected fraction of non-zero gated weights (differentiable in ``log_alpha``).

    Model-wide: ``sum_l E[nonzero_l] / sum_l n_l`` with ``n_l`` the weights gated by gate
    module ``l`` and ``E[nonzero_l] = weights_per_gate * sum P(z != 0)``; per layer: the
    vector ``E[nonzero_l] / n_l``.

    Raises:
        ConfigError: If the model has no hard-concrete gate.
    """
    return _densities(model, per_layer)[0]


def achieved_density(model: nn.Module, *, per_layer: bool = False) -> Tensor:
    """Fraction of gated weights the deterministic (evaluation) gates keep (detached).

    Model-wide ``sum_l nonzero_l / sum_l n_l`` or per layer ``nonzero_l / n_l``.

    Raises:
        ConfigError: If the model has no hard-concrete gate.
    """
    return _densities(model, per_layer)[1]


def l0_density(
    model: nn.Module, *, per_layer: bool = False, exact: bool = False
) -> ConstraintValue:
    """The density of the gated weights of ``model`` as a constraint value.

    * ``exact=False`` (default): the value is the expected density
      (:func:`expected_density`), differentiable, used by both players: the L0
      formulation ``E[||w||_0] / n <= target``.
    * ``exact=True``: the value is the achieved density of the deterministic gates
      (:func:`achieved_density`, what the evaluated model really has) and the proxy the
      expected density. A deterministic gate is non-zero iff ``log_alpha >
      log(-gamma / zeta)``, where ``P(z != 0) = sigmoid((1 - beta) log(-gamma / zeta))``
      (about 0.31 with the defaults): the achieved density lags the expected one until the
      gates polarise, and multipliers driven by it wind up more.

    Constrain with ``Constraint("density", "<=", rhs=target)`` (or per layer).

    Raises:
        ConfigError: If the model has no hard-concrete gate.
    """
    expected, achieved = _densities(model, per_layer)
    if exact:
        return ConstraintValue(achieved, expected)
    return ConstraintValue(expected)


def magnitude_density(params: Iterable[Tensor], threshold: float = 0.0) -> float:
    """Fraction of entries with ``|w| > threshold`` over all ``params`` (for reporting).

    Args:
        params: Tensors (e.g. effective weights ``W * z`` or plain weights).
        threshold: Magnitude at or below which an entry counts as zero.

    Raises:
        ConfigError: If ``params`` is empty or ``threshold < 0``.
    """
    if threshold < 0:
        raise ConfigError(f"magnitude_density: threshold must be >= 0; got {threshold!r}.")
    nonzero, total = 0, 0
    for p in params:
        nonzero += int((p.detach().abs() > threshold).sum())
        total += p.numel()
    if total == 0:
        raise ConfigError("magnitude_density: no parameter entries were given.")
    return nonzero / total
