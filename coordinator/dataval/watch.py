"""A watched location: new spans are validated, then retrained on or quarantined.

``fedge-coordinator data watch --dir DIR ...`` scans ``DIR`` for span files (``.csv``,
``.csv.gz``, ``.tfrecord``, ``.tfrecord.gz``; hidden files, ``*.done`` markers and the
``quarantine/`` folder are ignored). A file is ready when a marker ``NAME.done`` exists
beside it, or when its size and modification time are unchanged over two consecutive
scans (a file still being written waits). Ready spans are handled one at a time, oldest
first:

1. statistics of the span (tensorflow-metadata) are validated against the schema and,
   for drift, against the statistics of the previous accepted span;
2. a valid span is trained on (``fedge-train --data SPAN --label-column C``), bundled
   (``fedge-quantize bundle``) and registered as a **candidate** model version, never
   promoted (:meth:`coordinator.registry.ModelRegistry.register_candidate`); its
   statistics become the reference of the next span;
3. an invalid (or unreadable) span is moved to ``DIR/quarantine/NAME/`` with
   ``anomalies.pbtxt`` beside it, and an alert of kind ``data_quarantined`` is stored.

``WORKDIR/state.json`` (written atomically after every step) remembers each span by name
and sha256, so a restarted watcher neither repeats finished work nor loses a step that
was under way: a span interrupted while training is trained again (registration of the
same bundle is idempotent), one interrupted while being quarantined is finished. A span
whose training fails is recorded as ``failed`` with the error and not retried; drop it
again under another name (or with other content) to retry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from coordinator.admin import DirectAdmin
from fedge.errors import ConfigError, FedgeError
from fedge.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "QUARANTINE",
    "SPAN_SUFFIXES",
    "SpanCheck",
    "WatchConfig",
    "Watcher",
    "anomaly_summary",
]

logger = logging.getLogger(__name__)
QUARANTINE = "quarantine"
SPAN_SUFFIXES = (".csv", ".csv.gz", ".tfrecord", ".tfrecord.gz")
DONE_SUFFIX = ".done"
STATE_FILE = "state.json"
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SpanCheck:
    """The statistics of a span (None when it could not be read) and its anomalies."""

    statistics: statistics_pb2.DatasetFeatureStatisticsList | None
    anomalies: anomalies_pb2.Anomalies


Validator = Callable[
    [Path, schema_pb2.Schema, "statistics_pb2.DatasetFeatureStatisticsList | None"], SpanCheck
]


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    directory: Path
    schema: Path
    label_column: str
    workdir: Path
    db: str
    artifacts: Path
    train_args: tuple[str, ...] = ()
    bundle_args: tuple[str, ...] = ()
    command_timeout_s: float = 3600.0


def is_span(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and name.endswith(SPAN_SUFFIXES) and path.is_file()


def anomaly_summary(anomalies: anomalies_pb2.Anomalies) -> dict[str, list[str]]:
    """Short descriptions per feature (``""`` for the dataset); empty when valid."""
    found: dict[str, list[str]] = {}
    for name, info in sorted(anomalies.anomaly_info.items()):
        found[name] = [r.short_description for r in info.reason] or [info.short_description]
    if anomalies.HasField("dataset_anomaly_info") and (
        anomalies.dataset_anomaly_info.reason or anomalies.dataset_anomaly_info.description
    ):
        info = anomalies.dataset_anomaly_info
        found[""] = [r.short_description for r in info.reason] or [info.short_description]
    return found


def unreadable(error: Exception) -> anomalies_pb2.Anomalies:
    """Anomalies of a span that could not be read at all (a dataset-level anomaly)."""
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.dataset_anomaly_info
    info.description = f"the span could not be read: {error}"
    info.short_description = "Unreadable span"
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    reason = info.reason.add()
    reason.type = anomalies_pb2.AnomalyInfo.UNKNOWN_TYPE
    reason.short_description = "Unreadable span"
    reason.description = info.description
    return anomalies


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Watcher:
    """One watched directory; :meth:`scan` handles what is ready and returns."""

    def __init__(
        self,
        config: WatchConfig,
        *,
        validator: Validator,
        load_schema: Callable[[Path], schema_pb2.Schema],
        now: Callable[[], float] = time.time,
    ) -> None:
        if not config.directory.is_dir():
            raise ConfigError(f"watched directory {config.directory} is not a directory")
        self._config = config
        self._validator = validator
        self._load_schema = load_schema
        self._now = now
        self._seen: dict[str, tuple[int, int]] = {}
        self._waiting: list[Path] = []
        config.workdir.mkdir(parents=True, exist_ok=True)
        self._state_path = config.workdir / STATE_FILE
        self._state = self._read_state()

    # State --------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        if not self._state_path.exists():
            return {"version": _STATE_VERSION, "spans": {}, "reference": None}
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the watch state {self._state_path}: {exc}") from exc
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ConfigError(f"{self._state_path} is not a watch state of version 1")
        return state

    def _save_state(self) -> None:
        text = json.dumps(self._state, indent=2, sort_keys=True) + "\n"
        atomic_write_text(self._state_path, text)

    @property
    def spans(self) -> dict[str, dict[str, Any]]:
        """The state of every span seen, by key ``NAME@SHA256[:16]``."""
        spans: dict[str, dict[str, Any]] = self._state["spans"]
        return spans

    def _record(self, key: str, **fields: Any) -> None:
        self.spans.setdefault(key, {}).update(fields, updated_at=self._now())
        self._save_state()

    # Scanning -----------------------------------------------------------------------------

    def ready(self) -> tuple[list[Path], list[Path]]:
        """(files ready now, oldest first; files still waiting to be stable)."""
        ready, waiting = [], []
        for path in sorted(self._config.directory.iterdir()):
            if not is_span(path):
                continue
            info = path.stat()
            signature = (info.st_size, info.st_mtime_ns)
            marked = path.with_name(path.name + DONE_SUFFIX).exists()
            if marked or self._seen.get(path.name) == signature:
                ready.append((info.st_mtime_ns, path))
            else:
                waiting.append(path)
            self._seen[path.name] = signature
        return [p for _, p in sorted(ready)], waiting

    def scan(self) -> list[dict[str, Any]]:
        """Handle every ready span; the state entries of the spans handled now."""
        self._resume()
        ready, self._waiting = self.ready()
        handled = []
        for path in ready:
            key = f"{path.name}@{_sha256(path)[:16]}"
            if self.spans.get(key, {}).get("status") in ("candidate", "quarantined", "failed"):
                logger.debug("%s was handled already (%s)", path.name, key)
                continue
            handled.append(self._handle(path, key))
        return handled

    def run(self, *, once: bool, interval: float) -> list[dict[str, Any]]:
        """Scan every ``interval`` seconds (``once``: until nothing is waiting to settle)."""
        handled = self.scan()
        while True:
            if once and not self._waiting:
                return handled
            time.sleep(interval)
            handled += self.scan()
            if once:
                return handled

    # One span -----------------------------------------------------------------------------

    def _span_dir(self, key: str) -> Path:
        name, _, digest = key.rpartition("@")
        return self._config.workdir / "spans" / f"{name}-{digest}"

    def _handle(self, path: Path, key: str) -> dict[str, Any]:
        work = self._span_dir(key)
        work.mkdir(parents=True, exist_ok=True)
        self._record(key, file=path.name, status="validating")
        schema = self._load_schema(self._config.schema)
        check = self._validator(path, schema, self._reference())
        atomic_write_text(work / "anomalies.pbtxt", str(check.anomalies))
        found = anomaly_summary(check.anomalies)
        if found:
            self._record(key, status="quarantining", anomalies=found)
            self._quarantine(path, key, check.anomalies)
        else:
            assert check.statistics is not None
            stats_path = work / "statistics.pb"
            atomic_write_bytes(stats_path, check.statistics.SerializeToString())
            self._record(key, status="training", statistics=str(stats_path))
            self._train(path, key)
        return {"key": key, **self.spans[key]}

    def _reference(self) -> statistics_pb2.DatasetFeatureStatisticsList | None:
        reference = self._state.get("reference")
        if not reference:
            return None
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        stats.ParseFromString(Path(reference).read_bytes())
        return stats

    def _quarantine(
        self, path: Path, key: str, anomalies: anomalies_pb2.Anomalies, *, move: bool = True
    ) -> None:
        target = self._config.directory / QUARANTINE / key.replace("@", "-")
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target / "anomalies.pbtxt", str(anomalies))
        if move:
            os.replace(path, target / path.name)
            path.with_name(path.name + DONE_SUFFIX).unlink(missing_ok=True)
        self._alert(key, target / path.name)
        self._record(key, status="quarantined", quarantine=str(target))

    def _alert(self, key: str, moved: Path) -> None:
        entry = self.spans[key]
        admin = DirectAdmin(self._config.db, self._config.artifacts)
        try:
            admin.alerts.data_quarantined(key, str(moved), entry.get("anomalies", {}))
        finally:
            admin.close()
        logger.warning("span %s quarantined in %s", entry["file"], moved.parent)

    def _run_tool(self, command: Sequence[str], log: Path) -> None:
        logger.info("running %s", " ".join(command))
        with log.open("w", encoding="utf-8") as out:
            result = subprocess.run(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=self._config.command_timeout_s,
                check=False,
            )
        if result.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise FedgeError(f"{command[2]} exited with {result.returncode}: " + " | ".join(tail))

    def _train(self, path: Path, key: str) -> None:
        work = self._span_dir(key)
        export, bundle = work / "export", work / "bundle"
        for old in (export, bundle):  # a step interrupted before: start it again
            shutil.rmtree(old, ignore_errors=True)
        try:
            self._run_tool(
                [
                    sys.executable, "-m", "cloud_trainer.cli",
                    "--data", str(path.resolve()),
                    "--label-column", self._config.label_column,
                    "--out", str(export),
                    *self._config.train_args,
                ],
                work / "train.log",
            )  # fmt: skip
            self._run_tool(
                [
                    sys.executable, "-m", "quantize.cli", "bundle", str(export),
                    "--out", str(bundle), *self._config.bundle_args,
                ],
                work / "bundle.log",
            )  # fmt: skip
            admin = DirectAdmin(self._config.db, self._config.artifacts)
            try:
                model = admin.register_candidate(bundle)
            finally:
                admin.close()
        except (FedgeError, OSError, subprocess.TimeoutExpired) as exc:
            logger.error("span %s: retraining failed: %s", path.name, exc)
            self._record(key, status="failed", error=str(exc))
            return
        self._state["reference"] = self.spans[key]["statistics"]
        self._record(key, status="candidate", version=model["version"], bundle=str(bundle))
        logger.info("span %s: candidate model version %s", path.name, model["version"])

    def _resume(self) -> None:
        """Finish the quarantines a previous run left half done (training is redone by
        :meth:`scan`, which finds the span's status still ``training``)."""
        for key, entry in list(self.spans.items()):
            if entry.get("status") != "quarantining":
                continue
            path = self._config.directory / entry["file"]
            # Moved already, or another file has taken its name since: nothing to move.
            ours = path.exists() and key.endswith("@" + _sha256(path)[:16])
            anomalies = anomalies_pb2.Anomalies()
            text_format.Parse(
                (self._span_dir(key) / "anomalies.pbtxt").read_text(encoding="utf-8"), anomalies
            )
            self._quarantine(path, key, anomalies, move=ours)
