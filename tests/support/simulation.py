"""Types shared by the simulation tests and their fixtures (``tests/simulations/conftest.py``).

``SettingsFactory`` is the type of the ``sim_settings`` fixture (default settings over the
session's pretraining cache, changed by keyword) and ``CliRunner`` that of ``fedge_simulate``
(the CLI in a fresh interpreter, its output captured).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from simulations.settings import Settings

__all__ = ["CliRunner", "SettingsFactory"]

SettingsFactory = Callable[..., Settings]
CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]
