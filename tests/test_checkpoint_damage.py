"""A single flipped bit anywhere in a checkpoint's zip directory is either harmless (the
payload loads identical) or reported as a CheckpointError; never another error type and
never other numbers (a flipped MS-DOS folder attribute used to load zeros silently)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from constrain import CheckpointError, RunConfig, get_problem
from constrain.checkpoint import load_checkpoint, run_with_checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: Any) -> Path:
    data = get_problem("simplex").default_config().model_dump()
    data["steps"] = 2
    out = tmp_path_factory.mktemp("damage") / "run"
    run_with_checkpoints(RunConfig.parse(data), out=out, every=2, figures=False)
    return out / "checkpoints" / "step-000000002.pt"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b) or (a.is_floating_point() and a.isnan().equal(b.isnan())))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return bool(a == b)


def _sweep(checkpoint: Path, tmp: Path, positions: range) -> dict[str, int]:
    original = checkpoint.read_bytes()
    reference = load_checkpoint(checkpoint)
    target = tmp / "flipped.pt"
    outcome = {"refused": 0, "identical": 0}
    for position in positions:
        for bit in range(8):
            data = bytearray(original)
            data[position] ^= 1 << bit
            target.write_bytes(bytes(data))
            try:
                payload = load_checkpoint(target)
            except CheckpointError:
                outcome["refused"] += 1
                continue
            assert _same(payload, reference), f"byte {position} bit {bit}: other numbers"
            outcome["identical"] += 1
    return outcome


def _entry(data: bytes, index: int) -> int:
    at = -1
    for _ in range(index + 1):
        at = data.find(b"PK\x01\x02", at + 1)
    return at


def test_every_bit_of_a_directory_entry(checkpoint: Path, tmp_path: Path) -> None:
    data = checkpoint.read_bytes()
    start = _entry(data, 4)  # archive/data/0: a tensor's storage
    outcome = _sweep(checkpoint, tmp_path, range(start, start + 46))
    assert outcome["refused"] > 100  # method, CRC, sizes, offsets, name length, ...


@pytest.mark.slow
def test_every_bit_of_the_whole_directory(checkpoint: Path, tmp_path: Path) -> None:
    data = checkpoint.read_bytes()
    outcome = _sweep(checkpoint, tmp_path, range(_entry(data, 0), len(data)))
    assert outcome["refused"] > 1000
