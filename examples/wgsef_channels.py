"""Channel pruning of a small CNN on digits with the weighted group sparse envelope function.

The k-level gap of the WGSEF (Refael, Arbel & Huleihel), ``S_k(W) - 1/2 ||W||^2``, is zero
exactly when at most ``k`` groups of ``W`` are non-zero. Its prox (``constrain.prox.wgsef``
with ``mode="gap"``) runs after every optimizer step on the filters of both convolutions,
one group per output channel, asking for 6 of 16 and 8 of 16 channels. The same CNN
trained without the regularizer is the baseline.

Run: ``python examples/wgsef_channels.py`` (about half a minute on a laptop CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from constrain import ConstrainedProblem, Regularizer, Solver
from constrain.prox import group_norms

KEEP = {"conv1.weight": 6, "conv2.weight": 8}


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        h = F.avg_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(h.flatten(1))


def batches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=generator)
        for k in range(0, len(y) - size + 1, size):
            idx = order[k : k + size]
            yield x[idx], y[idx]


def train(regularized: bool, data: tuple[torch.Tensor, ...], steps: int = 800) -> nn.Module:
    x_train, y_train, _, _ = data
    torch.manual_seed(0)
    model = SmallCNN()
    regularizers = [
        Regularizer(
            prox="wgsef",
            strength=60.0,  # times lr 3e-3 per step: 0.18 < 1, as mode="gap" requires
            params=[name],
            options={"k": k, "mode": "gap"},
            name=f"wgsef_{name}",
            track_clusters=False,
        )
        for name, k in KEEP.items()
    ]
    problem = ConstrainedProblem(
        objective=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        regularizers=regularizers if regularized else [],
    )
    solver = Solver(problem, model, torch.optim.Adam(model.parameters(), lr=3e-3), record_every=100)
    solver.fit(batches(x_train, y_train, 64, seed=0), steps, progress=False)
    return model


def main() -> None:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    data = (
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y_test),
    )
    for regularized in (False, True):
        model = train(regularized, data)
        with torch.no_grad():
            accuracy = float((model(data[2]).argmax(1) == data[3]).float().mean())
        params = dict(model.named_parameters())
        channels = {
            name: int((group_norms(params[name]) > 0).sum()) for name in KEEP
        }
        label = "WGSEF gap prox" if regularized else "no regularizer"
        print(
            f"{label:>15}: test accuracy {accuracy:.3f}; non-zero output channels "
            f"conv1 {channels['conv1.weight']}/16 (k={KEEP['conv1.weight']}), "
            f"conv2 {channels['conv2.weight']}/16 (k={KEEP['conv2.weight']})"
        )


if __name__ == "__main__":
    main()
