"""Distributed runs: 2 CPU processes (gloo) hold identical multipliers and parameters at
every step, and match a single-process run on the same full batch to 1e-10.

The two worker processes are started once (``torch.multiprocessing.spawn``, rendezvous
through a file store) and run every scenario; each test checks one scenario's results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from constrain import (
    ConfigError,
    ConstrainedProblem,
    ConstraintValue,
    NonFiniteError,
    Solver,
    Variables,
    constraint,
)
from constrain.distributed import (
    DistributedReducer,
    ReplicaDivergenceError,
    assert_replicas_equal,
    shard_batch,
)

pytest.importorskip("sklearn")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

DTYPE = torch.float64
WORLD = 2
TOL = 1e-10  # |distributed - single process|, float64
STEPS_SVM = 200
STEPS_RATE = 150
STEPS_INDEXED = 40


# -- problems ---------------------------------------------------------------------------------
class RateConstrained(ConstrainedProblem):
    """Logistic regression whose positive-prediction rate is bounded: a *replicated*
    constraint (every rank estimates the same scalar on its shard), a non-differentiable
    value with a differentiable proxy, and a data-dependent mean objective."""

    rate: float = 0.3

    def objective(self, model: Any, batch: Any) -> Tensor:
        X, y = batch
        return F.binary_cross_entropy_with_logits(X @ model.w + model.b, y)

    @constraint("<=", rhs="rate")
    def positive_rate(self, model: Any, batch: Any) -> ConstraintValue:
        X, _ = batch
        logits = X @ model.w + model.b
        return ConstraintValue(
            (logits > 0).to(logits.dtype).mean(), proxy=torch.sigmoid(logits).mean()
        )


class PerSampleSVM(ConstrainedProblem):
    """Hard-margin SVM with one *per-sample* multiplier per point, trained on minibatches."""

    num_points: int = 69

    def objective(self, model: Any, batch: Any) -> Tensor:
        return 0.5 * model.w.pow(2).sum()

    @constraint(">=", rhs=1.0, size="num_points", per_sample=True)
    def margins(self, model: Any, batch: Any) -> ConstraintValue:
        X, y, idx = batch
        return ConstraintValue(y * (X @ model.w + model.b), indices=idx)


def _rate_data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(64, 3, generator=generator, dtype=DTYPE)
    y = (X[:, 0] + 0.5 * torch.randn(64, generator=generator, dtype=DTYPE) > -0.5).to(DTYPE)
    return X, y


def _iris() -> tuple[Tensor, Tensor]:
    from constrain_problems.iris_svm import load_iris_binary

    return load_iris_binary(DTYPE)


def _svm_config() -> Any:
    from constrain.runner import get_problem

    data = get_problem("iris-svm").default_config("nupi").model_dump()
    data["steps"] = STEPS_SVM
    from constrain import RunConfig

    return RunConfig.parse(data)


def _rate_solver() -> tuple[Solver, Variables]:
    model = Variables(w=torch.zeros(3, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    return Solver(RateConstrained(), model, optimizer, controller={"name": "gda", "lr": 0.5}), model


def _indexed_solver() -> tuple[Solver, Variables]:
    model = Variables(w=torch.zeros(4, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    solver = Solver(
        PerSampleSVM(),
        model,
        optimizer,
        controller={"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.5},
        order="dual_primal",
    )
    return solver, model


def _indexed_dataset() -> TensorDataset:
    X, y = _iris()
    return TensorDataset(X[:69], y[:69], torch.arange(69))


def _sampler(rank: int) -> DistributedSampler[Any]:
    return DistributedSampler(
        _indexed_dataset(), num_replicas=WORLD, rank=rank, shuffle=True, seed=0
    )


def _state(solver: Solver) -> list[Tensor]:
    store = solver.multiplier_store
    assert store is not None
    return [p.detach() for p in solver.model.parameters()] + [t for _, t in store.tensors()]


# -- the worker ----------------------------------------------------------------------------------
def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    trajectory: list[Tensor] = []  # parameters and multipliers after every step

    def check(solver: Solver, record: Any) -> None:
        trajectory.append(torch.cat([t.reshape(-1).to(DTYPE) for t in _state(solver)]))

    # 1. iris-svm, built as `constrain run` builds it.
    from constrain.runner import build_solver, get_problem

    setup, solver = build_solver(get_problem("iris-svm"), _svm_config())
    assert isinstance(solver.reducer, DistributedReducer)
    results["svm_shard_rows"] = int(setup.batch["X"].shape[0])
    solver.fit(None, STEPS_SVM, batch=setup.batch, callback=check)
    results["svm_multipliers"] = solver.multipliers["margins"]
    results["svm_params"] = torch.cat([p.detach().reshape(-1) for p in solver.model.parameters()])

    # 2. replicated (averaged) constraint with a proxy, mean objective.
    rate, model = _rate_solver()
    rate.fit(None, STEPS_RATE, batch=shard_batch(_rate_data(), rank, WORLD), callback=check)
    results["rate_multipliers"] = rate.multipliers["positive_rate"]
    results["rate_params"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    results["rate_objective"] = torch.tensor(rate.history.objective())

    # 3. per-sample multipliers with a shuffling DistributedSampler (69 points: padded).
    indexed, model = _indexed_solver()
    loader = DataLoader(_indexed_dataset(), batch_size=8, sampler=_sampler(rank))
    indexed.fit(loader, STEPS_INDEXED, callback=check)
    store_ = indexed.multiplier_store
    assert store_ is not None
    results["indexed_multipliers"] = store_.per_sample["margins"].clone()
    results["indexed_xi"] = indexed.indexed_state["margins"]["xi"].clone()
    results["indexed_params"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    # 4. a NaN in one rank's shard stops every rank at the same step, naming the constraint.
    X, y = _iris()
    X = X.clone()
    X[-1, 0] = float("nan")  # the last row belongs to the last rank only
    bad = build_solver(get_problem("iris-svm"), _svm_config())[1]
    try:
        bad.fit(None, 3, batch=shard_batch({"X": X, "y": y}, rank, WORLD))
        results["nan_error"] = ""
    except NonFiniteError as exc:
        results["nan_error"] = str(exc)

    # 5. a perturbed replica is detected on every rank.
    with torch.no_grad():
        if rank == 1:
            next(solver.model.parameters()).add_(1e-3)
    try:
        assert_replicas_equal(_state(solver))
        results["divergence_error"] = ""
    except ReplicaDivergenceError as exc:
        results["divergence_error"] = str(exc)

    # 6. a DDP model whose forward is called through model.module: detected at once.
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1).double())
    Xs, ys = shard_batch(_rate_data(), rank, WORLD)
    bypass = ConstrainedProblem(
        objective=lambda m, b: F.binary_cross_entropy_with_logits(m.module(b[0]).squeeze(1), b[1]),
    )
    ddp_solver = Solver(bypass, ddp, torch.optim.SGD(ddp.parameters(), lr=0.1))
    try:
        ddp_solver.fit(None, 2, batch=(Xs, ys))
        results["ddp_error"] = ""
    except ReplicaDivergenceError as exc:
        results["ddp_error"] = str(exc)

    # 7. the same sample drawn on both ranks counts once, with its mean: as in one process.
    dup, model = _indexed_solver()
    picks = torch.tensor([[0, 1, 2], [2, 3, 4]])[rank]  # sample 2 on both ranks
    dup.step((X[picks], y[picks], picks))
    results["duplicate_multipliers"] = dup.multipliers["margins"]

    # Every step of every scenario, compared across ranks at once (bitwise).
    assert_replicas_equal(trajectory, what="per-step parameters and multipliers")
    results["divergence_checks"] = len(trajectory)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run every scenario in 2 gloo processes; one result dict per rank."""
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _single_process_svm() -> tuple[Tensor, Tensor]:
    from constrain.runner import build_solver, get_problem

    setup, solver = build_solver(get_problem("iris-svm"), _svm_config())
    solver.fit(None, STEPS_SVM, batch=setup.batch)
    params = torch.cat([p.detach().reshape(-1) for p in solver.model.parameters()])
    return solver.multipliers["margins"], params


