"""Proximal operators for proximal-gradient steps on non-smooth regularizers.

Every operator is registered in :data:`PROX` under its name and has the signature
``fn(x, strength, **options) -> Tensor``: ``strength`` is the penalty weight already scaled
by the step size, the result is a new tensor of ``x``'s shape, dtype and device, and ``x``
is left untouched.

* ``"weight_sharing"`` -- :func:`weight_sharing`, the prox of
  ``R(w) = 1/(d-1) sum_{i>j} |w_i - w_j|`` (methods ``sort_pava``, ``parallel_pav``,
  ``divide_conquer``, ``auto``); :func:`weight_sharing_` works in place.
* ``"weight_sharing_l1"`` -- weight sharing, then soft-thresholding.
* ``"l1"`` -- soft-thresholding; ``"group_l1"`` -- group soft-thresholding.
* ``"proxsparse"`` -- :func:`proxsparse`, the exact prox of the ProxSparse 2:4 regularizer
  ``sum_{i<j<k} |w_i w_j w_k|`` over blocks of 4 consecutive weights (Liu et al., ICML
  2025); :func:`two_four_mask` is one-shot magnitude 2:4 pruning.
* ``"wgsef"`` -- :func:`wgsef`, the prox of the weighted group sparse envelope function
  (Refael, Arbel & Huleihel) or of its k-level gap ``S - Q`` (``mode="gap"``).
"""

from ._envelope import group_norms, wgsef, wgsef_gap, wgsef_value
from ._isotonic import IsotonicInfo
from ._registry import PROX, ProxFn, get, names, register
from ._semistructured import (
    is_two_four,
    proxsparse,
    proxsparse_penalty,
    two_four_fraction,
    two_four_mask,
)
from ._sparsity import group_l1, l1, soft_threshold, weight_sharing_l1
from ._weight_sharing import (
    METHODS,
    WeightSharingStats,
    count_clusters,
    isotonic_regression,
    resolve_method,
    weight_sharing,
    weight_sharing_,
    weight_sharing_penalty,
)

__all__ = [
    "METHODS",
    "PROX",
    "IsotonicInfo",
    "ProxFn",
    "WeightSharingStats",
    "count_clusters",
    "get",
    "group_l1",
    "group_norms",
    "is_two_four",
    "isotonic_regression",
    "l1",
    "names",
    "proxsparse",
    "proxsparse_penalty",
    "register",
    "resolve_method",
    "soft_threshold",
    "two_four_fraction",
    "two_four_mask",
    "weight_sharing",
    "weight_sharing_",
    "weight_sharing_l1",
    "weight_sharing_penalty",
    "wgsef",
    "wgsef_gap",
    "wgsef_value",
]
