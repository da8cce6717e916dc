"""What the session's background jobs build (:mod:`tests.support.background`), one job per
process: ``python -m tests.support.prebuild <what> ...``.

- ``export TASK OUT [--epochs N]``: :func:`tests.support.trained_models.train_export`.
- ``bundle TASK WORKDIR --batch-size B --version V``: an export trained for
  :data:`tests.support.bundles.BUNDLE_EPOCHS` epochs in ``WORKDIR/export``, bundled by
  ``fedge-quantize bundle`` into ``WORKDIR/bundle``.
- ``user-table SUFFIX WORKDIR``: :func:`tests.support.user_tables.run_every_tool`, what each
  tool printed in ``WORKDIR/runs.json``.
- ``changed-table WORKDIR``: :func:`tests.support.user_tables.run_changed_table`, likewise.
- ``pretrain TASK CACHE``: :func:`simulations.pretrain.pretrain` of ``TASK``'s default
  settings into the simulation cache ``CACHE``.

The exit code is 0 when the thing was built (for the tables: when the steps ran, whatever
each step's own exit code; the tests judge those).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.support.background import NICENESS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.prebuild", allow_abbrev=False)
    commands = parser.add_subparsers(dest="what", required=True)
    export = commands.add_parser("export", allow_abbrev=False)
    export.add_argument("task")
    export.add_argument("out", type=Path)
    export.add_argument("--epochs", type=int, default=None)
    bundle = commands.add_parser("bundle", allow_abbrev=False)
    bundle.add_argument("task")
    bundle.add_argument("workdir", type=Path)
    bundle.add_argument("--batch-size", type=int, required=True)
    bundle.add_argument("--version", required=True)
    table = commands.add_parser("user-table", allow_abbrev=False)
    table.add_argument("suffix", choices=[".csv", ".tfrecord"])
    table.add_argument("workdir", type=Path)
    changed = commands.add_parser("changed-table", allow_abbrev=False)
    changed.add_argument("workdir", type=Path)
    pretrained = commands.add_parser("pretrain", allow_abbrev=False)
    pretrained.add_argument("task")
    pretrained.add_argument("cache", type=Path)
    args = parser.parse_args(argv)
    os.nice(NICENESS)  # the tests first; the tools this job starts inherit it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    if args.what == "export":
        from tests.support.trained_models import train_export

        args.out.parent.mkdir(parents=True, exist_ok=True)
        train_export(args.task, args.out, epochs=args.epochs)
    elif args.what == "bundle":
        from tests.support.bundles import BUNDLE_EPOCHS, bundle_export
        from tests.support.trained_models import train_export

        trained = train_export(args.task, args.workdir / "export", epochs=BUNDLE_EPOCHS)
        out = args.workdir / "bundle"
        bundle_export(trained, out, batch_size=args.batch_size, version=args.version)
    elif args.what == "user-table":
        from tests.support.user_tables import run_every_tool

        args.workdir.mkdir(parents=True, exist_ok=True)
        run_every_tool(args.workdir, args.suffix)
    elif args.what == "pretrain":
        from simulations.pretrain import PretrainConfig, pretrain

        pretrain(PretrainConfig(task=args.task), args.cache)
    else:
        from tests.support.user_tables import run_changed_table

        args.workdir.mkdir(parents=True, exist_ok=True)
        run_changed_table(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