# -- tests ----------------------------------------------------------------------------------------
def test_ranks_hold_identical_state_at_every_step(ranks: list[dict[str, Any]]) -> None:
    """After every step of every scenario, parameters and multipliers are bitwise equal on
    both ranks (assert_replicas_equal raised otherwise), and final results agree."""
    expected_checks = STEPS_SVM + STEPS_RATE + STEPS_INDEXED
    for result in ranks:
        assert result["divergence_checks"] == expected_checks
    for key in (
        "svm_multipliers",
        "svm_params",
        "rate_multipliers",
        "rate_params",
        "indexed_multipliers",
        "indexed_xi",
        "indexed_params",
    ):
        assert torch.equal(ranks[0][key], ranks[1][key]), key


def test_sharded_dense_constraints_match_single_process(ranks: list[dict[str, Any]]) -> None:
    """iris-svm, each rank holding 35 of the 70 points (their 35 margin constraints): the
    all-gathered constraint vector and averaged gradients reproduce the full-batch run."""
    lam, params = _single_process_svm()
    assert [r["svm_shard_rows"] for r in ranks] == [35, 35]
    assert float(lam.abs().max()) > 0.1  # the run got somewhere
    for result in ranks:
        torch.testing.assert_close(result["svm_multipliers"], lam, rtol=0, atol=TOL)
        torch.testing.assert_close(result["svm_params"], params, rtol=0, atol=TOL)


