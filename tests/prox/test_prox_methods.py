"""The three weight-sharing methods agree; rounds, shapes, dtypes, devices, in-place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from constrain.prox import (
    WeightSharingStats,
    count_clusters,
    isotonic_regression,
    resolve_method,
    weight_sharing,
    weight_sharing_,
)
from constrain.prox._inputs import INPUT_KINDS, make_input, worst_case_strength
from constrain.prox._isotonic import divide_conquer_schedule

METHODS = ["sort_pava", "parallel_pav", "divide_conquer"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def agree(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, lam: float) -> None:
    scale = 1.0 + float(x.abs().max()) + lam
    eps = 1e-10 if x.dtype == torch.float64 else 1e-5
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=eps * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("d", [2, 3, 17, 64, 257, 1000])
def test_methods_agree(kind: str, d: int, dtype: torch.dtype, device: str) -> None:
    x, lam = make_input(kind, d, dtype=dtype, device=device, seed=d)
    outs = {m: weight_sharing(x, lam, m) for m in METHODS}
    for m in METHODS[1:]:
        agree(outs[m], outs["sort_pava"], x, lam)
    # equal values in one output are equal (same clusters) in the others, up to float32
    if dtype == torch.float64:
        counts = {m: count_clusters(o) for m, o in outs.items()}
        assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_methods_agree_on_many_random_strengths(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        d = int(torch.randint(1, 300, (1,), generator=gen))
        x = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype)
        if trial % 3 == 0:
            x = torch.round(x * 2) / 2  # ties
        lam = float(torch.rand(1, generator=gen)) * 10 ** float(
            torch.randint(-3, 3, (1,), generator=gen)
        )
        ref = weight_sharing(x, lam, "sort_pava")
        for m in METHODS[1:]:
            agree(weight_sharing(x, lam, m), ref, x, lam)


@pytest.mark.parametrize("probe_budget", [1, 2, 7, 64, 1 << 20])
def test_divide_conquer_any_probe_budget(probe_budget: int) -> None:
    for kind in INPUT_KINDS:
        x, lam = make_input(kind, 300, dtype=torch.float64, seed=1)
        ref = weight_sharing(x, lam, "sort_pava")
        out = weight_sharing(x, lam, "divide_conquer", probe_budget=probe_budget)
        agree(out, ref, x, lam)


def test_adversarial_isotonic_inputs() -> None:
    """Isotonic stage directly: worst case for parallel PAV, reversed, constant, sawtooth."""
    d = 150
    eps = 1e-3
    cases = {
        "sweep": torch.cat([torch.tensor([2 * eps * d * d]), eps * torch.arange(1, d)]),
        "sweep_right": torch.cat([eps * torch.arange(d - 1), torch.tensor([-2 * eps * d * d])]),
        "reversed": torch.arange(d, 0, -1, dtype=torch.float64),
        "constant": torch.ones(d, dtype=torch.float64),
        "sawtooth": (torch.arange(d) % 7).to(torch.float64) - torch.arange(d) * 0.01,
        "spikes": torch.where(torch.arange(d) % 10 == 0, 100.0, 0.0).to(torch.float64),
    }
    for name, z in cases.items():
        z = z.to(torch.float64)
        ref = isotonic_regression(z, "sort_pava")
        for m in METHODS[1:]:
            torch.testing.assert_close(isotonic_regression(z, m), ref, rtol=0, atol=1e-9, msg=name)


@pytest.mark.parametrize("d", [2, 10, 100, 300])
def test_parallel_pav_worst_case_needs_d_minus_1_rounds(d: int) -> None:
    x, lam = make_input("worst", d, dtype=torch.float64, seed=2)
    assert lam == worst_case_strength(d)
    stats = WeightSharingStats()
    w = weight_sharing(x, lam, "parallel_pav", stats=stats)
    assert stats.rounds == d - 1
    assert stats.clusters == 1  # everything swept into one cluster: the mean
    torch.testing.assert_close(w, torch.full_like(x, float(x.mean())), rtol=0, atol=1e-9 * d)
    # typical input: few rounds
    xr, lr = make_input("random", d, dtype=torch.float64, seed=2)
    weight_sharing(xr, lr, "parallel_pav", stats=stats)
    assert stats.rounds <= max(4, d // 10)


@pytest.mark.parametrize("d", [1000, 10_000])
def test_divide_conquer_rounds_do_not_depend_on_values(d: int) -> None:
    seen = set()
    for kind in INPUT_KINDS:
        for lam_scale in (0.0001, 1.0, 1000.0):
            x, lam = make_input(kind, d, dtype=torch.float32, seed=3)
            stats = WeightSharingStats()
            weight_sharing(x, lam * lam_scale, "divide_conquer", stats=stats)
            seen.add((stats.levels, stats.rounds, stats.scans, stats.padded))
    assert len(seen) == 1, seen
    levels, rounds, scans, padded = seen.pop()
    assert padded == 1 << (d - 1).bit_length() and levels == padded.bit_length() - 1
    assert scans == levels + 2
    schedule = divide_conquer_schedule(padded, 1 << 12)
    assert rounds == sum(r * (r + 1) + r + 1 for _, r in schedule)


def test_binary_search_depth_is_cubic_in_log_d() -> None:
    """probe_budget=1 is plain binary search: O(log^3 d) rounds in total."""
    for levels in range(1, 24):
        schedule = divide_conquer_schedule(1 << levels, 1)
        assert all(k == 1 for k, _ in schedule)
        assert [r for _, r in schedule] == list(range(levels))
        total = sum(r * (r + 1) + r + 1 for _, r in schedule)
        assert total <= levels**3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (1, 1, 7), (4, 1)])
def test_shape_kept_and_equal_to_flattened_prox(method: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out = weight_sharing(x, 0.7, method)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.reshape(-1), weight_sharing(x.reshape(-1), 0.7, method))


@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_input(method: str) -> None:
    base = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = base.t()
    assert not x.is_contiguous()
    out = weight_sharing(x, 1.3, method)
    torch.testing.assert_close(out, weight_sharing(x.contiguous(), 1.3, method))


@pytest.mark.parametrize("method", [*METHODS, "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_not_modified_and_output_is_new(method: str, dtype: torch.dtype) -> None:
    x = torch.randn(50, dtype=dtype, generator=torch.Generator().manual_seed(6))
    before = x.clone()
    out = weight_sharing(x, 2.0, method)
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr()
    out.add_(1.0)  # writing the output must not touch the input either
    assert torch.equal(x, before)
    for lam in (0.0,):
        copy = weight_sharing(x, lam, method)
        assert torch.equal(copy, x) and copy.data_ptr() != x.data_ptr()


def test_in_place_variant_modifies_and_returns_input() -> None:
    p = torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
    expected = weight_sharing(p, 0.9)
    ptr = p.data_ptr()
    result = weight_sharing_(p, 0.9)
    assert result is p and p.data_ptr() == ptr
    torch.testing.assert_close(p.detach(), expected)
    assert p.requires_grad


def test_requires_grad_input_gives_detached_output() -> None:
    x = torch.randn(10, requires_grad=True)
    out = weight_sharing(x, 0.5)
    assert not out.requires_grad


def test_float32_matches_float64_reference() -> None:
    for kind in INPUT_KINDS:
        x64, lam = make_input(kind, 2000, dtype=torch.float64, seed=7)
        x32 = x64.float()
        ref = weight_sharing(x32.double(), lam, "sort_pava").float()
        for m in METHODS:
            out = weight_sharing(x32, lam, m)
            assert out.dtype == torch.float32
            scale = 1.0 + float(x64.abs().max()) + lam
            torch.testing.assert_close(out, ref, rtol=0, atol=2e-6 * scale)


def test_stats_and_auto_resolution() -> None:
    assert resolve_method("auto", "cpu") == "sort_pava"
    assert resolve_method("auto", "cuda") == "divide_conquer"
    assert resolve_method("Divide-Conquer") == "divide_conquer"
    x, lam = make_input("random", 500, seed=8)
    stats = WeightSharingStats()
    out = weight_sharing(x, lam, stats=stats)
    assert stats.method == "sort_pava" and stats.d == 500
    assert stats.clusters == count_clusters(out)
    weight_sharing(x, 0.0, stats=stats)
    assert stats.method == "copy" and stats.clusters == count_clusters(x)


def test_count_clusters() -> None:
    assert count_clusters(torch.tensor([1.0, 2.0, 1.0, 3.0])) == 3
    assert count_clusters(torch.empty(0)) == 0
    x, lam = make_input("worst", 50, dtype=torch.float64)
    assert count_clusters(weight_sharing(x, lam)) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_cuda_matches_cpu(method: str) -> None:  # pragma: no cover - no GPU in CI
    for kind in INPUT_KINDS:
        x, lam = make_input(kind, 5000, dtype=torch.float32, seed=9)
        out = weight_sharing(x.cuda(), lam, method)
        assert out.device.type == "cuda"
        ref = weight_sharing(x, lam, "sort_pava")
        torch.testing.assert_close(
            out.cpu(), ref, rtol=0, atol=1e-5 * (1 + lam + float(x.abs().max()))
        )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "worst"])
def test_methods_agree_large(kind: str) -> None:
    x, lam = make_input(kind, 200_000, dtype=torch.float64, seed=10)
    ref = weight_sharing(x, lam, "sort_pava")
    agree(weight_sharing(x, lam, "divide_conquer"), ref, x, lam * 10)
    if kind == "random":
        agree(weight_sharing(x, lam, "parallel_pav"), ref, x, lam * 10)


def test_numpy_sort_matches_torch_sort() -> None:
    from constrain.prox._sort import sort_numpy

    gen = np.random.default_rng(11)
    for dtype in (np.float32, np.float64):
        x = gen.normal(size=1000).astype(dtype)
        x[::7] = x[3]  # ties
        x[5], x[6] = -0.0, 0.0
        x[7], x[8] = np.float32(3e38), -np.float32(3e38)
        vals, order = sort_numpy(x)
        np.testing.assert_array_equal(vals, np.sort(x))
        np.testing.assert_array_equal(x[order], vals)
        assert sorted(np.asarray(order).tolist()) == list(range(1000))
