"""Shared test set-up: quiet TensorFlow, and a marker for slow end-to-end runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def no_leftover_children() -> Iterator[None]:
    """Fail (and clean up) when the test leaves a child process behind.

    Only processes started during the test count: long-lived children of the test session
    (a TFF ``worker_binary``, a session-scoped server) existed before it began.
    """
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert left == [], f"processes left behind: {left}"
