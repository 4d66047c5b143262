"""torch.distributed support: identical multipliers on every rank.

Launch a run with ``torchrun --nproc_per_node N`` (see ``docs/distributed.md``). Each rank
evaluates the problem on its own shard of the data; :class:`DistributedReducer` then makes
every rank see the constraint values of the *whole* data before the multiplier update, and
averages the primal gradients, so that parameters and multipliers stay identical on all
ranks and equal (to float rounding) to a single-process run on the full batch.

How each part of one evaluation is combined over ``W`` ranks (``r`` = this rank):

* **Objective** ``f_r``: an estimate of the full objective (e.g. a mean loss over the
  shard). Gradients are averaged, ``grad = (1/W) sum_r grad f_r``, and the recorded value
  is ``(1/W) sum_r f_r``. Exact for equal-sized shards or data-independent objectives.
* **Dense constraint group, replicated** (every rank returns the whole group, e.g. a rate
  estimated on its shard): the value is the mean ``g = (1/W) sum_r g_r``; the gradient of
  the primal loss reaches ``g_r`` on its own rank and is averaged with the others.
* **Dense constraint group, sharded** (its entries belong to data points, e.g. one margin
  per training point, split across ranks): the value is the concatenation
  ``g = [g_0, ..., g_{W-1}]`` in rank order (an all-gather); rank ``r`` back-propagates
  through its own slice only, with the gradient scaled by ``W`` so that the average over
  ranks is the full-batch gradient ``sum_r J_r^T dL/dg_r``. Every formulation's loss is a
  sum of per-entry terms, so this is exact for all of them.
* **Per-sample (indexed) groups**: each rank's observed ``(indices, values)`` are
  all-gathered, so every rank checks the same values and applies the same multiplier
  updates to the same entries (works with ``DistributedSampler``; a sample that several
  ranks drew, as ``DistributedSampler`` pads, counts once with the mean of its values).
  The primal terms are sums over
  the observed samples, so their gradients are scaled by ``W`` like sharded groups.

Everything is combined in :meth:`DistributedReducer.reduce_state`, right after
``evaluate()``: the solver then stacks, checks for NaN/Inf, updates multipliers and records
exactly as in one process, on values that are bitwise identical on every rank (sums over
ranks are taken in rank order on every rank). One all-gather per evaluation (plus one for
sizes and one for indices when there are per-sample groups) and one all-reduce of the
gradients per step.

Which dense groups are sharded is decided once, at the first evaluation: with
``sharded="auto"`` a group is sharded when it declares ``size=`` and the sizes returned by
the ranks add up to it (and differ from it); otherwise it must have the same size on every
rank and is treated as replicated. Pass ``sharded=[names]`` to decide explicitly.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._errors import ConfigError, ConstrainError, ShapeError, describe
from .problem import ConstrainedProblem, ConstraintValue, ProblemState, as_constraint_value

__all__ = [
    "DistributedReducer",
    "ReplicaDivergenceError",
    "assert_replicas_equal",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "launched_distributed",
    "rank",
    "shard_batch",
    "shard_data",
    "world_size",
]

logger = logging.getLogger("constrain")


class ReplicaDivergenceError(ConstrainError, RuntimeError):
    """Parameters or multipliers differ between ranks (they must stay identical)."""


# -- process group ------------------------------------------------------------------------
def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the rank that prints and writes files."""
    return rank() == 0


