"""Plain tensors as primal variables."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._errors import ConfigError, describe

__all__ = ["Variables"]


class Variables(nn.Module):
    """An ``nn.Module`` holding named tensors as trainable parameters.

    Use it when the primal variables are plain tensors rather than a network, e.g.
    ``Variables(w=torch.zeros(4), b=0.0)``; access them as attributes (``model.w``).

    Args:
        dtype: Floating dtype for values given as Python numbers or lists (default: torch's
            default dtype); tensors keep their dtype.
        **values: Initial values by name (tensors, arrays, lists or numbers). Copied.

    Raises:
        ConfigError: For a non-numeric or non-finite initial value.
    """

    def __init__(self, dtype: torch.dtype | None = None, **values: Any) -> None:
        super().__init__()
        if not values:
            raise ConfigError(
                "Variables needs at least one named initial value, e.g. Variables(x=torch.zeros(3))."
            )
        for name, value in values.items():
            try:
                tensor = torch.as_tensor(value).detach().clone()
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(
                    f"variable {name!r}: expected a tensor, array or number; got {describe(value)}."
                ) from None
            if not tensor.is_floating_point():
                tensor = tensor.to(dtype or torch.get_default_dtype())
            elif dtype is not None and not isinstance(value, Tensor):
                tensor = tensor.to(dtype)
            if not bool(torch.isfinite(tensor).all()):
                raise ConfigError(
                    f"variable {name!r}: initial value is not finite ({describe(tensor)})."
                )
            self.register_parameter(name, nn.Parameter(tensor))

    @classmethod
    def zeros(cls, dtype: torch.dtype | None = None, **shapes: int | tuple[int, ...]) -> Variables:
        """Zero-initialised variables by shape: ``Variables.zeros(w=4, b=())``."""
        return cls(
            dtype=dtype,
            **{
                n: torch.zeros(s, dtype=dtype or torch.get_default_dtype())
                for n, s in shapes.items()
            },
        )

    def as_dict(self) -> dict[str, Tensor]:
        """Detached copies of every variable."""
        return {n: p.detach().clone() for n, p in self.named_parameters()}
