"""Protected groups: definitions from categorical attributes and per-group averages.

A :class:`Groups` definition maps the protected attributes of samples (e.g. ``sex`` and
``race`` columns) to a *membership matrix* ``M`` of shape ``(n, G)`` with ``M[i, g] = 1``
when sample ``i`` belongs to group ``g``. Intersectional groups are disjoint (one group per
combination of attribute values); marginal groups may overlap (one group per value of
each attribute). Every group statistic in :mod:`constrain.studies` is a masked mean

    mean_g(v) = sum_i M[i, g] v_i / sum_i M[i, g],

computed for all groups with one matrix product.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe

__all__ = ["Groups", "group_counts", "group_major", "group_means", "membership_from_labels"]

AttributeColumns = Mapping[str, Sequence[object] | np.ndarray]


def _columns(attributes: AttributeColumns) -> tuple[tuple[str, ...], list[np.ndarray], int]:
    """Validate attribute columns: non-empty, equal lengths; values as strings."""
    if not attributes:
        raise ConfigError(
            "groups need at least one protected attribute column, e.g. {'sex': [...]}; got none."
        )
    names = tuple(attributes)
    columns = [np.asarray(attributes[name]).astype(str).reshape(-1) for name in names]
    lengths = {name: len(c) for name, c in zip(names, columns, strict=True)}
    if len(set(lengths.values())) != 1:
        raise ShapeError(f"protected attribute columns must have the same length; got {lengths}.")
    return names, columns, len(columns[0])


@dataclass(frozen=True)
class Groups:
    """A fixed definition of protected groups.

    Each group is a conjunction over attributes: group ``g`` contains the samples whose
    value of attribute ``a`` lies in ``allowed[g][a]`` for every attribute ``a``. Build one
    with :meth:`intersectional` or :meth:`marginal` from the training data and apply the
    *same* definition to any split with :meth:`membership`.

    Attributes:
        attributes: Attribute (column) names, in order.
        names: One readable name per group, e.g. ``"sex=Female & race=White"``.
        allowed: Per group, the allowed values of each attribute (attributes a group does
            not restrict are absent).
    """

    attributes: tuple[str, ...]
    names: tuple[str, ...]
    allowed: tuple[dict[str, frozenset[str]], ...]

    @property
    def num_groups(self) -> int:
        """Number of groups ``G``."""
        return len(self.names)

    @classmethod
    def intersectional(
        cls,
        attributes: AttributeColumns,
        *,
        min_count: int = 1,
        pool_label: str = "other",
    ) -> Groups:
        """One disjoint group per observed combination of attribute values.

        Combinations observed fewer than ``min_count`` times are pooled over the *last*
        attribute: e.g. with attributes ``(sex, race)`` the small race cells of each sex
        are merged into one ``race=other`` group of that sex. A pooled group that holds a
        single cell keeps that cell's name; a pooled group may itself stay below
        ``min_count`` (it is kept: its statistics are just noisier).

        Args:
            attributes: Column name -> one value per sample (any type; compared as
                strings). The column order defines the name order and the pooling axis.
            min_count: Smallest number of samples of an unpooled cell (``1``: no pooling).
            pool_label: Name of the pooled value in group names.

        Raises:
            ConfigError: For no attributes or ``min_count < 1``.
            ShapeError: For columns of different lengths.
        """
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1; got {min_count}.")
        names, columns, _ = _columns(attributes)
        counts = Counter(zip(*columns, strict=True))
        kept: list[tuple[str, ...]] = []
        pooled: dict[tuple[str, ...], list[str]] = {}
        for cell in sorted(counts):
            if counts[cell] >= min_count:
                kept.append(cell)
            else:
                pooled.setdefault(cell[:-1], []).append(cell[-1])
        specs: list[tuple[tuple[str, ...], dict[str, frozenset[str]], str]] = []
        for cell in kept:
            allowed = {a: frozenset([v]) for a, v in zip(names, cell, strict=True)}
            label = " & ".join(f"{a}={v}" for a, v in zip(names, cell, strict=True))
            specs.append((cell, allowed, label))
        for prefix, values in pooled.items():
            allowed = {a: frozenset([v]) for a, v in zip(names[:-1], prefix, strict=True)}
            allowed[names[-1]] = frozenset(values)
            last = values[0] if len(values) == 1 else pool_label
            label = " & ".join(
                [f"{a}={v}" for a, v in zip(names[:-1], prefix, strict=True)]
                + [f"{names[-1]}={last}"]
            )
            specs.append(((*prefix, last), allowed, label))
        specs.sort(key=lambda item: item[0])
        return cls(names, tuple(s[2] for s in specs), tuple(s[1] for s in specs))

    @classmethod
    def marginal(cls, attributes: AttributeColumns) -> Groups:
        """One (overlapping) group per observed value of each attribute, e.g. ``sex=Female``,
        ``sex=Male``, ``race=White``, ...

        Raises:
            ConfigError: For no attributes.
            ShapeError: For columns of different lengths.
        """
        names, columns, _ = _columns(attributes)
        group_names: list[str] = []
        allowed: list[dict[str, frozenset[str]]] = []
        for name, column in zip(names, columns, strict=True):
            for value in sorted(set(column.tolist())):
                group_names.append(f"{name}={value}")
                allowed.append({name: frozenset([value])})
        return cls(names, tuple(group_names), tuple(allowed))

    def membership(
        self, attributes: AttributeColumns, *, dtype: torch.dtype | None = None
    ) -> Tensor:
        """The membership matrix ``M`` (``(n, G)``, 0/1 entries) of samples with these attributes.

        The matrix is column-major (the transpose of a contiguous ``(G, n)`` tensor), the
        fast layout for per-group sums; indexing rows (``M[idx]``) gives ordinary tensors.

        A sample whose values match no group (e.g. a value never seen when the definition
        was built) has an all-zero row: it still counts in overall statistics.

        Raises:
            ConfigError: If an attribute of the definition is missing.
            ShapeError: For columns of different lengths.
        """
        missing = [a for a in self.attributes if a not in attributes]
        if missing:
            raise ConfigError(
                f"membership needs the attributes {list(self.attributes)}; missing {missing} "
                f"(got {list(attributes)})."
            )
        _, columns, n = _columns({a: attributes[a] for a in self.attributes})
        by_name = dict(zip(self.attributes, columns, strict=True))
        matrix = np.ones((self.num_groups, n), dtype=bool)
        for g, allowed in enumerate(self.allowed):
            for attr, values in allowed.items():
                matrix[g] &= np.isin(by_name[attr], list(values))
        # Stored group-major and returned as its transpose (column-major): per-group sums
        # are then contiguous reductions (see group_major).
        return torch.as_tensor(matrix, dtype=dtype or torch.get_default_dtype()).T


def _check_membership(values: Tensor, membership: Tensor, what: str) -> None:
    if membership.dim() != 2 or membership.shape[0] != values.shape[0]:
        raise ShapeError(
            f"{what}: membership must have shape (n, G) with n = {values.shape[0]} samples; "
            f"got {describe(membership)}."
        )


def group_major(membership: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``M^T`` as a contiguous ``(G, n)`` tensor (a view when ``M`` is column-major).

    Per-group sums over the sample axis are fast on this layout (a ``(n, G)`` row-major
    matrix with few columns makes ``v @ M`` hundreds of times slower on CPU), which is why
    :meth:`Groups.membership` returns column-major matrices.
    """
    mt = membership.T if dtype is None else membership.T.to(dtype)
    return mt if mt.is_contiguous() else mt.contiguous()