def launched_distributed() -> bool:
    """True when the environment describes a multi-process launch (``WORLD_SIZE > 1``, as
    set by ``torchrun``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


# -- buffers handed to collectives ------------------------------------------------------------
# A gloo collective is run by one of the backend's worker threads, and the work object that
# holds the tensors is released on that thread, a moment after the caller has been told the
# collective finished. If the caller's Python tensor is gone by then, the worker drops the
# last reference and must take the GIL to free the Python object; once the interpreter is
# finalising, taking the GIL ends the thread inside a destructor and the process aborts
# ("terminate called without an active exception"). So every tensor handed to a collective
# is private to this module (nothing else holds a view of it) and stays alive here until the
# backend has let go of it (its TensorImpl use count is back to one); at exit, the process
# waits for that before the interpreter finalises. (The exit hook of init_from_env then
# destroys the group; that joins the backend's threads only if nothing else holds the
# group, which is why init_from_env imports torch._dynamo before creating it.)
_IN_FLIGHT: list[Tensor] = []
_release_registered = False


def _retain(*buffers: Tensor) -> None:
    """Keep ``buffers`` (private tensors just handed to a collective) alive until the
    communication backend has released them; forget those it has already released."""
    global _release_registered
    _IN_FLIGHT[:] = [t for t in _IN_FLIGHT if _held_elsewhere(t)]
    _IN_FLIGHT.extend(buffers)
    if not _release_registered:
        atexit.register(_release_all)
        _release_registered = True


def _held_elsewhere(tensor: Tensor) -> bool:
    """True while something besides this Python object holds the tensor (its TensorImpl
    use count is above one)."""
    count: int = tensor._use_count()  # type: ignore[attr-defined]
    return count > 1


def _release_all(timeout_s: float = 30.0) -> None:
    """Wait (GIL released) until the backend holds none of the retained buffers, then drop
    them. Runs at exit, before the interpreter finalises and before the process group is
    destroyed (atexit runs handlers in reverse order of registration)."""
    deadline = time.monotonic() + timeout_s
    while any(_held_elsewhere(t) for t in _IN_FLIGHT) and time.monotonic() < deadline:
        time.sleep(0.001)
    _IN_FLIGHT.clear()


def __getattr__(name: str) -> Any:
    """``shard_setup`` moved to :func:`constrain.runner.shard_setup` (kept here for one
    release; the runner is the layer that knows :class:`~constrain.runner.Setup`)."""
    if name == "shard_setup":
        import importlib
        import warnings

        warnings.warn(
            "constrain.distributed.shard_setup moved to constrain.runner.shard_setup; the "
            "old path goes away in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("constrain.runner").shard_setup
    raise AttributeError(f"module 'constrain.distributed' has no attribute {name!r}")


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> tuple[int, int]:
    """Initialise the default process group from the ``torchrun`` environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``env://``
    rendezvous). Does nothing if a group is already initialised or ``WORLD_SIZE <= 1``.

    Args:
        backend: ``"gloo"`` (CPU tensors; the default), ``"nccl"`` (CUDA tensors) or
            ``None`` to read ``CONSTRAIN_DIST_BACKEND`` (default ``"gloo"``).
        timeout_s: Collective timeout in seconds (``None``: ``CONSTRAIN_DIST_TIMEOUT`` or
            torch's default). A rank that fails makes the others wait this long.

    Returns:
        ``(rank, world_size)``.

    Raises:
        ConfigError: If ``WORLD_SIZE > 1`` but the rendezvous variables are missing or
            malformed.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not launched_distributed():
        return 0, 1
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed run but the "
            f"environment lacks {missing}; launch with torchrun (which sets RANK, "
            "MASTER_ADDR and MASTER_PORT) or set them yourself."
        )
    chosen = backend or os.environ.get("CONSTRAIN_DIST_BACKEND") or "gloo"
    timeout: timedelta | None = None
    raw_timeout = timeout_s if timeout_s is not None else os.environ.get("CONSTRAIN_DIST_TIMEOUT")
    if raw_timeout is not None:
        try:
            timeout = timedelta(seconds=float(raw_timeout))
        except ValueError:
            raise ConfigError(
                f"CONSTRAIN_DIST_TIMEOUT must be a number of seconds; got {raw_timeout!r}."
            ) from None
    # torch._dynamo (imported lazily, e.g. by the first torch.optim optimizer) keeps a
    # reference to the process group that exists when it is imported; then
    # destroy_process_group() at exit cannot free the group, its gloo threads outlive the
    # exit hooks and race the interpreter's finalisation (the abort "terminate called
    # without an active exception"). Imported before the group exists, it holds none.
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend=chosen, init_method="env://", timeout=timeout)
    atexit.register(_destroy)
    return dist.get_rank(), dist.get_world_size()


