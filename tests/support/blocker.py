"""The tests' one import blocker: named top-level packages become unimportable.

A device has no TensorFlow. The tests prove that the edge code (and the core, and a warm
simulation cache) run without it by blocking the import in a fresh interpreter, before
anything else is imported: the subprocess scripts of this package call
:func:`block_imports` first thing, and code run with ``python -c`` from the repository root
starts with :func:`prelude`. :func:`block_in_this_process` does the same for one test in
the pytest process, undone when the test ends.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Iterable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

TENSORFLOW = ("tensorflow", "tensorflow_federated", "keras", "tf_keras")
"""TensorFlow and the packages that bring it along."""


class ImportBlocker(importlib.abc.MetaPathFinder):
    """A meta-path finder that refuses every module under one of ``roots``."""

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = frozenset(roots)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in self.roots:
            raise ImportError(f"{fullname} is blocked in this process")
        return None


def loaded(roots: Iterable[str]) -> list[str]:
    """The modules under ``roots`` this process has imported."""
    blocked = frozenset(roots)
    return sorted(name for name in sys.modules if name.split(".", 1)[0] in blocked)


def block_imports(roots: Iterable[str]) -> None:
    """Make every module under ``roots`` unimportable in this process from now on.

    SystemExit when one is already imported: the block would prove nothing.
    """
    blocker = ImportBlocker(roots)
    already = loaded(blocker.roots)
    if already:
        raise SystemExit(f"blocked modules were imported before the blocker: {already}")
    sys.meta_path.insert(0, blocker)


def prelude(roots: Iterable[str]) -> str:
    """Python source that blocks ``roots``: the head of code run with ``python -c`` (from
    the repository root, so that ``tests`` is importable)."""
    return (
        f"from tests.support.blocker import block_imports\nblock_imports({sorted(set(roots))!r})\n"
    )


def import_fails(name: str) -> bool:
    """Whether ``import name`` raises ImportError here."""
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


def block_in_this_process(monkeypatch: pytest.MonkeyPatch, roots: Iterable[str]) -> None:
    """Block ``roots`` in the pytest process for one test; ``monkeypatch`` undoes it.

    Modules already imported get a ``None`` entry in ``sys.modules`` (which makes their
    import raise ImportError); the others are refused by an :class:`ImportBlocker`.
    """
    blocker = ImportBlocker(roots)
    monkeypatch.setattr(sys, "meta_path", [blocker, *sys.meta_path])
    for name in loaded(blocker.roots):
        monkeypatch.setitem(sys.modules, name, None)