def test_replicated_constraints_are_averaged(ranks: list[dict[str, Any]]) -> None:
    """A rate estimated on each half of the data (proxy for the gradient) equals the
    full-batch run: the multiplier sees the mean rate, the objective is the mean loss."""
    solver, model = _rate_solver()
    solver.fit(None, STEPS_RATE, batch=_rate_data())
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert float(solver.multipliers["positive_rate"].abs().max()) > 0  # constraint active
    for result in ranks:
        torch.testing.assert_close(
            result["rate_multipliers"], solver.multipliers["positive_rate"], rtol=0, atol=TOL
        )
        torch.testing.assert_close(result["rate_params"], params, rtol=0, atol=TOL)
        torch.testing.assert_close(
            result["rate_objective"], torch.tensor(solver.history.objective()), rtol=0, atol=TOL
        )


def test_per_sample_multipliers_with_distributed_sampler(ranks: list[dict[str, Any]]) -> None:
    """Each rank draws its own minibatch (DistributedSampler, reshuffled every epoch via
    set_epoch; 69 points padded to 70 by repeating one). The gathered (indices, values)
    give every rank the same updates, equal to one process stepping on the union batch
    with the padded duplicate removed."""
    samplers = [_sampler(r) for r in range(WORLD)]
    dataset = _indexed_dataset()
    batches = []
    epoch = 0
    while len(batches) < STEPS_INDEXED:
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            order = list(s)
            per_rank.append([order[k : k + 8] for k in range(0, len(order), 8)])
        for chunks in zip(*per_rank, strict=True):
            seen: list[int] = []
            for chunk in chunks:
                seen.extend(i for i in chunk if i not in seen)
            idx = torch.tensor(seen)
            batches.append(tuple(t[idx] for t in dataset.tensors))
        epoch += 1
    solver, model = _indexed_solver()
    solver.fit(batches[:STEPS_INDEXED], STEPS_INDEXED)
    store = solver.multiplier_store
    assert store is not None
    lam = store.per_sample["margins"]
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert int((lam > 0).sum()) > 0
    for result in ranks:
        torch.testing.assert_close(result["indexed_multipliers"], lam, rtol=0, atol=TOL)
        torch.testing.assert_close(
            result["indexed_xi"], solver.indexed_state["margins"]["xi"], rtol=0, atol=TOL
        )
        torch.testing.assert_close(result["indexed_params"], params, rtol=0, atol=TOL)


def test_nan_on_one_rank_stops_every_rank(ranks: list[dict[str, Any]]) -> None:
    """Only rank 1 sees the NaN, yet both ranks stop at step 0 naming the constraint
    (no rank hangs in a collective)."""
    for result in ranks:
        assert "constraint 'margins' is not finite at step 0" in result["nan_error"]


