"""Public names of a package loaded on first use (PEP 562), shared by the packages whose
``__init__`` would otherwise import every submodule (and their heavy dependencies)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: MutableMapping[str, Any], sources: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: a name of ``sources``
    (name -> defining module) is imported from its module on first use, then kept in
    ``namespace`` (the package's ``globals()``) as a plain attribute."""

    def getattr_(name: str) -> object:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *sources})

    return getattr_, dir_