def group_counts(membership: Tensor) -> Tensor:
    """Number of samples in each group: ``n_g = sum_i M[i, g]`` (shape ``(G,)``)."""
    return group_major(membership).sum(dim=1)


def group_means(
    values: Tensor, membership: Tensor, *, empty: Tensor | float | None = None
) -> Tensor:
    """Per-group means ``mean_g(v) = sum_i M[i, g] v_i / sum_i M[i, g]``.

    Differentiable in ``values``.

    Args:
        values: One value per sample, shape ``(n,)``.
        membership: Membership matrix ``(n, G)`` (0/1 or fractional weights).
        empty: Value of groups with no sample (default ``0``); e.g. pass the overall mean
            so that an empty group reads as "no difference".

    Raises:
        ShapeError: If the shapes do not match.
    """
    if values.dim() != 1:
        raise ShapeError(
            f"group_means: values must be 1-d (one per sample); got {describe(values)}."
        )
    _check_membership(values, membership, "group_means")
    mt = group_major(membership, values.dtype)
    counts = mt.sum(dim=1)
    means = (mt @ values) / counts.clamp_min(1.0)
    if empty is None:
        return means
    fill = torch.as_tensor(empty, dtype=values.dtype, device=values.device).expand_as(means)
    return torch.where(counts > 0, means, fill)


def membership_from_labels(
    labels: Tensor, num_groups: int | None = None, *, dtype: torch.dtype | None = None
) -> Tensor:
    """The membership matrix ``M`` (``(n, G)``, column-major, 0/1) of integer group labels.

    ``M[i, g] = 1[labels_i = g]``: one disjoint group per label value.

    Args:
        labels: One integer group label per sample, shape ``(n,)``, values in ``[0, G)``.
        num_groups: ``G``. ``None`` infers ``max(labels) + 1``; give it explicitly for
            minibatches, where the largest label may be absent from a batch.
        dtype: Floating dtype of the matrix (default: the default dtype).

    Raises:
        ShapeError: If ``labels`` is not a 1-d integer tensor.
        ConfigError: If a label is negative or not below ``num_groups``.
    """
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ShapeError(
            "group labels must be a 1-d integer tensor (one group index per sample); got "
            f"{describe(labels)}. Pass a membership matrix (n, G) for overlapping groups."
        )
    n = labels.shape[0]
    low = int(labels.min()) if n else 0
    high = int(labels.max()) if n else -1
    if num_groups is None:
        num_groups = high + 1
    if low < 0 or high >= num_groups:
        raise ConfigError(
            f"group labels must lie in [0, {num_groups}); got values in [{low}, {high}]. "
            "Pass num_groups= with the number of groups."
        )
    rows = torch.arange(num_groups, device=labels.device)[:, None] == labels[None, :]
    return rows.to(dtype or torch.get_default_dtype()).T
