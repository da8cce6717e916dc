"""Independent subprocess runs side by side, for tests whose steps do not depend on each other.

Most of a test's time in a CLI subprocess is the interpreter starting and importing
TensorFlow, on one core; two such runs at once take about the time of one on a two-core
machine. :func:`side_by_side` runs callables in threads and returns their results in order;
a callable's exception is raised in the caller, after every callable has finished (so no
child process outlives the test that started it).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["side_by_side"]


def side_by_side(*calls: Callable[[], Any]) -> list[Any]:
    """``[call() for call in calls]``, the calls run at the same time in threads."""
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="side-by-side") as pool:
        futures: list[Future[Any]] = [pool.submit(call) for call in calls]
    return [future.result() for future in futures]
