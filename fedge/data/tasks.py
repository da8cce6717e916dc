"""Reference tasks by name, for CLIs and configs."""

from __future__ import annotations

from collections.abc import Callable

from fedge.data.dataset import Dataset
from fedge.data.digits import load_digits
from fedge.data.taxi import load_taxi
from fedge.errors import ConfigError

__all__ = ["TASK_NAMES", "load_task"]

_LOADERS: dict[str, Callable[[], Dataset]] = {"digits": load_digits, "taxi": load_taxi}

TASK_NAMES: tuple[str, ...] = tuple(sorted(_LOADERS))
"""Names :func:`load_task` accepts."""


def load_task(name: str) -> Dataset:
    """The bundled data set of reference task ``name`` (``"digits"`` or ``"taxi"``)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {list(TASK_NAMES)}") from None
    return loader()
