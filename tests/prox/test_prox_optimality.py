"""Direct optimality certificate: x - w in lam * dR(w).

For the prox output ``w`` group the entries into tie sets (equal ``w``), ordered by ``x``.
A tie set ``G`` with ``a`` entries strictly below and ``b`` strictly above it gets, from the
pairs leaving ``G``, the subgradient part ``(a - b) / (d - 1)`` on each entry; inside ``G`` a
subgradient is any antisymmetric matrix with entries in ``[-1, 1]``, whose row sums fill the
permutohedron of ``(|G|-1, |G|-3, ..., 1-|G|)``. So ``w`` is the prox iff, for every ``G``,

    u_k = (d-1)/lam * (x_k - w_k) - (a - b)     (k in G)

sums to 0 and its ``t`` largest entries sum to at most ``t (|G| - t)`` for every ``t``
(majorization: the cumulative-sum characterization). The largest ``u`` belong to the largest
``x`` of the set, so the check runs over suffixes of ``G`` in sorted order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constrain.prox import weight_sharing
from constrain.prox._inputs import INPUT_KINDS, make_input

METHODS = ["sort_pava", "parallel_pav", "divide_conquer"]


def subgradient_violation(x: np.ndarray, w: np.ndarray, lam: float) -> float:
    """Largest violation of the optimality conditions, in units of lam / (d - 1)."""
    d = x.size
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    worst = float(np.max(np.diff(ws) * -1, initial=0.0)) * (d - 1) / lam  # order kept
    start = 0
    for end in range(1, d + 1):
        if end < d and ws[end] == ws[start]:
            continue
        size = end - start
        below, above = start, d - end
        u = (d - 1) / lam * (xs[start:end] - ws[start:end]) - (below - above)
        worst = max(worst, abs(float(u.sum())))
        suffix = np.cumsum(u[::-1])  # t largest entries (x sorted within the set)
        t = np.arange(1, size + 1)
        worst = max(worst, float(np.max(suffix - t * (size - t))))
        start = end
    return worst


def check(x: np.ndarray, lam: float, method: str, rtol: float = 1e-8) -> None:
    w = weight_sharing(torch.from_numpy(x), lam, method).numpy()
    scale = (1.0 + np.abs(x).max() + lam) * (x.size - 1) / lam
    assert subgradient_violation(x, w, lam) <= rtol * scale * x.size


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=st.lists(
        st.one_of(st.floats(-50, 50, width=64), st.sampled_from([0.0, 1.0, 2.5])),
        min_size=2,
        max_size=40,
    ).map(np.array),
    lam=st.floats(1e-3, 100.0, width=64),
    method=st.sampled_from(METHODS),
)
def test_subgradient_condition_property(x: np.ndarray, lam: float, method: str) -> None:
    check(x, lam, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_subgradient_condition_structured_inputs(kind: str, method: str) -> None:
    for d in (2, 5, 40, 300):
        x, lam = make_input(kind, d, dtype=torch.float64, seed=d)
        check(x.numpy(), lam, method)
        check(x.numpy(), lam / 7, method)


def test_certificate_rejects_wrong_answers() -> None:
    """The check is not vacuous: perturbed or un-merged outputs fail it."""
    x, lam = make_input("random", 60, dtype=torch.float64, seed=1)
    xn = x.numpy()
    w = weight_sharing(x, lam).numpy()
    assert subgradient_violation(xn, w, lam) < 1e-6
    assert subgradient_violation(xn, w + 1e-3 * np.sign(xn), lam) > 1e-3
    shifted = xn + lam * (59 - 2 * np.argsort(np.argsort(xn))) / 59  # z unsorted, no pooling
    assert subgradient_violation(xn, shifted, lam) > 1e-3
    assert subgradient_violation(xn, weight_sharing(x, 1.1 * lam).numpy(), lam) > 1e-3
