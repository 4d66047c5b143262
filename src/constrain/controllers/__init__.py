"""Lagrange-multiplier controllers and their registry.

Every controller is a frozen pydantic model with an ``init``/``update`` pair; see
:class:`Controller`. Build one by name with :func:`build` (``build("nupi", ki=0.1)``)
or instantiate the class directly (``NuPI(lr=1.0, ki=0.1, kp=1.0)``).

Registered rules: ``gda`` (:class:`GDA`), ``momentum`` (:class:`Momentum`), ``nesterov``
(:class:`Nesterov`), ``adam`` (:class:`Adam`), ``nupi`` (:class:`NuPI`), ``pid``
(:class:`PID`), ``optimistic`` (:class:`Optimistic`), ``extragradient``
(:class:`ExtraGradient`), ``multiplicative`` (:class:`MultiplicativeWeights`) and
``group_dro`` (:class:`GroupDRO`).

Different groups may use different controllers: :func:`build_controllers` turns a mapping
from constraint-name patterns to controllers into a :class:`ControllerMap`.
"""

from ._base import Controller, ControllerState
from ._map import ControllerMap, ControllerSpec, build_controllers
from ._registry import CONTROLLERS, build, get, names, register
from .adam import Adam
from .extragradient import ExtraGradient
from .gda import GDA
from .group_dro import GroupDRO
from .momentum import Momentum
from .multiplicative import MultiplicativeWeights
from .nesterov import Nesterov
from .nupi import NuPI
from .optimistic import Optimistic
from .pid import PID

__all__ = [
    "CONTROLLERS",
    "GDA",
    "PID",
    "Adam",
    "Controller",
    "ControllerMap",
    "ControllerSpec",
    "ControllerState",
    "ExtraGradient",
    "GroupDRO",
    "Momentum",
    "MultiplicativeWeights",
    "Nesterov",
    "NuPI",
    "Optimistic",
    "build",
    "build_controllers",
    "get",
    "names",
    "register",
]
