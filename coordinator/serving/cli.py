"""``fedge-coordinator predict-batch``: precompute a version's predictions for a key table.

::

    fedge-coordinator predict-batch --db DB --artifacts DIR --keys TABLE --key-column COL \\
        [--version V] [--every SECONDS] [--json]

Every row of TABLE (CSV, or TFRecord) is scored by the version's device serving path and
stored under its key as a prediction table (:mod:`coordinator.serving.table`); the server's
static and hybrid modes answer from it. ``--version`` defaults to the production version;
with ``--every`` the command reruns on that schedule until stopped, picking up a new
production version each time.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coordinator.artifacts import ArtifactStore
from coordinator.registry import ModelRegistry
from coordinator.serving.model import ServedModel
from coordinator.serving.predict import MODES, ServingConfig, prediction_entries
from coordinator.serving.table import PredictionTable, TableStore, key_text
from fedge.cli import add_json_flag, add_verbosity_flags, print_json
from fedge.data.tables import read_csv_columns
from fedge.data.user_table import read_table
from fedge.errors import ConfigError, DataError, UsageError
from fedge.tfrecord import read_examples
from fedge.validation import check_int, check_positive

__all__ = [
    "add_predict_batch_parser",
    "add_serving_flags",
    "build_table",
    "predict_batch",
    "read_keys",
    "serving_config",
]

logger = logging.getLogger(__name__)

_EPILOG = """\
exit codes:
  0    the table was written
  1    the operation failed: no such version, a database that cannot be read
  2    usage or input error: bad flags, an unreadable key table, a missing key column
  130  interrupted (Ctrl-C or SIGTERM; how a run with --every stops: the tables written
       so far stay, each one whole)"""


def read_keys(
    path: Path, model: ServedModel, key_column: str
) -> tuple[list[str | None], dict[str, NDArray[Any]]]:
    """The keys (None where a row has none) and the feature columns of a key table."""
    name = path.name
    if name.endswith((".tfrecord", ".tfrecord.gz")):
        data = read_table(path, model.manifest.schema, model.label_names, with_label=False)
        keys = []
        for i, example in enumerate(read_examples(path)):
            values = example.get(key_column)
            if values is None and i == 0:
                raise DataError(f"{path}: no key column {key_column!r}")
            raw = values[0] if values else None
            keys.append(_key(raw.decode("utf-8") if isinstance(raw, bytes) else raw, path, i))
        return keys, dict(data.columns)
    if not name.endswith((".csv", ".csv.gz")):
        raise DataError(f"{name}: a key table is a .csv, .csv.gz or .tfrecord(.gz) file")
    columns = read_csv_columns(
        path, schema=model.manifest.schema, extra={key_column: "categorical"}, label="ignore"
    )
    keys = [_key(v, path, i) for i, v in enumerate(columns.pop(key_column))]
    return keys, columns


def _key(value: object, path: Path, row: int) -> str | None:
    try:
        return key_text(value)
    except ConfigError as exc:
        raise DataError(f"{path}: row {row}: {exc}") from exc


def build_table(
    model: ServedModel,
    keys: list[str | None],
    columns: Mapping[str, NDArray[Any]],
    *,
    key_column: str,
    now: float,
    source: str = "",
) -> PredictionTable:
    """The predictions of ``model`` for every keyed row (rows without a key are skipped;
    a key given twice keeps its first row)."""
    keep: list[int] = []
    kept: list[str] = []
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key is not None and key not in seen:
            seen.add(key)
            keep.append(i)
            kept.append(key)
    if len(keep) < len(keys):
        logger.warning(
            "%d of %d rows have no key or repeat one: skipped", len(keys) - len(keep), len(keys)
        )
    if not keep:
        raise DataError(f"no row has a key in column {key_column!r}")
    index = np.asarray(keep)
    logits = model.predict_columns({k: v[index] for k, v in columns.items()})
    entries = prediction_entries(model, logits)
    predictions = dict(zip(kept, entries, strict=True))
    return PredictionTable(model.version, key_column, predictions, now, source)


def predict_batch(
    registry: ModelRegistry,
    tables: TableStore,
    keys_path: Path,
    *,
    key_column: str,
    version: str = "production",
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Score ``keys_path`` with ``version`` and store the table; its index entry."""
    model = ServedModel.load(registry, version)
    keys, columns = read_keys(keys_path, model, key_column)
    table = build_table(
        model, keys, columns, key_column=key_column, now=now(), source=str(keys_path)
    )
    return {**tables.save(table), "path": model.path}


