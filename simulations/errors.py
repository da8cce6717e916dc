"""The errors the simulations raise, under :class:`fedge.errors.FedgeError`.

::

    FedgeError
    ├── SimulationError   a simulated run cannot go on (a round did not start, every client
    │                     of a round failed, a client answered with the wrong message)
    ├── FleetError        the simulation's worker processes failed or broke their protocol
    └── DemoError         a step of the end-to-end demo failed; the message says which, in
                          one line, with the log to read

Bad input (flags, the user's files) raises the core's ``ConfigError`` or ``DataError``; a
child process that fails raises :class:`fedge.errors.ProcessError`.
"""

from __future__ import annotations

from fedge.errors import FedgeError

__all__ = ["DemoError", "FleetError", "SimulationError"]


class SimulationError(FedgeError, RuntimeError):
    """A simulated run cannot go on (see the module docstring)."""


class FleetError(FedgeError, RuntimeError):
    """The simulation's worker processes failed or broke their protocol."""


class DemoError(FedgeError, RuntimeError):
    """A step of the end-to-end demo failed; the message says why in one line."""
