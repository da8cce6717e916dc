"""Keep TensorFlow's native chatter off a command's stderr.

TensorFlow 2.14 writes to file descriptor 2 from C++: ``Unable to register cuDNN factory``
lines at import (level E, so ``TF_CPP_MIN_LOG_LEVEL=2`` does not hide them) and
``fully_quantize: ...`` during int8 calibration. A command that promises one error line on
failure captures descriptor 2 while TensorFlow works and shows what it caught only when asked.
Python's ``sys.stderr`` points at the real stderr meanwhile, so log records and progress
lines written through it (:class:`fedge.cli.StderrHandler` looks it up at each write) still
get through.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TextIO

__all__ = ["CapturedStderr", "capture_native_stderr"]


class CapturedStderr:
    """What was written to descriptor 2 inside :func:`capture_native_stderr`, and a stream
    to the real stderr for the progress and log lines that must still get through."""

    def __init__(self, original: TextIO) -> None:
        self.original = original
        self._text = ""

    @property
    def text(self) -> str:
        return self._text


@contextlib.contextmanager
def capture_native_stderr(*, enabled: bool = True) -> Iterator[CapturedStderr]:
    """Send descriptor 2 to a temporary file for the duration; ``enabled=False`` is a no-op.

    Python's ``sys.stderr`` is flushed first so nothing written before is reordered, then
    replaced by ``CapturedStderr.original`` (a stream to the stderr the process had on entry)
    until the block ends.
    """
    if not enabled:
        yield CapturedStderr(sys.stderr)
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        # No real descriptor (e.g. an in-memory stream under a test runner): nothing to hide.
        yield CapturedStderr(sys.stderr)
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    original = open(os.dup(saved), "w", encoding="utf-8", errors="replace", closefd=True)  # noqa: SIM115
    captured = CapturedStderr(original)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        sys.stderr = original
        try:
            yield captured
        finally:
            sys.stderr = python_stderr
            with contextlib.suppress(OSError, ValueError):
                original.flush()
                python_stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            original.close()
            sink.seek(0)
            captured._text = sink.read().decode("utf-8", errors="replace")
