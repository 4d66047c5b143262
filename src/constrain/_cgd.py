"""Competitive gradient descent (CGD) for the Lagrangian game.

Schäfer & Anandkumar, "Competitive Gradient Descent", NeurIPS 2019. The primal player
``x`` minimises and the multiplier player ``y`` maximises ``L(x, y)`` (for constrained
problems ``L = f(x) + y . g(x)``). Instead of both players stepping along their own
gradient (simultaneous GDA), each step plays the Nash equilibrium of the local bilinear
game with quadratic regularisation::

    min_dx  dx.grad_x L + dx.D_xy dy + ||dx||^2 / (2 eta_x)
    max_dy  dy.grad_y L + dy.D_yx dx - ||dy||^2 / (2 eta_y)

with ``D_xy = d^2 L / dx dy`` and ``D_yx = D_xy^T``. Its first-order conditions
``dx = -eta_x (grad_x L + D_xy dy)`` and ``dy = eta_y (grad_y L + D_yx dx)`` give

    (I + eta_x eta_y D_yx D_xy) dy = eta_y (grad_y L - eta_x D_yx grad_x L)
    (I + eta_x eta_y D_xy D_yx) dx = -eta_x (grad_x L + eta_y D_xy grad_y L)

Both matrices are symmetric positive definite, so either system is solved by conjugate
gradient with mixed Hessian-vector products (double backward through
:func:`torch.autograd.grad`); the other player's update then follows from its first-order
condition with one more product. :func:`cgd_step` solves the system of the smaller player
by default (the multipliers, for most constrained problems), so CG needs at most that many
iterations.

On the bilinear game ``L = x^T A y`` with ``eta_x = eta_y = eta`` the step is exactly
``x+ = (I + eta^2 A A^T)^{-1} (x - eta A y)`` and ``y+ = (I + eta^2 A^T A)^{-1} (y + eta A^T x)``.

See docs/papers/competitive-gradient-descent.md for the derivation, the treatment of
inequality multipliers and measured costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._errors import ConfigError, NonFiniteError, ShapeError, describe

__all__ = ["CGDStep", "cgd_step", "conjugate_gradient"]

Lagrangian = Callable[[list[Tensor], list[Tensor]], Tensor]
"""``lagrangian(primal, dual) -> scalar``: builds ``L`` from the tensors it receives."""


@dataclass(frozen=True)
class CGDStep:
    """The result of one CGD step (updates, not new iterates).

    Attributes:
        primal: One update ``dx`` per primal tensor (same shapes), to be *added* to the
            primal tensors.
        dual: One update ``dy`` per dual tensor (same shapes), to be *added* to the
            multipliers; the caller projects (``max(y, 0)`` for inequalities) afterwards.
        frozen: Dual entries held fixed in this step (multipliers at 0 whose inequality
            constraint is inactive, see ``nonnegative`` in :func:`cgd_step`).
        gradients: Gradient evaluations of ``L`` (one: both players' gradients come from
            one backward pass with ``create_graph=True``).
        hvps: Mixed Hessian-vector products (each one backward pass through the gradient
            graph): two per CG iteration, plus one for the right-hand side and one for the
            other player's update.
        cg_iterations: Conjugate-gradient iterations taken.
        residual: Final relative residual ``||b - M v|| / ||b||`` of the CG solve (0 when
            ``b = 0``).
        converged: Whether CG reached ``tol`` within ``max_iter`` iterations.
        solved_for: ``"dual"`` or ``"primal"``: the player whose system CG solved.
    """

    primal: list[Tensor]
    dual: list[Tensor]
    frozen: int
    gradients: int
    hvps: int
    cg_iterations: int
    residual: float
    converged: bool
    solved_for: Literal["primal", "dual"]

    @property
    def evaluations(self) -> int:
        """Gradient evaluations plus Hessian-vector products (each costs about one backward
        pass): the cost of the step in gradient evaluations."""
        return self.gradients + self.hvps


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int | None = None,
) -> tuple[Tensor, int, float, bool]:
    """Solve ``M v = b`` for symmetric positive definite ``M`` given as ``matvec``.

    Plain conjugate gradient (Hestenes & Stiefel) from ``v = 0``, stopped when the relative
    residual ``||b - M v|| / ||b||`` is at most ``tol``.

    Args:
        matvec: ``v -> M v`` for flat vectors of ``b``'s size.
        b: Right-hand side, 1-d.
        tol: Relative residual tolerance, ``> 0``.
        max_iter: Iteration cap (default: ``2 * b.numel() + 10``; exact arithmetic
            converges within ``b.numel()`` iterations, rounding may need a few more).

    Returns:
        ``(v, iterations, relative residual, converged)``.
    """
    n = b.numel()
    cap = 2 * n + 10 if max_iter is None else max_iter
    x = torch.zeros_like(b)
    norm_b = float(torch.linalg.vector_norm(b))
    if norm_b == 0.0:
        return x, 0, 0.0, True
    r = b.clone()
    p = r.clone()
    rr = torch.dot(r, r)
    iterations = 0
    residual = 1.0
    while iterations < cap:
        mp = matvec(p)
        curvature = torch.dot(p, mp)
        if float(curvature) <= 0.0:
            raise NonFiniteError(
                "conjugate_gradient: the system matrix is not positive definite along a "
                f"search direction (p.Mp = {float(curvature):.3g}); CGD's matrix "
                "I + eta_x eta_y D D^T always is, so the mixed second derivatives are "
                "inconsistent (a closure that is not twice differentiable?)."
            )
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * mp
        iterations += 1
        rr_new = torch.dot(r, r)
        residual = math.sqrt(float(rr_new)) / norm_b
        if residual <= tol:
            return x, iterations, residual, True
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, iterations, residual, residual <= tol


def _prepare(tensors: Sequence[Tensor], side: str) -> list[Tensor]:
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
        raise ConfigError(
            f"cgd_step: {side} must be a sequence (list or tuple) of tensors; received "
            f"{describe(tensors)}. Wrap a single tensor as [tensor]."
        )
    if not tensors:
        raise ConfigError(f"cgd_step: {side} is empty; each player needs at least one tensor.")
    out: list[Tensor] = []
    for k, t in enumerate(tensors):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ShapeError(
                f"cgd_step: {side}[{k}] must be a floating-point tensor; received {describe(t)}."
            )
        if t.is_leaf and t.requires_grad:
            out.append(t)  # e.g. an nn.Parameter the closure reads from its module
        else:
            out.append(t.detach().requires_grad_(True))
    return out


def _flat(parts: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [
            (torch.zeros_like(t) if p is None else p).reshape(-1)
            for p, t in zip(parts, like, strict=True)
        ]
    )


def _split(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].view_as(t).detach())
        start += t.numel()
    return out


def _free_dual(
    ys: Sequence[Tensor], grad_y: Tensor, nonnegative: bool | Sequence[bool | Tensor]
) -> Tensor | None:
    """Mask of the dual entries that take part in the local game (``None``: all)."""
    if isinstance(nonnegative, bool):
        if not nonnegative:
            return None
        masks: list[Tensor] = [torch.ones(y.shape, dtype=torch.bool, device=y.device) for y in ys]
    elif isinstance(nonnegative, Sequence) and len(nonnegative) == len(ys):
        masks = []
        for k, (flag, y) in enumerate(zip(nonnegative, ys, strict=True)):
            if isinstance(flag, bool):
                masks.append(torch.full(y.shape, flag, dtype=torch.bool, device=y.device))
            elif isinstance(flag, Tensor) and flag.dtype == torch.bool and flag.shape == y.shape:
                masks.append(flag.to(y.device))
            else:
                raise ConfigError(
                    f"cgd_step: nonnegative[{k}] must be a bool or a boolean mask of shape "
                    f"{tuple(y.shape)} (the dual tensor's); received {describe(flag)}."
                )
    else:
        raise ConfigError(
            "cgd_step: nonnegative must be a bool or one bool / boolean mask per dual tensor "
            f"({len(ys)} of them); received {describe(nonnegative)}."
        )
    bounded = torch.cat([m.reshape(-1) for m in masks])
    at_bound = torch.cat([y.detach().reshape(-1) <= 0 for y in ys])
    return ~(bounded & at_bound & (grad_y < 0))


def _check_eta(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"cgd_step: {name} must be a positive number; received {describe(value)}."
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"cgd_step: {name} must be finite and > 0; received {value!r}.")
    return float(value)


def cgd_step(
    primal: Sequence[Tensor],
    dual: Sequence[Tensor],
    lagrangian: Lagrangian,
    eta: float,
    *,
    eta_dual: float | None = None,
    tol: float = 1e-10,
    max_iter: int | None = None,
    solve_for: Literal["auto", "primal", "dual"] = "auto",
    nonnegative: bool | Sequence[bool | Tensor] = False,
) -> CGDStep:
    """One competitive-gradient-descent step for ``min_x max_y L(x, y)``.

    Computes the Nash equilibrium ``(dx, dy)`` of the regularised bilinear approximation of
    ``L`` at the current point (Schäfer & Anandkumar, NeurIPS 2019)::

        dx = -eta_x (grad_x L + D_xy dy),      dy = eta_y (grad_y L + D_yx dx),

    by conjugate gradient on one player's symmetric positive definite system

        (I + eta_x eta_y D_yx D_xy) dy = eta_y (grad_y L - eta_x D_yx grad_x L)

    (or the primal twin), where ``D_xy v = grad_x (grad_y L . v)`` and
    ``D_yx u = grad_y (grad_x L . u)`` are mixed Hessian-vector products by double backward.
    Nothing is modified: the caller adds the updates and projects the multipliers.

    Contract (for wiring into the solver as ``order="cgd"``):

    * ``lagrangian(primal, dual)`` returns the scalar ``L`` and must build it from the
      tensors it receives (the primal ones may instead be read from their module: tensors
      that are leaves with ``requires_grad`` -- ``nn.Parameter`` -- are passed through
      unchanged; every other tensor, and every dual tensor, is passed as a detached copy
      with ``requires_grad``). It is called exactly once and must be twice differentiable
      (no ``detach`` between the players, no in-place edits of the inputs).
    * With ``L = f(x) + y . g(x)``: ``grad_y L = g(x)`` (the violation) and ``D_yx u`` is the
      constraint Jacobian times ``u``; the step reduces to simultaneous GDA as
      ``eta -> 0``.
    * Inequality multipliers (``nonnegative``): a multiplier at its bound ``y_i <= 0`` whose
      gradient points outward (``grad_y L_i < 0``: an inactive constraint) is held fixed for
      this step -- it leaves the local game, its update is 0 and the other player does not
      anticipate its move. Without this, the primal player would react to a dual step that
      the projection then cancels, and projected CGD would stop at a biased point. The
      caller still applies ``y <- max(y + dy, 0)`` (projected CGD); its fixed points are then
      exactly the KKT points.
    * Cost: 1 gradient evaluation + ``2 * cg_iterations + 2`` Hessian-vector products
      (:attr:`CGDStep.evaluations`); in exact arithmetic ``cg_iterations`` is at most the
      solved player's dimension.
    * Autograd graphs are freed before returning; the tensors' ``.grad`` are untouched.

    Args:
        primal: The minimising player's tensors ``x`` (parameters).
        dual: The maximising player's tensors ``y`` (multipliers).
        lagrangian: Closure ``(primal, dual) -> L`` (0-d tensor).
        eta: Step size ``eta_x`` of the primal player, ``> 0``.
        eta_dual: Step size ``eta_y`` of the multiplier player (default: ``eta``).
        tol: Relative residual tolerance of conjugate gradient.
        max_iter: CG iteration cap (default: twice the solved player's dimension plus 10).
        solve_for: Whose system CG solves: ``"dual"``, ``"primal"`` or ``"auto"`` (the
            player with fewer entries). Both give the same step up to ``tol``.
        nonnegative: Which dual entries are multipliers of inequality constraints
            (``y >= 0``): ``True`` for all, ``False`` for none (equalities / an
            unconstrained game), or one bool or boolean mask per dual tensor.

    Returns:
        A :class:`CGDStep` with the updates and the evaluation counts.

    Raises:
        ConfigError: Empty or non-sequence players, a non-positive step size or tolerance,
            a bad ``solve_for``.
        ShapeError: Non-floating tensors, or a closure that does not return a scalar.
        NonFiniteError: A non-finite Lagrangian or gradient.
    """
    eta_x = _check_eta(eta, "eta")
    eta_y = eta_x if eta_dual is None else _check_eta(eta_dual, "eta_dual")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ConfigError(f"cgd_step: tol must be a number > 0; received {describe(tol)}.")
    if solve_for not in ("auto", "primal", "dual"):
        raise ConfigError(
            f"cgd_step: solve_for must be 'auto', 'primal' or 'dual'; received {solve_for!r}."
        )
    xs = _prepare(primal, "primal")
    ys = _prepare(dual, "dual")
    with torch.enable_grad():
        value = lagrangian(xs, ys)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ShapeError(
                f"cgd_step: lagrangian must return a scalar tensor; received {describe(value)}."
            )
        if not bool(torch.isfinite(value)):
            raise NonFiniteError(
                f"cgd_step: the Lagrangian is {float(value.detach())} at this point."
            )
        grads = torch.autograd.grad(
            value.reshape(()), [*xs, *ys], create_graph=True, allow_unused=True
        )
        gx_parts, gy_parts = grads[: len(xs)], grads[len(xs) :]
        gx = _flat(gx_parts, xs)
        gy = _flat(gy_parts, ys)
        if not (bool(torch.isfinite(gx).all()) and bool(torch.isfinite(gy).all())):
            raise NonFiniteError("cgd_step: a gradient of the Lagrangian is not finite.")
        # Products through the graph of one player's gradient; unused inputs give zeros.
        x_links = [k for k, g in enumerate(gx_parts) if g is not None and g.requires_grad]
        y_links = [k for k, g in enumerate(gy_parts) if g is not None and g.requires_grad]
        hvps = 0

        def mixed(
            parts: Sequence[Tensor],
            links: list[int],
            wrt: Sequence[Tensor],
            given: Sequence[Tensor],
            u: Tensor,
            zeros: Tensor,
        ) -> Tensor:
            """``grad_wrt (grad_given L . u)``: one mixed Hessian-vector product."""
            nonlocal hvps
            hvps += 1
            if not links:
                return torch.zeros_like(zeros)
            weights = _split(u, given)
            out = torch.autograd.grad(
                [parts[k] for k in links],
                wrt,
                grad_outputs=[weights[k] for k in links],
                retain_graph=True,
                allow_unused=True,
            )
            return _flat(out, wrt).detach()

        def d_yx(u: Tensor) -> Tensor:
            """``D_yx u = grad_y (grad_x L . u)`` (dual-sized)."""
            return mixed(gx_parts, x_links, ys, xs, u, gy)

        def d_xy(v: Tensor) -> Tensor:
            """``D_xy v = grad_x (grad_y L . v)`` (primal-sized)."""
            return mixed(gy_parts, y_links, xs, ys, v, gx)

        gx_d, gy_d = gx.detach(), gy.detach()
        free = _free_dual(ys, gy_d, nonnegative)
        frozen = 0 if free is None else int((~free).sum())

        def keep(v: Tensor) -> Tensor:
            return v if free is None else torch.where(free, v, torch.zeros_like(v))

        chosen: Literal["primal", "dual"]
        if solve_for == "auto":
            chosen = "dual" if gy_d.numel() <= gx_d.numel() else "primal"
        else:
            chosen = solve_for
        coupling = eta_x * eta_y
        if chosen == "dual":
            # On the free dual coordinates: (I + c P D_yx D_xy P) dy = P b; frozen ones stay 0.
            b = keep(eta_y * (gy_d - eta_x * d_yx(gx_d)))
            dy, iterations, residual, converged = conjugate_gradient(
                lambda v: v + coupling * keep(d_yx(d_xy(keep(v)))),
                b,
                tol=float(tol),
                max_iter=max_iter,
            )
            dx = -eta_x * (gx_d + d_xy(dy))
        else:
            b = -eta_x * (gx_d + eta_y * d_xy(keep(gy_d)))
            dx, iterations, residual, converged = conjugate_gradient(
                lambda v: v + coupling * d_xy(keep(d_yx(v))), b, tol=float(tol), max_iter=max_iter
            )
            dy = keep(eta_y * (gy_d + d_yx(dx)))
    return CGDStep(
        primal=_split(dx, xs),
        dual=_split(dy, ys),
        frozen=frozen,
        gradients=1,
        hvps=hvps,
        cg_iterations=iterations,
        residual=residual,
        converged=converged,
        solved_for=chosen,
    )
