"""Process state a bit-exact resume needs beyond tensors: RNG states and the data position.

Everything here is stored with tensors and plain Python containers only, so that a
checkpoint holding it loads with ``torch.load(..., weights_only=True)``.

A :class:`DataCursor` walks a re-iterable data source (a ``DataLoader``, a list of
batches, ...) epoch after epoch and remembers where it is: the epoch ``e``, the number
``k`` of batches already taken from it and the random states at the start of the epoch.
Restoring it replays the epoch start with those states (so a shuffling ``DataLoader``
draws the same permutation, ``DistributedSampler.set_epoch(e)`` is called again), skips
``k`` batches and puts the random states back to the checkpoint's. The stream of batches
is then the one an uninterrupted run would have seen, provided the data source is
deterministic given those states (true for ``DataLoader`` with any sampler driven by the
global torch RNG, its own ``generator=`` or ``set_epoch``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._errors import CheckpointError, ConfigError

__all__ = ["DataCursor", "get_rng_state", "set_rng_state"]

RngState = dict[str, Any]


def get_rng_state() -> RngState:
    """The states of every random generator a run may draw from.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor per device], "numpy": {...},
        "python": {...}}``, made of tensors and primitives only (safe to load with
        ``weights_only=True``).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: RngState) -> None:
    """Restore the states returned by :func:`get_rng_state`.

    Raises:
        CheckpointError: If ``state`` lacks a generator or holds a malformed state.
    """
    try:
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda", [])
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            "the checkpoint's random-generator states are malformed (expected torch, numpy "
            f"and python states as saved by constrain); got keys {sorted(state)}: {exc}"
        ) from None


def _loader_generator(data: Any) -> torch.Generator | None:
    generator = getattr(data, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def _set_epoch(data: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the data source's sampler(s), as ``DistributedSampler`` needs."""
    for owner in (data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)):
        if owner is not None and callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
            return
    inner = getattr(getattr(data, "batch_sampler", None), "sampler", None)
    if inner is not None and callable(getattr(inner, "set_epoch", None)):
        inner.set_epoch(epoch)


class DataCursor:
    """The position of a run in its data stream (epoch, batches taken), resumable.

    Epoch ``e`` starts with ``set_epoch(e)`` on the sampler (when it has one) and
    ``iter(data)``; the RNG states just before that are kept so that :meth:`state_dict`
    can describe the position exactly.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.position = 0
        self._data: object | None = None
        self._iterator: Iterator[Any] | None = None
        self._epoch_rng: RngState | None = None
        self._epoch_generator: Tensor | None = None
        self._pending: dict[str, Any] | None = None

    def _start_epoch(self, data: Iterable[Any]) -> None:
        self._epoch_rng = get_rng_state()
        generator = _loader_generator(data)
        self._epoch_generator = None if generator is None else generator.get_state()
        _set_epoch(data, self.epoch)
        self._iterator = iter(data)
        self.position = 0

    def next_batch(self, data: Iterable[Any]) -> Any:
        """The next batch of ``data``, starting a new epoch when one is exhausted.

        A data source other than the previous one starts from its beginning (epoch 0),
        unless a restored position is pending (see :meth:`load_state_dict`).

        Raises:
            ConfigError: If a whole epoch yields no batch.
        """
        if data is not self._data:
            self._data = data
            if self._pending is not None:
                self._restore(data, self._pending)
                self._pending = None
            else:
                self.epoch = 0
                self._start_epoch(data)
        assert self._iterator is not None
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self._start_epoch(data)
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise ConfigError(
                    "the data iterable yielded no batch in a whole epoch; it is empty. Pass a "
                    "non-empty DataLoader/list of batches, or batch= for full-batch problems."
                ) from None
        self.position += 1
        return batch

    def batches(self, data: Iterable[Any]) -> Iterator[Any]:
        """Endless batches of ``data`` (:meth:`next_batch` after :meth:`next_batch`)."""
        while True:
            yield self.next_batch(data)

    def state_dict(self) -> dict[str, Any]:
        """The position (tensors and primitives only); ``{}`` if no data was used."""
        if self._pending is not None:
            return dict(self._pending)
        if self._data is None or self._epoch_rng is None:
            return {}
        generator = _loader_generator(self._data)
        return {
            "epoch": self.epoch,
            "position": self.position,
            "epoch_rng": self._epoch_rng,
            "epoch_generator": self._epoch_generator,
            "generator": None if generator is None else generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state`` the next time a data source is iterated (``{}``: start over)."""
        self._data = None
        self._iterator = None
        self._pending = dict(state) if state else None

    def _restore(self, data: Iterable[Any], state: dict[str, Any]) -> None:
        """Replay the start of the saved epoch, skip the batches already taken, then put
        every random state back to what it was (the checkpoint's)."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
            epoch_rng, epoch_generator = state["epoch_rng"], state["epoch_generator"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the checkpoint's data position is malformed: expected epoch, position and "
                f"epoch_rng; got keys {sorted(state)} ({exc})."
            ) from None
        now = get_rng_state()
        generator = _loader_generator(data)
        set_rng_state(epoch_rng)
        if generator is not None and epoch_generator is not None:
            generator.set_state(epoch_generator)
        self.epoch = epoch
        self._start_epoch(data)
        assert self._iterator is not None
        for taken in range(position):
            try:
                next(self._iterator)
            except StopIteration:
                raise CheckpointError(
                    f"cannot resume the data stream: the checkpoint is {position} batches into "
                    f"epoch {epoch} but the data source now yields only {taken} per epoch. "
                    "Resume with the same data (same size and batch size)."
                ) from None
        self.position = position
        set_rng_state(now)
        if generator is not None and state.get("generator") is not None:
            generator.set_state(state["generator"])
