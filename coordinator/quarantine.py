"""Quarantine: the updates of clients whose latest statistics show anomalies are held back.

When a round closes (:mod:`coordinator.rounds`, ``RoundConfig.quarantine``), each update's
client is judged by its latest ``stats`` report (received after its latest release, see
:meth:`Quarantine.release`): the report becomes tensorflow-metadata statistics
(:func:`~coordinator.dataval.statistics.to_tfmd`) and is validated with TFDV's semantics
(:func:`~coordinator.dataval.anomalies.validate`) against

- the schema the service was given (``serve --schema FILE``), used as it is, with skew
  measured against the training statistics where it sets skew comparators; else
- a schema inferred from the base version's training statistics (the bundle manifest's
  ``metadata["training_stats"]``, :func:`~coordinator.dataval.schema.infer_schema`) with a
  skew comparator on every feature: Jensen-Shannon divergence above
  ``RoundConfig.quarantine_numeric_threshold`` for a numeric feature, L-infinity distance
  above ``quarantine_categorical_threshold`` for a categorical one.

Any anomaly quarantines the update: its record says why (``"anomalies in pixels: ..."``),
its artifact stays, and it is not aggregated. A client without a statistics report, or a
base version without training statistics (and no configured schema), is not judged; nor is
a secure round, whose coordinator never holds an individual update.

The inferred schema is relaxed for what one device's privacy-protected report can say
(:mod:`edge_client.privacy`): its counts are noised and small bins suppressed, so the
presence constraint asks only that a feature be present (``min_fraction`` 0) and a string
domain tolerates unseen values up to the categorical threshold's share
(``min_domain_mass``); the label is left out, since non-iid clients' class mixes differ by
design. What separates a corrupted client from a clean non-iid one is then the shape of
its feature histograms. Measured on the digits task (20 Dirichlet(0.5) clients, device
policy ``stats_epsilon`` 8 and ``min_class_rows`` 100): clean clients' pixel divergence
stays at or below 0.15, while a sensor whose gain went up 16-fold measures 0.41 or more,
hence the default 0.3. A policy with more noise (a smaller ``stats_epsilon``) widens the
clean clients' spread: raise the threshold with it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from coordinator.records import ReportRecord, RoundRecord, UpdateRecord
from coordinator.registry import ModelRegistry
from coordinator.store import Store
from fedge.errors import FedgeError
from fedge.stats import DatasetStats

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

__all__ = ["MAX_REASON", "Quarantine", "reference_schema"]

logger = logging.getLogger(__name__)

MAX_REASON = 1000
"""The longest quarantine reason stored on an update."""


def reference_schema(
    training: statistics_pb2.DatasetFeatureStatisticsList,
    *,
    numeric_threshold: float,
    categorical_threshold: float,
) -> schema_pb2.Schema:
    """The schema inferred from ``training``, relaxed for one device's noised report and
    with a skew comparator on every feature (module docstring)."""
    from coordinator.dataval.edit import (
        comparator_kind,
        set_min_domain_mass,
        set_presence,
        set_skew,
    )
    from coordinator.dataval.schema import infer_schema

    schema = infer_schema(training)
    for feature in schema.feature:
        set_presence(schema, feature.name, 0.0)
        if comparator_kind(feature) == "infinity_norm":
            set_skew(schema, feature.name, categorical_threshold)
            if feature.WhichOneof("domain_info") is not None:
                set_min_domain_mass(schema, feature.name, 1.0 - categorical_threshold)
        else:
            set_skew(schema, feature.name, numeric_threshold)
    return schema


def _reason(anomalies: Any) -> str | None:
    """One line naming every anomalous feature and what is wrong with it, or None."""
    parts = [
        f"anomalies in {name}: {info.description or info.short_description}"
        for name, info in sorted(anomalies.anomaly_info.items())
    ]
    if not parts:
        return None
    text = "; ".join(parts)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class Quarantine:
    """Judges a closing round's updates by their clients' latest statistics.

    ``schema`` is the service's configured schema (None: inferred per base version from its
    training statistics). Every public method is called under the service's lock.
    """

    def __init__(
        self,
        *,
        store: Store,
        registry: ModelRegistry,
        now: Callable[[], float],
        schema: schema_pb2.Schema | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._now = now
        self._schema = schema
        self._references: dict[tuple[str, float, float], tuple[Any, Any] | None] = {}

    def judge(self, round_: RoundRecord) -> list[UpdateRecord]:
        """Quarantine the round's updates whose clients' latest statistics show anomalies
        (each saved with its reason); returns the round's updates held after judging.
        A released update is not judged again."""
        updates = self._store.list_updates(round_.round_id)
        reference = self._reference(round_) if round_.config.quarantine and updates else None
        if reference is None:
            return [u for u in updates if u.quarantined]
        latest = self._latest_reports({u.client_id for u in updates})
        held = []
        for update in updates:
            if update.quarantine is not None:
                if update.quarantined:
                    held.append(update)
                continue
            report = latest.get(update.client_id)
            if report is None:
                continue
            reason = self._anomalies(report, reference)
            if reason is None:
                continue
            marked = dataclasses.replace(update, quarantine=reason)
            self._store.save_update(marked)
            held.append(marked)
            logger.warning(
                "round %d: quarantined the update of client %s (statistics report %d): %s",
                round_.round_id,
                update.client_id,
                report.report_id,
                reason,
            )
        return held

    def release(self, client_id: str) -> list[UpdateRecord]:
        """Release the client's quarantined updates (they count again; the ones of a round
        still to be aggregated count in it) and clear its statistics so far: its later
        updates are judged by its next report."""
        now = self._now()
        released = [
            dataclasses.replace(update, released_at=now)
            for update in self._store.list_quarantined_updates(client_id)
        ]
        with self._store.transaction():
            for update in released:
                self._store.save_update(update)
        if released:
            logger.warning("released %d quarantined updates of client %s", len(released), client_id)
        return released

    # Judging ------------------------------------------------------------------------------

    def _latest_reports(self, clients: set[str]) -> dict[str, ReportRecord]:
        """Each client's latest statistics report received after its latest release."""
        cleared: dict[str, float] = {}
        for update in self._store.list_quarantined_updates(released=True):
            if update.released_at is not None and update.client_id in clients:
                cleared[update.client_id] = max(
                    update.released_at, cleared.get(update.client_id, update.released_at)
                )
        latest: dict[str, ReportRecord] = {}
        for report in self._store.list_reports(kind="stats"):
            if report.client_id in clients and report.received_at > cleared.get(
                report.client_id, float("-inf")
            ):
                latest[report.client_id] = report
        return latest

    def _reference(self, round_: RoundRecord) -> tuple[Any, Any] | None:
        """(schema, training statistics or None) for the round's base version, or None
        when there is nothing to validate against."""
        config = round_.config
        version = str(round_.base_version)
        key = (
            version,
            config.quarantine_numeric_threshold,
            config.quarantine_categorical_threshold,
        )
        if key not in self._references:
            self._references[key] = self._build_reference(version, config)
        return self._references[key]

    def _build_reference(self, version: str, config: Any) -> tuple[Any, Any] | None:
        from coordinator.dataval.statistics import to_tfmd

        manifest = self._registry.manifest(self._registry.get(version))
        document = manifest.metadata.get("training_stats")
        training = None
        if isinstance(document, Mapping):
            try:
                training = to_tfmd(DatasetStats.from_dict(document), name="training")
            except (FedgeError, ValueError, TypeError, KeyError) as exc:
                logger.warning("version %s: unusable training statistics: %s", version, exc)
        if self._schema is not None:
            return self._schema, training
        if training is None:
            return None
        schema = reference_schema(
            training,
            numeric_threshold=config.quarantine_numeric_threshold,
            categorical_threshold=config.quarantine_categorical_threshold,
        )
        return schema, training

    def _anomalies(self, report: ReportRecord, reference: tuple[Any, Any]) -> str | None:
        from coordinator.dataval.anomalies import validate
        from coordinator.dataval.statistics import to_tfmd

        schema, training = reference
        body = {k: v for k, v in report.to_dict()["document"].items() if k != "privacy"}
        try:
            stats = DatasetStats.from_dict(body)
            label = self._label_feature(schema, report)
            current = to_tfmd(stats, name=report.client_id, label=label)
            return _reason(validate(current, schema, serving=training))
        except (FedgeError, ValueError, TypeError, KeyError) as exc:  # an anomaly itself
            return f"statistics report {report.report_id} cannot be validated: {exc}"

    def _label_feature(self, schema: Any, report: ReportRecord) -> str | None:
        """The label's name when a configured schema lists it (then the label counts are
        validated too), else None."""
        if self._schema is None or report.model_version is None:
            return None
        label = self._registry.manifest(self._registry.get(report.model_version)).schema.label
        return label if any(f.name == label for f in schema.feature) else None
