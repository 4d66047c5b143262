"""Group definitions (intersectional, pooled, marginal) and per-group means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from constrain import ConfigError, ShapeError
from constrain.studies import Groups, group_counts, group_means

DTYPE = torch.float64

SEX = ["F", "F", "M", "M", "M", "F", "M", "M"]
RACE = ["W", "B", "W", "W", "A", "W", "B", "W"]


def test_intersectional_one_group_per_observed_cell() -> None:
    groups = Groups.intersectional({"sex": SEX, "race": RACE})
    assert groups.names == (
        "sex=F & race=B",
        "sex=F & race=W",
        "sex=M & race=A",
        "sex=M & race=B",
        "sex=M & race=W",
    )
    m = groups.membership({"sex": SEX, "race": RACE}, dtype=DTYPE)
    assert m.shape == (8, 5)
    # Disjoint and covering: every sample in exactly one group.
    assert torch.equal(m.sum(dim=1), torch.ones(8, dtype=DTYPE))
    expected_counts = torch.tensor([1, 2, 1, 1, 3], dtype=DTYPE)
    assert torch.equal(group_counts(m), expected_counts)
    # Sample 4 is (M, A).
    assert m[4].tolist() == [0, 0, 1, 0, 0]


def test_small_cells_are_pooled_over_the_last_attribute() -> None:
    groups = Groups.intersectional({"sex": SEX, "race": RACE}, min_count=2)
    # F: W has 2 (kept), B has 1 (pooled alone -> keeps its name);
    # M: W has 3 (kept), A and B have 1 each -> pooled into "other".
    assert groups.names == (
        "sex=F & race=B",
        "sex=F & race=W",
        "sex=M & race=W",
        "sex=M & race=other",
    )
    m = groups.membership({"sex": SEX, "race": RACE}, dtype=DTYPE)
    assert torch.equal(m.sum(dim=1), torch.ones(8, dtype=DTYPE))
    assert m[:, 3].tolist() == [0, 0, 0, 0, 1, 0, 1, 0]


def test_definition_applies_to_new_data_and_unseen_values_get_no_group() -> None:
    groups = Groups.intersectional({"sex": SEX, "race": RACE}, min_count=2)
    m = groups.membership({"sex": ["M", "F", "M"], "race": ["B", "W", "X"]}, dtype=DTYPE)
    assert m.tolist() == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_marginal_groups_overlap() -> None:
    groups = Groups.marginal({"sex": SEX, "race": RACE})
    assert groups.names == ("sex=F", "sex=M", "race=A", "race=B", "race=W")
    m = groups.membership({"sex": SEX, "race": RACE}, dtype=DTYPE)
    assert torch.equal(m.sum(dim=1), torch.full((8,), 2.0, dtype=DTYPE))


def test_membership_is_column_major_for_fast_group_sums() -> None:
    m = Groups.marginal({"sex": SEX}).membership({"sex": SEX}, dtype=DTYPE)
    assert m.T.is_contiguous()


def test_group_means_by_hand_and_empty_groups() -> None:
    m = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=DTYPE)
    v = torch.tensor([1.0, 3.0, 5.0], dtype=DTYPE)
    assert group_means(v, m).tolist() == [2.0, 5.0, 0.0]
    assert group_means(v, m, empty=-1.0).tolist() == [2.0, 5.0, -1.0]


@settings(max_examples=50, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    seed=st.integers(0, 10_000),
)
def test_group_means_match_a_loop(labels: list[int], seed: int) -> None:
    values = torch.randn(len(labels), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    groups = Groups.intersectional({"g": labels})
    m = groups.membership({"g": labels}, dtype=DTYPE)
    means = group_means(values, m)
    for k, name in enumerate(groups.names):
        value = int(name.split("=")[1])
        mask = np.asarray(labels) == value
        assert means[k].item() == pytest.approx(values.numpy()[mask].mean(), abs=1e-12)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="at least one protected attribute"):
        Groups.intersectional({})
    with pytest.raises(ShapeError, match="same length"):
        Groups.intersectional({"a": [1, 2], "b": [1]})
    with pytest.raises(ConfigError, match="min_count"):
        Groups.intersectional({"a": [1]}, min_count=0)
    groups = Groups.marginal({"sex": SEX})
    with pytest.raises(ConfigError, match="missing \\['sex'\\]"):
        groups.membership({"race": RACE})
    with pytest.raises(ShapeError, match="membership must have shape"):
        group_means(torch.zeros(3), torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="1-d"):
        group_means(torch.zeros(3, 1), torch.zeros(3, 2))