# -- sharding the data ----------------------------------------------------------------------
def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s contiguous shard of a full batch (``torch.tensor_split`` along dim 0).

    ``None`` stays ``None`` (problems without data are replicated). A tensor, or a tuple,
    list or mapping of tensors with one common first dimension ``n``, is split into
    ``world_size`` contiguous parts whose sizes differ by at most one; concatenating the
    shards in rank order gives back the batch, which is the order in which sharded
    constraint groups are reassembled.

    Raises:
        ConfigError: For a batch of another kind, tensors of different lengths, or fewer
            rows than ranks. Override :meth:`constrain.ProblemSpec.shard` for such data.
    """
    if batch is None:
        return None
    if isinstance(batch, Tensor):
        tensors: list[Tensor] = [batch]
    elif isinstance(batch, (tuple, list)):
        tensors = list(batch)
    elif isinstance(batch, Mapping):
        tensors = list(batch.values())
    else:
        raise ConfigError(
            f"cannot shard a batch of type {type(batch).__name__} across {world_size} ranks: "
            "expected a tensor or a tuple/list/dict of tensors with a common first dimension. "
            "Override ProblemSpec.shard(setup, rank, world_size) for this problem."
        )
    if not all(isinstance(t, Tensor) and t.dim() >= 1 for t in tensors) or not tensors:
        raise ConfigError(
            f"cannot shard the batch: every element must be a tensor with at least one "
            f"dimension; got {[describe(t) for t in tensors][:4]}. Override ProblemSpec.shard."
        )
    lengths = {t.shape[0] for t in tensors}
    if len(lengths) != 1:
        raise ConfigError(
            f"cannot shard the batch: its tensors have different first dimensions "
            f"{sorted(lengths)}; expected one common number of rows."
        )
    (n,) = lengths
    if n < world_size:
        raise ConfigError(
            f"cannot shard a batch of {n} rows across {world_size} ranks: every rank needs at "
            f"least one row; use at most {n} processes."
        )
    if n % world_size and rank == 0:
        logger.warning(
            "the batch has %d rows, not a multiple of %d ranks: shards differ by one row and "
            "a data-dependent mean objective is averaged with equal rank weights",
            n,
            world_size,
        )
    parts = [t.tensor_split(world_size)[rank] for t in tensors]
    if isinstance(batch, Tensor):
        return parts[0]
    if isinstance(batch, Mapping):
        return dict(zip(batch.keys(), parts, strict=True))
    return type(batch)(parts)


class _Strided:
    """Batches ``rank, rank + W, rank + 2W, ...`` of a re-iterable data source."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int) -> None:
        self.data = data
        self.rank = rank
        self.world_size = world_size

    @property
    def generator(self) -> Any:
        return getattr(self.data, "generator", None)

    def set_epoch(self, epoch: int) -> None:
        from ._resume import _set_epoch

        _set_epoch(self.data, epoch)

    def __iter__(self) -> Iterator[Any]:
        usable = _usable_batches(self.data, self.world_size)
        for k, item in enumerate(self.data):
            if usable is not None and k >= usable:
                break  # every rank takes the same number of batches per pass
            if k % self.world_size == self.rank:
                yield item


