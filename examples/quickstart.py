"""Fit a linear classifier whose positive rate is capped, in a dozen lines."""

import torch

import constrain

X, y = torch.randn(512, 5), (torch.rand(512) < 0.5).float()


class CappedRate(constrain.ConstrainedProblem):
    max_rate: float = 0.3  # a validated hyperparameter

    def objective(self, model, batch):
        return torch.nn.functional.binary_cross_entropy_with_logits(model(X).squeeze(1), y)

    @constrain.constraint("<=", rhs="max_rate")
    def positive_rate(self, model, batch):
        logits = model(X).squeeze(1)
        exact = (logits > 0).float().mean()  # non-differentiable: drives the multiplier
        return constrain.ConstraintValue(exact, proxy=torch.sigmoid(logits).mean())


result = constrain.solve(
    CappedRate(),
    torch.nn.Linear(5, 1),
    steps=2000,
    lr=0.1,
    controller={"name": "nupi", "lr": 0.05, "ki": 1.0, "kp": 5.0},
)
rate = result.solver.constraint_values()["positive_rate"].item()
print(
    f"positive rate {rate:.3f} (cap 0.3), multiplier {result.multipliers['positive_rate'].item():.3f}"
)
