"""The run's plots, drawn by a helper process that starts with the run.

Importing matplotlib takes about half a second of CPU. ``fedge-simulate`` starts this
helper before the run (:func:`start_plotter`), so that the import happens on another core
while the clients train, and hands it the figures at the end (:meth:`Plotter.draw`, the
``draw`` of :func:`simulations.report.write_report`).

``python -m simulations.plotter`` imports matplotlib, then reads one JSON document from
stdin, ``{"figures": [...]}`` (:data:`simulations.report.FigureData`), draws each with
:func:`simulations.report.draw_figures` and exits 0; on a failure it writes the error on
stderr (its log) and exits 1, which :meth:`Plotter.draw` raises as a
:class:`~simulations.errors.SimulationError`.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fedge import processes
from fedge.errors import ProcessError
from simulations.errors import SimulationError
from simulations.report import FigureData

__all__ = ["Plotter", "main", "start_plotter"]

_DRAW_TIMEOUT = 300.0


class Plotter:
    """The helper process: :meth:`draw` once, :meth:`close` always (it stops the helper
    and removes the folder of its log)."""

    def __init__(self, child: processes.Child, folder: Path) -> None:
        self._child = child
        self._folder = folder

    def draw(self, figures: Sequence[FigureData]) -> None:
        """Have the helper draw ``figures`` and wait until it has written them."""
        stdin = self._child.popen.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"figures": list(figures)}).encode())
            stdin.close()
        except OSError:  # it already ended: its exit says why
            pass
        try:
            processes.wait(self._child, timeout=_DRAW_TIMEOUT, what="the plots")
        except ProcessError as exc:
            raise SimulationError(f"drawing the plots failed: {exc}") from exc

    def close(self) -> None:
        try:
            processes.stop([self._child])
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


def start_plotter() -> Plotter:
    """Start the helper (its log in a temporary folder of its own)."""
    folder = Path(tempfile.mkdtemp(prefix="fedge-plotter-"))
    try:
        child = processes.start(
            [sys.executable, "-m", "simulations.plotter"],
            name="plotter",
            log_path=folder / "plotter.log",
            pipes=True,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Plotter(child, folder)


def main() -> int:
    """The helper: import matplotlib, then draw the figures the parent sends on stdin."""
    import matplotlib.figure  # noqa: F401  (the import this process exists to do early)
    from matplotlib.backends import backend_agg  # noqa: F401

    from simulations.report import draw_figures

    document = json.loads(sys.stdin.buffer.read())
    draw_figures(document["figures"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one line in the log, for the parent's error
        print(f"error: {Path(sys.argv[0]).name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