def _usable_batches(data: Iterable[Any], world_size: int) -> int | None:
    """Batches per pass that split evenly over the ranks (``None``: length unknown)."""
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
    return (n // world_size) * world_size


def shard_data(data: Iterable[Any] | None, rank: int, world_size: int) -> Iterable[Any] | None:
    """Rank ``rank``'s share of a minibatch data source.

    A ``DataLoader`` whose sampler is already a ``DistributedSampler`` is returned as is.
    Anything else is strided: rank ``r`` takes batches ``r, r + W, r + 2W, ...`` of every
    pass, so one distributed step consumes ``W`` consecutive batches; when the number of
    batches is known, the last ``n mod W`` of a pass are dropped so that every rank takes
    the same number. For large data, build the loader with ``DistributedSampler`` instead
    (each rank then only loads its share).

    Raises:
        ConfigError: If a source of known length has fewer batches than ranks.
    """
    if data is None:
        return None
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(getattr(data, "sampler", None), DistributedSampler):
        return data
    usable = _usable_batches(data, world_size)
    if usable == 0:
        raise ConfigError(
            f"the data source yields {len(data)} batch(es) per pass, fewer than the "  # type: ignore[arg-type]
            f"{world_size} ranks: some ranks would get none. Pass one full batch as "
            "batch= (it is split by rows), use a DataLoader with a DistributedSampler, or "
            "give at least one batch per rank."
        )
    return _Strided(data, rank, world_size)


# -- reduction --------------------------------------------------------------------------------
class _Substitute(torch.autograd.Function):
    """Forward: return ``value`` (detached, in ``local``'s dtype). Backward: send the
    incoming gradient, times ``scale``, to ``local``."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, value: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return value.detach().to(local.dtype).clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad * ctx.scale, None, None


def _substitute(local: Tensor, value: Tensor, scale: float) -> Tensor:
    out: Tensor = _Substitute.apply(local, value, scale)  # type: ignore[no-untyped-call]
    return out


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How each group is combined, fixed at the first evaluation.

    Attributes:
        dense: Names of the dense groups, in declaration order.
        sizes: ``sizes[k][r]``: entries of dense group ``k`` on rank ``r``.
        sharded: Whether dense group ``k`` is split across ranks (else replicated).
        dense_proxy: Whether dense group ``k`` carries a proxy.
        indexed: Names of the per-sample groups.
        indexed_proxy: Whether per-sample group ``k`` carries a proxy.
    """

    dense: tuple[str, ...]
    sizes: tuple[tuple[int, ...], ...]
    sharded: tuple[bool, ...]
    dense_proxy: tuple[bool, ...]
    indexed: tuple[str, ...]
    indexed_proxy: tuple[bool, ...]


class DistributedReducer:
    """Combines evaluations across ``torch.distributed`` ranks (see the module docstring).

    The solver calls :meth:`reduce_state` on every evaluation (which makes objective,
    dense and per-sample constraint values global, identical on every rank) and
    :meth:`reduce_gradients` after every ``backward()``. All ranks must make these calls in
    the same order: they are collectives. Per evaluation: one all-reduce (objective and
    replicated groups), one all-gather (sharded and per-sample values), plus one all-gather
    of sizes and one of indices when the problem has per-sample groups; per backward one
    all-reduce of the gradients.

    Args:
        group: Process group (default: the default group).
        sharded: ``"auto"`` or the names of the dense constraint groups whose entries are
            split across ranks (all others are replicated and averaged).
        reduce_gradients: Average primal gradients across ranks. Models wrapped in
            ``DistributedDataParallel`` (which averages them itself) are detected and
            skipped.

    Raises:
        ConfigError: If torch.distributed is not initialised or ``sharded`` is malformed.
    """

    def __init__(
        self,
        group: Any = None,
        *,
        sharded: Literal["auto"] | Collection[str] = "auto",
        reduce_gradients: bool = True,
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "DistributedReducer needs an initialised torch.distributed process group; "
                "launch with torchrun and call constrain.distributed.init_from_env() first."
            )
        if sharded != "auto" and (isinstance(sharded, str) or not isinstance(sharded, Collection)):
            raise ConfigError(
                f"sharded must be 'auto' or a collection of constraint names; got {sharded!r}."
            )
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.sharded: Literal["auto"] | frozenset[str] = (
            "auto" if sharded == "auto" else frozenset(sharded)
        )
        self.average_gradients = reduce_gradients
        self._plan: _Plan | None = None

    # -- collectives ----------------------------------------------------------------------
    def _all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (same shape on every rank), in rank order."""
        send = tensor.detach().clone(memory_format=torch.contiguous_format)
        parts = [torch.empty_like(send) for _ in range(self.world_size)]
        dist.all_gather(parts, send, group=self.group)
        _retain(send, *parts)
        return [p.clone() for p in parts]

    def _gather_padded(self, tensor: Tensor, lengths: list[int]) -> list[Tensor]:
        """All-gather 1-d tensors whose lengths (known on every rank) differ by rank."""
        padded = tensor.new_zeros(max(lengths))
        padded[: tensor.numel()] = tensor
        return [p[:k] for p, k in zip(self._all_gather(padded), lengths, strict=True)]

    # -- planning -------------------------------------------------------------------------
    def _make_plan(
        self,
        problem: ConstrainedProblem,
        values: dict[str, ConstraintValue],
        device: torch.device,
    ) -> _Plan:
        dense = [c for c in problem.all_constraints if not c.per_sample]
        indexed = [c for c in problem.all_constraints if c.per_sample]
        if self.sharded != "auto":
            unknown = sorted(set(self.sharded) - {c.name for c in dense})
            if unknown:
                raise ConfigError(
                    f"DistributedReducer(sharded=...) names {unknown}, which are not dense "
                    f"constraint groups of {type(problem).__name__}; known: "
                    f"{[c.name for c in dense]}."
                )
        local = torch.tensor(
            [values[c.name].value.numel() for c in dense]
            + [int(values[c.name].proxy is not None) for c in dense + indexed],
            dtype=torch.int64,
            device=device,
        )
        table = torch.stack(self._all_gather(local)).tolist()  # table[rank][column]
        ranks = range(self.world_size)
        g = len(dense)
        proxy_flags: list[bool] = []
        for k, c in enumerate(dense + indexed):
            flags = {bool(table[r][g + k]) for r in ranks}
            if len(flags) != 1:
                raise ShapeError(
                    f"constraint {c.name!r} returns a proxy on some ranks but not on others; "
                    "expected the same kind of value on every rank."
                )
            proxy_flags.append(flags.pop())
        sizes = tuple(tuple(int(table[r][k]) for r in ranks) for k in range(g))
        sharded: list[bool] = []
        for c, per_rank in zip(dense, sizes, strict=True):
            total = sum(per_rank)
            if self.sharded == "auto":
                split = (
                    c.size is not None and total == c.size and any(n != c.size for n in per_rank)
                )
            else:
                split = c.name in self.sharded
                if split and c.size is not None and total != c.size:
                    raise ShapeError(
                        f"sharded constraint {c.name!r} is declared with size {c.size} but the "
                        f"ranks return {list(per_rank)} entries (total {total}); expected shards "
                        "that add up to the declared size."
                    )
            if not split and len(set(per_rank)) != 1:
                raise ShapeError(
                    f"constraint {c.name!r} has {list(per_rank)} entries on ranks "
                    f"0..{self.world_size - 1}. A replicated group needs the same size on every "
                    "rank; a group whose entries are split across ranks must declare its full "
                    f"size (size={total}) so that it is gathered instead of averaged."
                )
            sharded.append(split)
        return _Plan(
            dense=tuple(c.name for c in dense),
            sizes=sizes,
            sharded=tuple(sharded),
            dense_proxy=tuple(proxy_flags[:g]),
            indexed=tuple(c.name for c in indexed),
            indexed_proxy=tuple(proxy_flags[g:]),
        )

    # -- SignalReducer protocol ----------------------------------------------------------
    def reduce_state(self, problem: ConstrainedProblem, state: ProblemState) -> ProblemState:
        """Turn this rank's evaluation into the evaluation of the whole data.

        Returns a state whose values are identical on every rank: the objective and the
        replicated dense groups are rank means (summed in rank order on every rank, so
        bitwise equal everywhere), sharded dense groups and per-sample groups are
        concatenations in rank order. Gradients reach this rank's own values only: with
        factor 1 for means, ``W`` for concatenated parts (see the module docstring).
        Per-sample entries observed several times (``DistributedSampler`` pads by
        repeating samples; sampling with replacement) are left in: the constraint layout
        counts a repeated sample once with the mean of its values, as in one process.

        Raises:
            ShapeError: If a group's size differs from the first evaluation's, or the ranks
                disagree in a way that is neither sharded nor replicated.
        """
        for c in problem.all_constraints:
            if getattr(c, "multiplier_model", None) is not None:
                raise ConfigError(
                    f"constraint {c.name!r} has a multiplier model, which a distributed run does "
                    "not support yet (the features are not gathered across ranks); train it in "
                    "one process, or give the group table multipliers (no multiplier_model)."
                )
            raw = state.constraints.get(c.name)
            if (raw is None and c.intermittent) or (
                isinstance(raw, ConstraintValue) and raw.observed is False
            ):
                raise ConfigError(
                    f"constraint {c.name!r} is not measured at this step (intermittent or "
                    "ConstraintValue.proxy_only); a distributed run reduces every constraint "
                    "on every rank at every step. Measure it at every step, or use "
                    "dual_every to update its multipliers less often."
                )
        if any(c.name not in state.constraints for c in problem.all_constraints):
            return state  # the solver reports missing constraints by name
        objective = state.objective
        if not isinstance(objective, Tensor) or objective.numel() != 1:
            return state  # the solver reports a non-scalar objective
        values = {n: as_constraint_value(n, raw) for n, raw in state.constraints.items()}
        if self._plan is None:
            self._plan = self._make_plan(problem, values, objective.device)
        plan = self._plan
        w, me = self.world_size, self.rank

        # One buffer per rank: [objective, replicated groups, sharded groups, per-sample].
        parts: list[Tensor] = [objective.detach().reshape(-1)]
        for name, per_rank in zip(plan.dense, plan.sizes, strict=True):
            if values[name].value.numel() != per_rank[me]:
                raise ShapeError(
                    f"constraint {name!r} returned {values[name].value.numel()} entries on rank "
                    f"{me} but {per_rank[me]} at the first evaluation; constraint groups must "
                    "keep their size between steps."
                )
        dense = list(zip(plan.dense, plan.sizes, plan.sharded, plan.dense_proxy, strict=True))
        for name, _, split, has_proxy in dense:
            if not split:
                parts.extend(t.detach().reshape(-1) for t in _pieces(values[name], has_proxy))
        for name, _, split, has_proxy in dense:
            if split:
                parts.extend(t.detach().reshape(-1) for t in _pieces(values[name], has_proxy))
        index_parts: list[Tensor] = []
        for name, has_proxy in zip(plan.indexed, plan.indexed_proxy, strict=True):
            v = values[name]
            parts.extend(t.detach().reshape(-1) for t in _pieces(v, has_proxy))
            if v.indices is None:
                raise ShapeError(
                    f"per-sample constraint {name!r} needs sample indices: return "
                    "ConstraintValue(value, indices=batch_indices)."
                )
            index_parts.append(v.indices.reshape(-1).long())
        counts = [[0] * len(plan.indexed) for _ in range(w)]  # counts[r][k]
        if plan.indexed:
            local_counts = torch.tensor(
                [values[n].value.numel() for n in plan.indexed],
                dtype=torch.int64,
                device=objective.device,
            )
            counts = [t.tolist() for t in self._all_gather(local_counts)]
        lengths = []
        for r in range(w):
            n = 1 + sum(
                per_rank[0 if not split else r] * (1 + has_proxy)
                for _, per_rank, split, has_proxy in dense
            )
            n += sum(counts[r][k] * (1 + p) for k, p in enumerate(plan.indexed_proxy))
            lengths.append(n)
        dtype = _common_dtype(parts)
        gathered = self._gather_padded(torch.cat([t.to(dtype) for t in parts]), lengths)
        gathered_indices: list[Tensor] = []
        if plan.indexed:
            gathered_indices = self._gather_padded(
                torch.cat(index_parts), [sum(counts[r]) for r in range(w)]
            )

        # Reassemble, reading every rank's buffer in the order it was written.
        at = [0] * w

        def mean_of(local: Tensor) -> Tensor:
            n = local.numel()
            total = gathered[0][at[0] : at[0] + n].clone()
            for r in range(1, w):
                total += gathered[r][at[r] : at[r] + n]
            for r in range(w):
                at[r] += n
            return _substitute(local, (total / w).reshape(local.shape), 1.0)

        new_objective = mean_of(objective)
        out: dict[str, Tensor | ConstraintValue] = dict(state.constraints)
        for name, _, split, has_proxy in dense:
            if not split:
                pieces = [mean_of(t) for t in _pieces(values[name], has_proxy)]
                out[name] = ConstraintValue(pieces[0], pieces[1] if has_proxy else None, None)
        for name, per_rank, split, has_proxy in dense:
            if split:
                sizes = list(per_rank)
                pieces = [
                    self._concat(t, gathered, at, sizes) for t in _pieces(values[name], has_proxy)
                ]
                out[name] = ConstraintValue(pieces[0], pieces[1] if has_proxy else None, None)
        i_at = [0] * w
        for k, (name, has_proxy) in enumerate(zip(plan.indexed, plan.indexed_proxy, strict=True)):
            sizes = [counts[r][k] for r in range(w)]
            pieces = [
                self._concat(t, gathered, at, sizes) for t in _pieces(values[name], has_proxy)
            ]
            chunks = []
            for r in range(w):
                chunks.append(gathered_indices[r][i_at[r] : i_at[r] + sizes[r]])
                i_at[r] += sizes[r]
            indices = torch.cat(chunks)  # repeats are averaged by the layout, as in one process
            out[name] = ConstraintValue(pieces[0], pieces[1] if has_proxy else None, indices)
        return ProblemState(new_objective, out, state.metrics)

    def _concat(
        self, local: Tensor, gathered: list[Tensor], at: list[int], sizes: list[int]
    ) -> Tensor:
        """Concatenate every rank's part in rank order; this rank's part keeps its graph
        with the gradient scaled by ``W``. Advances the read positions ``at``."""
        chunks = []
        for r, n in enumerate(sizes):
            if r == self.rank:
                flat = local.reshape(-1)
                chunks.append(_substitute(flat, flat, float(self.world_size)))
            else:
                chunks.append(gathered[r][at[r] : at[r] + n].to(local.dtype))
            at[r] += n
        return torch.cat(chunks)

    def reduce_gradients(self, model: nn.Module) -> None:
        """Average the gradients of ``model``'s parameters over ranks (in place).

        One all-reduce per (dtype, device). A parameter whose gradient is ``None`` on every
        rank keeps ``None``; one that has a gradient on some rank gets the average with
        zeros for the others. Skipped for ``DistributedDataParallel`` models.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self._check_ddp_gradients(model)
            return
        if not self.average_gradients:
            return
        buckets: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
        for p in model.parameters():
            if p.requires_grad:
                buckets.setdefault((p.dtype, p.device), []).append(p)
        for (dtype, device), params in buckets.items():
            flags = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in params
                ]
                + [flags]
            )
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            _retain(flat)
            present = flat[-len(params) :].tolist()
            offset = 0
            for p, count in zip(params, present, strict=True):
                n = p.numel()
                if count > 0:
                    average = flat[offset : offset + n].view_as(p) / self.world_size
                    if p.grad is None:
                        p.grad = average
                    else:
                        p.grad.copy_(average)
                offset += n

    def _check_ddp_gradients(self, model: nn.Module) -> None:
        """DDP averages gradients only when its own forward ran: a forward called through
        ``model.module`` leaves each rank with its own gradient and the replicas drift
        apart. Compare a fingerprint of the gradients across ranks (one small all-reduce).

        Raises:
            ReplicaDivergenceError: If the ranks hold different gradients.
        """
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.detach().reshape(-1).to(torch.float64) for g in grads])
        fingerprint = torch.stack([flat.sum(), (flat * flat).sum()])
        high, low = fingerprint.clone(), fingerprint.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        _retain(high, low)
        if bool((high != low).any()):
            raise ReplicaDivergenceError(
                "the DistributedDataParallel model holds different gradients on different "
                f"ranks (gradient sums {float(low[0]):.6g} .. {float(high[0]):.6g}), so its "
                "replicas would drift apart: DDP averages gradients only when its forward "
                "runs, and the problem probably calls model.module(...). Call the DDP "
                "wrapper itself, or pass the unwrapped module to the Solver (constrain then "
                "averages the gradients)."
            )