def test_divergence_is_detected(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert "ranks diverged" in result["divergence_error"]
        assert "differs between ranks by up to 0.001" in result["divergence_error"]


def test_ddp_forward_through_module_is_detected(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert "model.module" in result["ddp_error"], result["ddp_error"]


def test_duplicates_across_ranks_follow_the_single_process_rule(
    ranks: list[dict[str, Any]],
) -> None:
    single, _ = _indexed_solver()
    X, y = _iris()
    picks = torch.tensor([0, 1, 2, 2, 3, 4])
    single.step((X[picks], y[picks], picks))
    for result in ranks:
        torch.testing.assert_close(
            result["duplicate_multipliers"], single.multipliers["margins"], rtol=0, atol=1e-12
        )


def test_too_few_batches_for_the_ranks_is_refused() -> None:
    from constrain.distributed import shard_data

    with pytest.raises(ConfigError, match="fewer than the 2 ranks"):
        shard_data([("full", "batch")], 0, 2)
    strided = shard_data([1, 2, 3, 4, 5], 1, 2)
    assert strided is not None and list(strided) == [2, 4]  # the fifth batch is dropped


def test_reducer_needs_a_process_group() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is active in this process")
    with pytest.raises(ConfigError, match=r"needs an initialised torch\.distributed process group"):
        DistributedReducer()


def test_shard_batch_splits_rows_in_rank_order() -> None:
    X, y = torch.arange(14.0).reshape(7, 2), torch.arange(7.0)
    shards = [shard_batch((X, y), r, 3) for r in range(3)]
    assert [s[0].shape[0] for s in shards] == [3, 2, 2]
    assert torch.equal(torch.cat([s[1] for s in shards]), y)
    assert shard_batch(None, 0, 2) is None
    with pytest.raises(ConfigError, match=r"different first dimensions \[6, 7\]"):
        shard_batch((X, y[:6]), 0, 2)
    with pytest.raises(ConfigError, match="batch of 7 rows across 8 ranks"):
        shard_batch((X, y), 0, 8)
    with pytest.raises(ConfigError, match=r"Override ProblemSpec\.shard"):
        shard_batch("text", 0, 2)


@pytest.mark.slow
def test_torchrun_cli_matches_single_process(tmp_path: Path) -> None:
    """The issue's command: `torchrun --nproc_per_node=2 --no-python constrain run
    iris-svm --controller nupi --steps 2000 --json` (rank 0 alone prints) gives the
    single-process multipliers to within 1e-9."""
    bin_dir = Path(sys.executable).parent
    args = ["run", "iris-svm", "--controller", "nupi", "--steps", "2000", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [str(bin_dir / "constrain"), *args], capture_output=True, text=True, check=True, env=env
    )
    launched = subprocess.run(
        [
            str(bin_dir / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "--no-python",
            str(bin_dir / "constrain"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    lines = [line for line in launched.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, "only rank 0 prints"
    a, b = json.loads(single.stdout), json.loads(lines[0])
    assert a["steps"] == b["steps"] == 2000
    difference = max(abs(x - y) for x, y in zip(a["multipliers"], b["multipliers"], strict=True))
    assert difference <= 1e-9, difference


def test_collective_buffers_are_retained_until_the_backend_releases_them() -> None:
    """Tensors handed to a collective stay alive in Python until the backend's thread has
    dropped its reference (use count back to one); the exit hook then forgets them. This
    is what keeps a gloo worker from freeing a Python object while the interpreter
    finalises (the abort "terminate called without an active exception")."""
    from constrain import distributed as cd

    held = torch.ones(3)
    extra = held.view(3)  # stands in for the backend's reference: use count 2
    cd._retain(held)
    assert any(t is held for t in cd._IN_FLIGHT)
    cd._retain()  # pruning keeps a buffer the backend still holds
    assert any(t is held for t in cd._IN_FLIGHT)
    del extra
    cd._retain()  # ... and forgets it once released
    assert not any(t is held for t in cd._IN_FLIGHT)
    cd._retain(torch.zeros(2))
    cd._release_all(timeout_s=1.0)
    assert cd._IN_FLIGHT == []


_EXIT_PROBE = """
import os, torch, torch.distributed as dist
from constrain import distributed as cd
cd.init_from_env()
model = torch.nn.Linear(2, 1)
torch.optim.SGD(model.parameters(), lr=0.1).step()  # imports torch._dynamo lazily
dist.all_reduce(torch.ones(3))
cd._release_all()
cd._destroy()  # what the exit hook does
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(os.environ["PROBE_OUT"], "rank" + os.environ["RANK"]), "w") as f:
    f.write(" ".join(names))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux)")
def test_the_exit_hook_leaves_no_backend_thread(tmp_path: Path) -> None:
    """After init_from_env's exit hook the gloo threads are gone, so none can race the
    interpreter's finalisation (the abort at exit). torch._dynamo, imported lazily by an
    optimizer after the group exists, used to keep the group, and its threads, alive."""
    script = tmp_path / "probe.py"
    script.write_text(_EXIT_PROBE)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_OUT": str(tmp_path)}
    command = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = {r: (tmp_path / f"rank{r}").read_text().split() for r in (0, 1)}
    assert all(names and "gloo" not in " ".join(names) for names in threads.values()), threads


@pytest.mark.slow
def test_distributed_example_exits_cleanly_every_time() -> None:
    """`torchrun --standalone --nproc_per_node=2 examples/distributed_training.py`, 20
    times: every run prints the result and exits with status 0 (no abort at exit)."""
    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    command = [
        str(bin_dir / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        str(root / "examples" / "distributed_training.py"),
    ]
    outputs = set()
    for attempt in range(20):
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=300, cwd=root
        )
        assert done.returncode == 0, f"run {attempt}: {done.stderr[-3000:]}"
        assert "terminate called" not in done.stderr, f"run {attempt}: {done.stderr[-3000:]}"
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1 and next(iter(outputs)).startswith("world size 2")
