"""The errors the simulations raise, under :class:`fedge.errors.FedgeError`.

::

    FedgeError
    ├── ConfigError (fedge.errors)
    │   └── SettingsError     a Settings value, or a file one names, is unusable; ``fields``
    │                         names the settings involved
    ├── SimulationError       a simulated run cannot go on (a round did not start, every
    │                         client of a round failed, a client answered with the wrong
    │                         message)
    ├── FleetError            the simulation's worker processes failed or broke their protocol
    └── DemoError             a step of the end-to-end demo failed; the message says which,
                              in one line, with the log to read

Bad input (settings, the user's files) raises :class:`SettingsError` (a ``ConfigError``)
or the core's ``DataError``; a child process that fails raises
:class:`fedge.errors.ProcessError`. Messages name settings by their ``Settings`` field; the
command line adds its flags.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedge.errors import ConfigError, FedgeError

__all__ = ["DemoError", "FleetError", "SettingsError", "SimulationError"]


class SettingsError(ConfigError):
    """A ``Settings`` value, or a file one names, is unusable.

    ``fields`` names the ``Settings`` fields the message is about, so a front end can point
    at its own name for them (a flag, a form field).
    """

    def __init__(self, message: str, *, fields: Iterable[str]) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class SimulationError(FedgeError, RuntimeError):
    """A simulated run cannot go on (see the module docstring)."""


class FleetError(FedgeError, RuntimeError):
    """The simulation's worker processes failed or broke their protocol."""


class DemoError(FedgeError, RuntimeError):
    """A step of the end-to-end demo failed; the message says why in one line."""