def _pieces(value: ConstraintValue, has_proxy: bool) -> list[Tensor]:
    """``[value]`` or ``[value, proxy]``."""
    if has_proxy:
        if value.proxy is None:
            raise ShapeError("a constraint returned a proxy at the first evaluation but not now.")
        return [value.value, value.proxy]
    return [value.value]


def _common_dtype(tensors: list[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype if tensors else torch.float64
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def assert_replicas_equal(
    tensors: Iterable[Tensor], group: Any = None, *, what: str = "state"
) -> None:
    """Check that ``tensors`` are bitwise identical on every rank.

    Compares the element-wise maximum and minimum over ranks (two all-reduces on one
    float64 buffer) with the local values.

    Raises:
        ReplicaDivergenceError: Naming the first tensor (by position) that differs and
            the largest difference.
    """
    items = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
    if not is_distributed() or not items:
        return
    flat = torch.cat(items)
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    _retain(high, low)
    spread = (high - low).abs()
    if bool((spread > 0).any()):
        offset = 0
        for k, t in enumerate(items):
            part = spread[offset : offset + t.numel()]
            if bool((part > 0).any()):
                raise ReplicaDivergenceError(
                    f"ranks diverged: {what} tensor #{k} differs between ranks by up to "
                    f"{float(part.max()):.3g} (expected identical values on every rank)."
                )
            offset += t.numel()
