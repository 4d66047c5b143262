"""Data-parallel training under torchrun: a classifier with a capped positive rate.

Every process evaluates the problem on its own rows of the batch; the library combines the
constraint values and the gradients across processes, so every process holds the same
model and multipliers. Run it in one process (`python examples/distributed_training.py`) or
in two (`torchrun --standalone --nproc_per_node=2 examples/distributed_training.py`): the
results agree up to float rounding.
"""

import torch

import constrain
from constrain.distributed import assert_replicas_equal, init_from_env, is_main_process, shard_batch

rank, world = init_from_env()  # reads torchrun's environment; (0, 1) in a plain process

torch.manual_seed(0)  # the same data and initial model on every rank
X = torch.randn(2000, 5)
y = (X @ torch.tensor([1.5, -1.0, 0.5, 0.0, 1.0]) + 0.5 * torch.randn(2000) > 0).float()


class CappedRate(constrain.ConstrainedProblem):
    max_rate: float = 0.3

    def objective(self, model, batch):
        X, y = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(model(X).squeeze(1), y)

    @constrain.constraint("<=", rhs="max_rate")
    def positive_rate(self, model, batch):
        X, _ = batch
        logits = model(X).squeeze(1)
        exact = (logits > 0).float().mean()
        return constrain.ConstraintValue(exact, proxy=torch.sigmoid(logits).mean())


model = torch.nn.Linear(5, 1)
solver = constrain.Solver(
    CappedRate(), model, torch.optim.SGD(model.parameters(), lr=0.5),
    controller={"name": "nupi", "lr": 0.1, "ki": 1.0, "kp": 5.0},
)
solver.fit(steps=1000, batch=shard_batch((X, y), rank, world))  # this rank's rows

assert_replicas_equal([*model.parameters(), *solver.multipliers.values()])
if is_main_process():
    print(f"world size {world}: multiplier {solver.multipliers['positive_rate'].item():.10f}, "
          f"weight[0] {model.weight[0, 0].item():.10f}")
