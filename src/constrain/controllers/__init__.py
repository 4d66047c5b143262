"""Lagrange-multiplier controllers and their registry.

Every controller is a frozen pydantic model with an ``init``/``update`` pair; see
:class:`Controller`. Build one by name with :func:`build` (``build("nupi", ki=0.1)``)
or instantiate the class directly (``NuPI(lr=1.0, ki=0.1, kp=1.0)``).
"""

from ._base import Controller, ControllerState
from ._registry import CONTROLLERS, build, get, names, register

__all__ = [
    "CONTROLLERS",
    "Controller",
    "ControllerState",
    "build",
    "get",
    "names",
    "register",
]
