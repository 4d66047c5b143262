"""Sorting helpers: ascending values together with the permutation that sorts.

On CPU, ``torch.sort`` is slow (it is the reference the benchmark compares against); NumPy's
vectorised (SIMD) quicksort of 64-bit integers is an order of magnitude faster. For float32
input we therefore sort *packed keys*: the float's bits mapped to an order-preserving signed
32-bit integer in the high half and the element's index in the low half of one int64. One
in-place integer sort then yields the sorted values (decoded from the high halves) and the
permutation (the low halves) at once; equal values come out in index order, and non-finite
values sort to the two ends (-NaN < -Inf < finite < +Inf < +NaN), so a finiteness check of
the result costs two reads.
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["sort_numpy", "sort_with_indices"]

_LITTLE_ENDIAN = sys.byteorder == "little"
_PACKED_MAX = 2**31  # indices must fit the low 32 bits as non-negative int32


def sort_numpy(
    values: npt.NDArray[np.floating],
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.integer]]:
    """Sort a 1-D float32/float64 array: return ``(sorted_values, indices)``.

    ``sorted_values == values[indices]``; ``indices`` is an integer array (possibly a strided
    int32 view) usable for fancy indexing. ``values`` is not modified.
    """
    d = values.shape[0]
    if values.dtype == np.float32 and _LITTLE_ENDIAN and 0 < d < _PACKED_MAX:
        bits = values.view(np.int32)
        # order-preserving map float32 -> int32: flip the 31 low bits of negative floats
        key = np.right_shift(bits, 31)
        key &= 0x7FFFFFFF
        key ^= bits
        packed = key.astype(np.int64)
        packed <<= 32
        packed |= np.arange(d, dtype=np.int64)
        packed.sort()  # in place; SIMD quicksort for int64
        halves = packed.view(np.int32)
        high = halves[1::2]  # keys (little endian: high word second)
        decoded = np.right_shift(high, 31)
        decoded &= 0x7FFFFFFF
        decoded ^= high
        return decoded.view(np.float32), halves[0::2]
    order = np.argsort(values, kind="quicksort")
    return values[order], order


def sort_with_indices(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending values and int64 indices of a contiguous 1-D tensor, on its device.

    NaNs sort last (or first, for NaNs with the sign bit set, on CPU float32), infinities
    next to them; use the two ends to detect non-finite input.
    """
    if flat.device.type == "cpu" and flat.numel() > 0:
        vals, order = sort_numpy(flat.numpy())
        idx = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(vals)), idx
    vals_t, idx_t = torch.sort(flat)
    return vals_t, idx_t
