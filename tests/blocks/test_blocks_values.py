"""Every block's torch value equals its CVXPY value at random points (and so do random
compositions of blocks); smooth blocks pass torch's numerical gradient check."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from constrain import blocks

cp = pytest.importorskip("cvxpy")

FLOATS = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
SETTINGS = settings(max_examples=30, deadline=None)


def values_agree(
    expr: blocks.Expression, point: dict[str, np.ndarray], data: dict[str, np.ndarray] | None = None
) -> None:
    """torch value at ``point`` == CVXPY value with the variables set to ``point``."""
    model = SimpleNamespace(**{n: torch.tensor(v, dtype=torch.float64) for n, v in point.items()})
    batch = None if data is None else {k: torch.tensor(v) for k, v in data.items()}
    ours = expr(model, batch).detach().numpy()
    variables = {n: cp.Variable(v.shape, name=n) for n, v in point.items()}
    emitted = expr.cvxpy(variables, data)
    for n, v in point.items():
        variables[n].value = v
    theirs = np.asarray(emitted.value if hasattr(emitted, "value") else emitted, dtype=np.float64)
    assert ours.shape == expr.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def vectors(low: int = 1, high: int = 6) -> st.SearchStrategy[np.ndarray]:
    return st.integers(low, high).flatmap(lambda k: arrays(np.float64, k, elements=FLOATS))


UNARY: dict[str, Callable[[blocks.Expression], blocks.Expression]] = {
    "sum": blocks.sum,
    "mean": blocks.mean,
    "sum_squares": blocks.sum_squares,
    "square": blocks.square,
    "norm1": blocks.norm1,
    "norm2": blocks.norm2,
    "norm_inf": blocks.norm_inf,
    "squared_norm1": lambda x: blocks.squared_norm(x, 1),
    "squared_norm2": lambda x: blocks.squared_norm(x, 2),
    "squared_norm_inf": lambda x: blocks.squared_norm(x, "inf"),
    "logistic_loss": blocks.logistic_loss,
    "hinge_loss": blocks.hinge_loss,
    "max": blocks.max,
    "pos": blocks.pos,
    "abs": blocks.abs,
    "negate": lambda x: -x,
    "scale": lambda x: 2.5 * x,
    "shift": lambda x: x - 1.5,
    "index_first": lambda x: x[0],
    "index_reversed": lambda x: x[::-1],
    "index_last": lambda x: x[-1],
    "index_mask": lambda x: x[np.arange(x.size) % 2 == 0],
    "index_list": lambda x: x[[0, 0, x.size - 1]],
}


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(x=vectors())
def test_unary_block_torch_equals_cvxpy(name: str, x: np.ndarray) -> None:
    values_agree(UNARY[name](blocks.Variable("x", x.shape)), {"x": x})


@SETTINGS
@given(x=vectors(2, 8))
def test_weight_sharing_torch_equals_cvxpy_and_the_pairwise_definition(x: np.ndarray) -> None:
    expr = blocks.weight_sharing(blocks.Variable("x", x.shape))
    values_agree(expr, {"x": x})
    d = x.size
    pairwise = sum(abs(x[i] - x[j]) for i in range(d) for j in range(i)) / (d - 1)
    model = SimpleNamespace(x=torch.tensor(x))
    assert float(expr(model)) == pytest.approx(pairwise, rel=1e-12, abs=1e-12)


@SETTINGS
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(1, 5))
def test_affine_and_matrix_blocks_torch_equal_cvxpy(data: st.DataObject, m: int, n: int) -> None:
    x = data.draw(arrays(np.float64, n, elements=FLOATS))
    A = data.draw(arrays(np.float64, (m, n), elements=FLOATS))
    b = data.draw(arrays(np.float64, m, elements=FLOATS))
    c = data.draw(arrays(np.float64, n, elements=FLOATS))
    X = blocks.Variable("x", n)
    values_agree(blocks.affine(A, X, b), {"x": x})
    values_agree(A @ X - b, {"x": x})
    values_agree(c @ X, {"x": x})  # dot product with a constant vector
    values_agree(c * X, {"x": x})  # elementwise product with a constant vector
    values_agree(X * c + X, {"x": x})
    root = np.random.default_rng(m * 10 + n).standard_normal((n, n))
    values_agree(blocks.quad_form(X, root @ root.T), {"x": x})


@SETTINGS
@given(data=st.data(), m=st.integers(1, 4), n=st.integers(1, 4))
def test_matrix_variables_reduce_and_index_like_numpy(data: st.DataObject, m: int, n: int) -> None:
    W = data.draw(arrays(np.float64, (m, n), elements=FLOATS))
    V = blocks.Variable("W", (m, n))
    for expr in (
        blocks.sum(V, axis=0),
        blocks.mean(V, axis=1),
        blocks.sum(V),
        V[0],
        V[:, 0],
        blocks.norm1(V),
        blocks.norm2(V),
        blocks.norm_inf(V),
        blocks.sum_squares(V),
        blocks.max(V),
    ):
        values_agree(expr, {"W": W})
    if m * n >= 2:
        values_agree(blocks.weight_sharing(V), {"W": W})


@SETTINGS
@given(data=st.data(), samples=st.integers(1, 6), features=st.integers(1, 4))
def test_data_blocks_read_the_batch_in_torch_and_the_data_in_cvxpy(
    data: st.DataObject, samples: int, features: int
) -> None:
    X = data.draw(arrays(np.float64, (samples, features), elements=FLOATS))
    y = data.draw(arrays(np.float64, samples, elements=st.sampled_from([-1.0, 1.0])))
    w = data.draw(arrays(np.float64, features, elements=FLOATS))
    Xd, yd = blocks.Data("X", X.shape), blocks.Data("y", y.shape)
    W, b = blocks.Variable("w", features), blocks.Variable("b")
    margins = yd * (Xd @ W + b)
    point = {"w": w, "b": np.array(0.3)}
    for expr in (margins, blocks.mean(blocks.logistic_loss(margins)), blocks.hinge_loss(margins)):
        values_agree(expr, point, {"X": X, "y": y})


def _random_vector_expr(draw: Any, x: blocks.Expression, n: int, depth: int) -> blocks.Expression:
    """A random expression of shape (n,) over x."""
    if depth == 0:
        return x
    inner = _random_vector_expr(draw, x, n, depth - 1)
    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    kind = draw(
        st.sampled_from(
            [
                "add",
                "scale",
                "matmul",
                "multiply",
                "pos",
                "abs",
                "square",
                "logistic",
                "hinge",
                "permute",
                "offset",
            ]
        )
    )
    if kind == "add":
        return inner + _random_vector_expr(draw, x, n, depth - 1)
    if kind == "scale":
        return float(rng.uniform(-2, 2)) * inner
    if kind == "matmul":
        return rng.standard_normal((n, n)) @ inner
    if kind == "multiply":
        return rng.standard_normal(n) * inner
    if kind == "permute":
        return inner[rng.permutation(n).tolist()]
    if kind == "offset":
        return inner - rng.standard_normal(n)
    return {
        "pos": blocks.pos,
        "abs": blocks.abs,
        "square": blocks.square,
        "logistic": blocks.logistic_loss,
        "hinge": blocks.hinge_loss,
    }[kind](inner)


@st.composite
def compositions(draw: Any) -> tuple[blocks.Expression, np.ndarray]:
    n = draw(st.integers(2, 5))
    x = blocks.Variable("x", n)
    vector = _random_vector_expr(draw, x, n, draw(st.integers(0, 3)))
    reduce = draw(
        st.sampled_from(
            [
                blocks.sum,
                blocks.mean,
                blocks.norm1,
                blocks.norm2,
                blocks.norm_inf,
                blocks.sum_squares,
                blocks.max,
                blocks.weight_sharing,
            ]
        )
    )
    scalar = reduce(vector)
    if draw(st.booleans()):
        scalar = scalar + 0.5 * blocks.sum_squares(x) - x[0]
    return scalar, draw(arrays(np.float64, n, elements=FLOATS))


@settings(max_examples=60, deadline=None)
@given(case=compositions())
def test_random_compositions_torch_equal_cvxpy(case: tuple[blocks.Expression, np.ndarray]) -> None:
    expr, x = case
    values_agree(expr, {"x": x})


SMOOTH: dict[str, Callable[[blocks.Expression], blocks.Expression]] = {
    "affine": lambda x: blocks.affine(np.arange(6.0).reshape(2, 3), x, [1.0, -1.0]),
    "quad_form": lambda x: blocks.quad_form(x, np.diag([1.0, 2.0, 3.0]) + 0.5),
    "sum_squares": blocks.sum_squares,
    "squared_norm2": lambda x: blocks.squared_norm(x, 2),
    "square": blocks.square,
    "logistic_loss": blocks.logistic_loss,
    "mean_logistic": lambda x: blocks.mean(blocks.logistic_loss(2.0 * x - 1.0)),
}


@pytest.mark.parametrize("name", [*sorted(SMOOTH), "norm2_away_from_zero"])
def test_smooth_blocks_pass_gradcheck(name: str) -> None:
    if name == "norm2_away_from_zero":  # differentiable except at 0, so not flagged smooth
        expr = blocks.norm2(blocks.Variable("x", 3))
        assert not expr.is_smooth()
    else:
        expr = SMOOTH[name](blocks.Variable("x", 3))
        assert expr.is_smooth()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return expr(SimpleNamespace(x=x))

    x = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "make",
    [
        blocks.norm1,
        blocks.hinge_loss,
        blocks.max,
        blocks.pos,
        blocks.abs,
        blocks.weight_sharing,
        blocks.norm_inf,
    ],
)
def test_kinked_blocks_say_they_are_not_smooth(make: Callable[[Any], blocks.Expression]) -> None:
    assert not make(blocks.Variable("x", 3)).is_smooth()
    assert not (
        blocks.sum_squares(blocks.Variable("x", 3)) + make(blocks.Variable("x", 3))
    ).is_smooth()


def test_constants_follow_the_model_dtype_and_logistic_is_exact_for_large_margins() -> None:
    x = blocks.Variable("x", 2)
    expr = blocks.logistic_loss(x) + np.array([1.0, 2.0])
    value = expr(SimpleNamespace(x=torch.tensor([40.0, -40.0], dtype=torch.float32)))
    assert value.dtype == torch.float32
    exact = blocks.logistic_loss(x)(
        SimpleNamespace(x=torch.tensor([30.0, -800.0], dtype=torch.float64))
    )
    np.testing.assert_allclose(exact.numpy(), [np.log1p(np.exp(-30.0)), 800.0], rtol=1e-15)
