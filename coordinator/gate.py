"""The gate: a round's candidate version is evaluated before it is promoted.

A gated round (:meth:`RoundConfig.gated <coordinator.config.RoundConfig.gated>`) registers
its aggregate as a candidate and moves to state ``gating`` instead of promoting it:

- **cloud holdout** (the service's :class:`HoldoutSet`): the candidate and its parent (the
  round's base version) score the holdout's rows at once, through
  :class:`coordinator.serving.model.ServedModel` by default (the path devices serve), and
  their accuracy is computed overall and per region (the holdout's region of each row);
- **federated holdout cohort** (``gate_clients`` > 0): that many registered clients not
  selected for the round, chosen at random among those the cohort rule lets the coordinator
  ask (none given an evaluate task in the last ``cohort_window_seconds``), split at random
  into two halves: one half gets an ``evaluate`` task for the candidate, the other for the
  parent, so that each device answers one evaluation (a device's policy answers at most
  one every few minutes) and each version is asked of at least ``min_cohort`` clients.
  When every task is answered (or declined), or ``gate_seconds`` have passed, the halves
  are compared: the example-weighted mean of ``gate_metric`` overall and per client
  region. Fewer than ``gate_min_reports`` reports for either version is a rejection: the
  candidate was not shown to be as good as its parent.

The candidate is promoted when, on every evaluation run, it is not worse than its parent by
more than ``gate_margin`` (absolute), overall and in every region both were measured in;
otherwise :meth:`ModelRegistry.reject <coordinator.registry.ModelRegistry.reject>` keeps it
as a ``rejected`` version with the reason, and the round fails with that reason (production
unchanged; a continuous service opens the next round, from production). The evaluation
(progress, then result) is stored on the candidate's record (``ModelRecord.gate``, see
:func:`gate_document`), and the round's state in the store, so a restarted coordinator
resumes a gate where it stopped.

Configuring it in process (e.g. a simulation on a simulated clock)::

    holdout = HoldoutSet.from_dataset(test_rows)           # raw columns, labels, regions
    service = CoordinatorService(
        store=MemoryStore(), artifacts=ArtifactStore(tmp), now=clock,
        config=ServiceConfig(task="digits", min_cohort=1,
                             rounds=RoundConfig(continuous=True, gate_margin=0.02,
                                                gate_clients=0)),
        holdout=holdout,                                     # turns the gate on
    )
    service.tick()   # opens, collects, aggregates; a cloud-only gate decides at once

With ``gate_clients`` > 0 the gate waits for the cohort's evaluation reports (clients
polling :meth:`~coordinator.service.CoordinatorService.next_task` get the evaluate tasks)
and decides on a later ``tick()``. ``serve --holdout FILE [--holdout-region-column COL]``
does the same for a server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coordinator.config import RoundConfig
from coordinator.records import ModelRecord, ReportRecord, RoundRecord, TaskRecord
from coordinator.registry import ModelRegistry
from coordinator.store import Store
from fedge.bundle import BundleManifest
from fedge.data import Dataset
from fedge.errors import DataError
from fedge.messages import TaskConfig

__all__ = [
    "Gate",
    "HoldoutScorer",
    "HoldoutSet",
    "compare_metrics",
    "gate_document",
    "gate_task_id",
    "holdout_metrics",
    "served_scores",
]

logger = logging.getLogger(__name__)

_TOLERANCE = 1e-9
"""Float noise allowed in a comparison: two equal models are never 'worse'."""


@dataclass(frozen=True, eq=False)
class HoldoutSet:
    """The cloud's labelled holdout rows: raw feature ``columns`` (as a device reads them,
    turned into model input by the bundle's feature spec), integer ``labels`` and, when
    known, the region of each row (``regions``: per-region accuracy)."""

    columns: Mapping[str, NDArray[Any]]
    labels: NDArray[np.int64]
    regions: NDArray[Any] | None = None
    name: str = "holdout"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.size == 0:
            raise DataError(
                f"holdout labels must be a non-empty 1-D integer array, got dtype "
                f"{labels.dtype} and shape {labels.shape}"
            )
        n = labels.shape[0]
        columns = {}
        for name, column in self.columns.items():
            array = np.array(column, copy=True)
            if array.ndim == 0 or array.shape[0] != n:
                raise DataError(f"holdout column {name!r} does not have the labels' {n} rows")
            array.flags.writeable = False
            columns[str(name)] = array
        if not columns:
            raise DataError("the holdout has no feature columns")
        regions = None
        if self.regions is not None:
            regions = np.asarray([str(r) for r in np.asarray(self.regions).ravel()], dtype=object)
            if regions.shape[0] != n:
                raise DataError(f"holdout regions: {regions.shape[0]} values for {n} rows")
        labels = labels.astype(np.int64)
        labels.flags.writeable = False
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "columns", MappingProxyType(columns))
        object.__setattr__(self, "regions", regions)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, region_column: str | None = None) -> HoldoutSet:
        """A data set's rows; regions from ``region_column`` (default: the schema's region
        column, when the data set holds it)."""
        column = region_column or dataset.schema.region
        if region_column is not None and region_column not in dataset.columns:
            raise DataError(
                f"the holdout has no region column {region_column!r}; it has "
                f"{sorted(dataset.columns)}"
            )
        regions = dataset.columns[column] if column and column in dataset.columns else None
        return cls(dict(dataset.columns), dataset.labels, regions, name=dataset.name)

    @classmethod
    def read(
        cls,
        path: str | os.PathLike[str],
        manifest: BundleManifest,
        *,
        label_names: Sequence[str] | None = None,
        region_column: str | None = None,
    ) -> HoldoutSet:
        """A CSV or TFRecord table read against the bundle's schema (labels: the bundle's
        ``label_names`` when it has them, else class ids), with its region column
        (``region_column``, else the schema's region column when the table has it)."""
        from fedge.data.tables import ColumnKind, read_csv_columns
        from fedge.data.user_table import read_table

        schema = manifest.schema
        names = tuple(label_names or (str(k) for k in range(schema.num_classes)))
        text = os.fspath(path)
        if label_names is None and text.endswith((".csv", ".csv.gz")):
            extra: dict[str, ColumnKind] = (
                {} if region_column is None else {region_column: "categorical"}
            )
            columns = read_csv_columns(path, schema=schema, extra=extra, label="required")
            dataset = Dataset.from_columns(name=os.path.basename(text), schema=schema,
                                           columns=columns)  # fmt: skip
        else:
            dataset = read_table(path, schema, names)
        return cls.from_dataset(dataset, region_column=region_column)


HoldoutScorer = Callable[[ModelRegistry, str, HoldoutSet], NDArray[np.float32]]
"""Scores (logits, ``[rows, classes]``) of a registry version on the holdout's rows."""


def served_scores(registry: ModelRegistry, version: str, holdout: HoldoutSet) -> NDArray[Any]:
    """The version's scores through the cloud's served model (what devices serve)."""
    from coordinator.serving.model import ServedModel

    return ServedModel.load(registry, version).predict_columns(holdout.columns)


def holdout_metrics(scores: NDArray[Any], holdout: HoldoutSet) -> dict[str, Any]:
    """Accuracy of ``scores`` on the holdout: overall and per region (with row counts)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(holdout):
        raise DataError(f"scores of shape {scores.shape} for a holdout of {len(holdout)} rows")
    hits = np.argmax(scores, axis=1) == holdout.labels
    regions: dict[str, dict[str, float]] = {}
    if holdout.regions is not None:
        for region in sorted(set(holdout.regions.tolist())):
            rows = holdout.regions == region
            regions[region] = {"accuracy": float(hits[rows].mean()), "examples": int(rows.sum())}
    return {"accuracy": float(hits.mean()), "examples": len(holdout), "regions": regions}


def compare_metrics(
    candidate: Mapping[str, Any],
    parent: Mapping[str, Any],
    *,
    metric: str,
    margin: float,
    what: str,
) -> list[str]:
    """Why ``candidate`` is worse than ``parent`` by more than ``margin`` (``metric``
    overall, then in each region both were measured in, unless both hold one region
    only); empty when it is not."""
    failures = []
    pairs = [("", candidate, parent)]
    shared = sorted(set(candidate.get("regions", {})) & set(parent.get("regions", {})))
    if len(shared) == 1 and len(candidate["regions"]) == len(parent["regions"]) == 1:
        shared = []  # one region holding every row says what the overall figure says
    pairs += [(f" in region {r!r}", candidate["regions"][r], parent["regions"][r]) for r in shared]
    for where, ours, theirs in pairs:
        if metric not in ours or metric not in theirs:
            continue
        if float(ours[metric]) < float(theirs[metric]) - margin - _TOLERANCE:
            failures.append(
                f"{what} {metric}{where} {float(ours[metric]):.4f} is below the parent's "
                f"{float(theirs[metric]):.4f} by more than the margin {margin:g}"
            )
    return failures


def gate_task_id(round_id: int, role: str, client_id: str) -> str:
    """The id of a gate evaluate task (``role``: candidate or parent)."""
    return f"g{round_id}-{role[0]}-{client_id}"


def gate_document(
    round_: RoundRecord, candidate: ModelRecord, parent: ModelRecord
) -> dict[str, Any]:
    """A pending gate's record: what ``ModelRecord.gate`` holds while it evaluates.

    Fields: ``status`` (pending, passed, rejected, abandoned), ``round_id``, ``parent``,
    ``metric``, ``margin``, ``cloud`` (null, or the ``candidate`` and ``parent`` holdout
    metrics, or an ``error``), ``federated`` (null, or the cohort's halves
    ``candidate_clients`` and ``parent_clients``, ``deadline``, ``min_reports``, and once
    decided the ``candidate`` and ``parent`` metrics with their ``reports`` counts, or an
    ``error``), ``reason`` and ``decided_at``.
    """
    config = round_.config
    return {
        "status": "pending",
        "round_id": round_.round_id,
        "candidate": candidate.version,
        "parent": parent.version,
        "metric": config.gate_metric,
        "margin": config.gate_margin,
        "cloud": None,
        "federated": None,
        "reason": None,
        "decided_at": None,
    }


@dataclass(frozen=True)
class _Cohort:
    candidate: tuple[str, ...] = ()
    parent: tuple[str, ...] = ()
    error: str | None = None


class Gate:
    """Evaluates round candidates: :meth:`begin` when the round registers one,
    :meth:`decide` on every tick until it returns the decision. Called under the
    service's lock, inside the round engine's transactions."""

    def __init__(
        self,
        *,
        store: Store,
        registry: ModelRegistry,
        now: Callable[[], float],
        rng: np.random.Generator,
        holdout: HoldoutSet | None = None,
        scorer: HoldoutScorer | None = None,
        min_cohort: int = 1,
        cohort_window_seconds: float = 0.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._now = now
        self._rng = rng
        self.holdout = holdout
        self._scorer = scorer if scorer is not None else served_scores
        self._min_cohort = min_cohort
        self._window = cohort_window_seconds

    def gated(self, config: RoundConfig) -> bool:
        return config.gated(cloud_holdout=self.holdout is not None)

    # Starting -----------------------------------------------------------------------------

    def begin(
        self, round_: RoundRecord, candidate: ModelRecord, parent: ModelRecord
    ) -> tuple[dict[str, Any], list[TaskRecord]]:
        """The pending gate document and the cohort's evaluate tasks (to store together
        with the round's ``gating`` state). The cloud holdout is evaluated here."""
        document = gate_document(round_, candidate, parent)
        if self.holdout is not None:
            document["cloud"] = self._cloud(candidate.version, parent.version)
        tasks: list[TaskRecord] = []
        config = round_.config
        if config.gate_clients > 0:
            cohort = self._cohort(round_)
            now = self._now()
            deadline = now + config.gate_deadline_seconds
            federated: dict[str, Any] = {
                "candidate_clients": list(cohort.candidate),
                "parent_clients": list(cohort.parent),
                "deadline": deadline,
                "min_reports": config.gate_min_reports,
                "error": cohort.error,
            }
            halves = (
                ("candidate", candidate.version, cohort.candidate),
                ("parent", parent.version, cohort.parent),
            )
            for role, version, clients in halves:
                for client_id in clients:
                    tasks.append(
                        TaskRecord(
                            task_id=gate_task_id(round_.round_id, role, client_id),
                            kind="evaluate",
                            client_id=client_id,
                            model_version=version,
                            config=TaskConfig(),
                            created_at=now,
                            deadline=deadline,
                            round_id=round_.round_id,
                        )
                    )
            document["federated"] = federated
        return document, tasks

    def _cloud(self, candidate: str, parent: str) -> dict[str, Any]:
        assert self.holdout is not None
        try:
            return {
                "candidate": holdout_metrics(
                    self._scorer(self._registry, candidate, self.holdout), self.holdout
                ),
                "parent": holdout_metrics(
                    self._scorer(self._registry, parent, self.holdout), self.holdout
                ),
            }
        except Exception as exc:  # whatever the models do, the candidate is not promoted
            logger.exception("the cloud holdout evaluation of %s failed", candidate)
            return {"error": f"the cloud holdout evaluation failed: {exc}"}

    def _cohort(self, round_: RoundRecord) -> _Cohort:
        """``gate_clients`` clients not selected for the round whom the cohort rule lets the
        coordinator ask for an evaluation now, in two random halves (each at least the
        minimum cohort)."""
        wanted = round_.config.gate_clients
        now = self._now()
        selected = set(round_.selected)
        eligible = sorted(
            c.client_id
            for c in self._store.list_clients()
            if not c.revoked and c.client_id not in selected and self._askable(c.client_id, now)
        )
        minimum = self._min_cohort if self._min_cohort > 1 else 1
        needed = max(wanted, 2 * minimum)
        if len(eligible) < needed:
            rule = f" (each half at least the minimum cohort of {minimum})" if minimum > 1 else ""
            return _Cohort(
                error=f"only {len(eligible)} clients outside the round can be asked to "
                f"evaluate now, {needed} needed{rule}"
            )
        chosen = [eligible[i] for i in self._rng.permutation(len(eligible))[:needed].tolist()]
        half = (needed + 1) // 2
        return _Cohort(tuple(sorted(chosen[:half])), tuple(sorted(chosen[half:])))

    def _askable(self, client_id: str, now: float) -> bool:
        if self._min_cohort <= 1 or self._window <= 0:
            return True
        return not any(
            task.kind == "evaluate" and now - task.created_at < self._window
            for task in self._store.list_tasks(client_id=client_id)
        )

    # Deciding -----------------------------------------------------------------------------

    def decide(self, round_: RoundRecord, document: Mapping[str, Any]) -> dict[str, Any] | None:
        """The decided gate document (``status`` passed or rejected, with its ``reason``),
        or None while the cohort may still report."""
        decided = dict(document)
        failures: list[str] = []
        metric, margin = str(decided["metric"]), float(decided["margin"])
        cloud = decided.get("cloud")
        if cloud is not None:
            if cloud.get("error"):
                failures.append(str(cloud["error"]))
            else:
                failures += compare_metrics(
                    cloud["candidate"], cloud["parent"], metric=metric, margin=margin,
                    what="cloud holdout",
                )  # fmt: skip
        federated = decided.get("federated")
        if federated is not None:
            outcome = self._federated(round_, federated, metric)
            if outcome is None:
                return None
            decided["federated"] = outcome
            if outcome.get("error"):
                failures.append(str(outcome["error"]))
            else:
                failures += compare_metrics(
                    outcome["candidate"], outcome["parent"], metric=metric, margin=margin,
                    what="federated cohort",
                )  # fmt: skip
        if cloud is None and federated is None:
            failures.append("no holdout to evaluate the candidate on")
        decided["decided_at"] = self._now()
        if failures:
            decided["status"], decided["reason"] = "rejected", "; ".join(failures)
        else:
            decided["status"] = "passed"
            decided["reason"] = (
                f"not worse than {decided['parent']} by more than {margin:g} {metric} "
                f"({_summary(decided)})"
            )
        return decided

    def _federated(
        self, round_: RoundRecord, federated: Mapping[str, Any], metric: str
    ) -> dict[str, Any] | None:
        outcome = dict(federated)
        if outcome.get("error"):
            return outcome
        ids = {
            gate_task_id(round_.round_id, role, c): (role, c)
            for role in ("candidate", "parent")
            for c in outcome[f"{role}_clients"]
        }
        now = self._now()
        waiting = any(
            task is not None and task.status == "pending" and task.deadline > now
            for task in (self._store.get_task(t) for t in ids)
        )
        if waiting and now < float(outcome["deadline"]):
            return None
        answers: dict[str, dict[str, ReportRecord]] = {"candidate": {}, "parent": {}}
        for report in self._store.list_reports(kind="evaluation"):
            if report.task_id in ids:
                role, client_id = ids[report.task_id]
                answers[role][client_id] = report
        for role in ("candidate", "parent"):
            outcome[role] = {
                **self._cohort_metrics(answers[role], metric),
                "reports": len(answers[role]),
            }
        minimum = int(outcome["min_reports"])
        short = [
            f"{len(answers[role])} of the {len(outcome[f'{role}_clients'])} clients asked to "
            f"evaluate the {role}"
            for role in ("candidate", "parent")
            if len(answers[role]) < minimum
        ]
        if short:
            outcome["error"] = (
                f"only {' and '.join(short)} answered by the deadline, {minimum} needed for "
                "each (gate_min_reports)"
            )
        return outcome

    def _cohort_metrics(self, reports: Mapping[str, ReportRecord], metric: str) -> dict[str, Any]:
        """The example-weighted mean of ``metric`` over the reports, overall and per client
        region."""
        totals: dict[str | None, list[float]] = {}
        for client_id, report in reports.items():
            examples = float(report.document.get("num_examples", 0))
            value = report.document.get("metrics", {}).get(metric)
            if value is None or examples <= 0:
                continue
            client = self._store.get_client(client_id)
            for key in {None, client.region if client is not None else None}:
                total = totals.setdefault(key, [0.0, 0.0])
                total[0] += float(value) * examples
                total[1] += examples
        overall = totals.get(None, [0.0, 0.0])
        out: dict[str, Any] = {"examples": int(overall[1]), "regions": {}}
        if overall[1] > 0:
            out[metric] = overall[0] / overall[1]
        for key, (weighted, examples) in sorted(
            ((k, v) for k, v in totals.items() if k is not None), key=lambda kv: str(kv[0])
        ):
            out["regions"][str(key)] = {metric: weighted / examples, "examples": int(examples)}
        return out


def _summary(document: Mapping[str, Any]) -> str:
    metric = str(document["metric"])
    parts = []
    for what in ("cloud", "federated"):
        part = document.get(what)
        if part and metric in part.get("candidate", {}):
            parts.append(
                f"{what}: {float(part['candidate'][metric]):.4f} vs "
                f"{float(part['parent'][metric]):.4f}"
            )
    return ", ".join(parts) or "no measurements"