def add_predict_batch_parser(sub: Any) -> None:
    """Add ``predict-batch`` to the ``fedge-coordinator`` subcommands ``sub``."""
    parser = sub.add_parser(
        "predict-batch",
        help="precompute a version's predictions for every key of a table",
        description="Score every row of a key table (CSV or TFRecord) with a model version "
        "and store the predictions by key, for `serve --serving-mode static|hybrid`.",
        epilog=_EPILOG,
    )
    parser.add_argument("--db", required=True, help="the state database")
    parser.add_argument("--artifacts", required=True, type=Path, help="artifact directory")
    parser.add_argument("--keys", required=True, type=Path, metavar="TABLE", help="key table")
    parser.add_argument("--key-column", required=True, metavar="COL", help="the key column")
    parser.add_argument(
        "--version", default="production", help="model version (default: production)"
    )
    parser.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="rerun on this schedule until stopped (a new production version is picked up)",
    )
    add_json_flag(parser)
    add_verbosity_flags(parser)
    parser.set_defaults(handler=predict_batch_cli)


def predict_batch_cli(args: argparse.Namespace) -> int:
    """``predict-batch``: print the table's index entry (each run, with ``--every``)."""
    from coordinator.store import open_store

    if args.every is not None:
        check_positive(args.every, "--every", error=UsageError)
    if not args.keys.is_file():
        raise UsageError(f"--keys {args.keys} is not a file")
    if not args.artifacts.is_dir():
        raise UsageError(f"--artifacts {args.artifacts} is not a directory")
    local = (
        args.db.removeprefix("sqlite:///")
        if "://" not in args.db or args.db.startswith("sqlite:///")
        else None
    )
    if local is not None and not Path(local).is_file():
        raise UsageError(f"--db {args.db}: no such database file (serve creates one)")
    artifacts = ArtifactStore(args.artifacts)
    registry = ModelRegistry(open_store(args.db), artifacts, now=time.time)
    tables = TableStore(artifacts)
    while True:
        try:
            entry = predict_batch(
                registry, tables, args.keys, key_column=args.key_column, version=args.version
            )
        except (DataError, ConfigError) as exc:
            raise UsageError(str(exc)) from exc
        if args.json:
            print_json(entry)
        else:
            print(
                f"{entry['model_version']}: {entry['rows']} keys ({entry['key_column']}, "
                f"{entry['path']} path) -> {entry['sha256'][:12]}",
                flush=True,
            )
        if args.every is None:
            return 0
        time.sleep(args.every)


def add_serving_flags(serve: argparse.ArgumentParser) -> None:
    """``serve``'s flags of the predict route (``POST /v1/models/<version>:predict``)."""
    defaults = ServingConfig()
    group = serve.add_argument_group(
        "cloud predictions",
        "POST /v1/models/<version>:predict answers in TensorFlow Serving's REST format with "
        "the admin token, computing what devices compute for that version. dynamic: the "
        "model; static: only the version's prediction table (fedge-coordinator "
        "predict-batch); hybrid: the table for the keys it has, the model behind an LRU cache "
        "for the rest.",
    )
    group.add_argument(
        "--serving-mode", choices=MODES, default=defaults.mode, help="default %(default)s"
    )
    group.add_argument(
        "--serving-cache",
        type=int,
        default=defaults.cache_rows,
        metavar="N",
        help="rows the hybrid mode's LRU cache holds (default %(default)s; 0: none)",
    )
    group.add_argument(
        "--serving-max-instances",
        type=int,
        default=defaults.max_instances,
        metavar="N",
        help="rows one predict request may hold (default %(default)s; the body is also "
        "bounded by --max-json-bytes)",
    )


def serving_config(args: argparse.Namespace) -> ServingConfig:
    """The :class:`ServingConfig` of ``serve``'s flags (UsageError for a bad value)."""
    check_int(args.serving_cache, "--serving-cache", low=0, error=UsageError)
    check_int(args.serving_max_instances, "--serving-max-instances", low=1, error=UsageError)
    return ServingConfig(
        mode=args.serving_mode,
        cache_rows=args.serving_cache,
        max_instances=args.serving_max_instances,
    )
