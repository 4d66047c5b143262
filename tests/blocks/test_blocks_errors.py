"""Bad blocks fail when they are built, with messages naming the block, what was expected
and what was received."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from constrain import ConfigError, ShapeError, Variables, blocks

X3 = blocks.Variable("x", 3)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: X3 + blocks.Variable("y", 2), ShapeError, r"Add .*shapes \[\[3\], \[2\]\]"),
        (lambda: np.ones((2, 4)) @ X3, ShapeError, r"MatMul .*inner dimensions do not match"),
        (lambda: X3[5], ShapeError, r"Index on 'x' \(shape \[3\]\)"),
        (lambda: X3[0, 1], ShapeError, r"2 index parts for shape \[3\]"),
        (lambda: X3[[0.5, 1.0]], ShapeError, r"1-d integer sequences or boolean masks"),
        (lambda: blocks.quad_form(X3, np.eye(2)), ShapeError, r"vector of length 2"),
        (lambda: blocks.quad_form(X3, np.ones((3, 2))), ShapeError, r"must be square"),
        (
            lambda: blocks.quad_form(X3, -np.eye(3)),
            ConfigError,
            r"negative eigenvalue .* not convex",
        ),
        (lambda: blocks.quad_form(X3, np.triu(np.ones((3, 3)))), ConfigError, r"symmetric"),
        (lambda: blocks.weight_sharing(blocks.Variable("w", 1)), ShapeError, r"at least 2 entries"),
        (lambda: X3 * X3, ConfigError, r"both operands .* depend on variables"),
        (lambda: X3 @ X3, ConfigError, r"not affine"),
        (lambda: X3 / X3, ConfigError, r"divided by a non-zero number"),
        (lambda: X3 / 0, ConfigError, r"divided by a non-zero number"),
        (lambda: blocks.Variable("not a name", 3), ConfigError, r"Python identifier"),
        (lambda: blocks.Variable("x", (2, 3, 4)), ShapeError, r"at most 2 positive dimensions"),
        (lambda: blocks.Variable("x", 0), ShapeError, r"positive dimensions"),
        (lambda: blocks.Constant([1.0, float("nan")]), ConfigError, r"must be finite"),
        (lambda: blocks.Constant("abc"), ConfigError, r"expected a number, array or tensor"),
        (lambda: X3 + "abc", ConfigError, r"expected a number, array or tensor"),
        (lambda: blocks.norm(X3, 3), ConfigError, r"(?s)block Norm.*p must be 1, 2 or 'inf'"),
        (lambda: blocks.sum(X3, axis=2), ShapeError, r"Sum over axis 2 of 'x'"),
        (
            lambda: X3 + blocks.Variable("x", 2) @ np.ones((2, 3)),
            ShapeError,
            r"variable 'x' is used with shapes \[3\] and \[2\]",
        ),
        (lambda: blocks.bounds(X3), ConfigError, r"give lower=, upper= or both"),
        (
            lambda: blocks.bounds(X3, lower=[0, 2, 0], upper=1.0),
            ConfigError,
            r"lower > upper at entries \[1\]",
        ),
    ],
)
def test_bad_blocks_fail_at_construction(build: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        expr = build()  # type: ignore[operator]
        if isinstance(expr, blocks.Expression):
            expr.variables()


def test_torch_evaluation_names_missing_or_misshapen_variables_and_data() -> None:
    expr = blocks.sum_squares(X3)
    with pytest.raises(
        ConfigError, match=r"block variable 'x' is not a tensor attribute .* \['y'\]"
    ):
        expr(Variables(y=torch.zeros(3)))
    with pytest.raises(ShapeError, match=r"declared with shape \[3\] but model.x has shape \[4\]"):
        expr(Variables(x=torch.zeros(4)))
    data = blocks.Data("X", (5, 3)) @ X3
    model = SimpleNamespace(x=torch.zeros(3))
    with pytest.raises(
        ConfigError, match=r"block data 'X': the batch must be a mapping with key 'X'"
    ):
        data(model, None)
    with pytest.raises(
        ShapeError, match=r"declared with shape \[5, 3\] .* batch holds shape \[5, 2\]"
    ):
        data(model, {"X": torch.zeros(5, 2)})
    # A minibatch (fewer rows) is fine in torch.
    assert data(model, {"X": torch.ones(2, 3)}).shape == (2,)


def test_cvxpy_emission_names_missing_data_and_blocks_without_a_convex_form() -> None:
    pytest.importorskip("cvxpy")
    data = blocks.Data("X", (5, 3)) @ X3
    with pytest.raises(ConfigError, match=r"block data 'X' is missing"):
        data.cvxpy()
    with pytest.raises(ShapeError, match=r"full data given to CVXPY has shape \[4, 3\]"):
        data.cvxpy(data={"X": np.zeros((4, 3))})
    rate = blocks.positive_rate(X3)
    with pytest.raises(ConfigError, match=r"positive_rate\(x\) has no convex CVXPY form"):
        rate.cvxpy()
    # ... but it evaluates in torch (without a gradient).
    value = rate(SimpleNamespace(x=torch.tensor([1.0, -1.0, 2.0], requires_grad=True)))
    assert float(value) == pytest.approx(2 / 3) and not value.requires_grad


def test_labels_read_like_formulas() -> None:
    c = np.ones(3)
    expr = 0.5 * blocks.sum_squares(X3 - c) + blocks.norm1(X3[0:2]) - blocks.mean(c * X3)
    assert expr.label() == "0.5*sum_squares(x - const[3]) + norm1(x[0:2]) - mean(const[3]*x)"
    assert str(blocks.squared_norm(X3, "inf")) == "norm_inf(x)^2"
    assert expr.shape == () and (c @ X3).shape == ()


def test_blocks_are_immutable_and_compare_by_identity() -> None:
    expr = blocks.sum(X3)
    with pytest.raises(Exception, match="frozen"):
        expr.arg = X3  # type: ignore[misc]
    assert expr == expr and expr != blocks.sum(X3)
    assert len({expr, blocks.sum(X3)}) == 2
