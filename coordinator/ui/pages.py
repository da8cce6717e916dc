"""What each dashboard page shows, read through the service and its store (the same calls
as the REST API; lists through the store's page queries, so a page reads only its rows)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from coordinator.records import ClientRecord, ModelRecord, RoundRecord
from coordinator.service import CoordinatorService

__all__ = [
    "DEFAULT_PER_PAGE",
    "MAX_PER_PAGE",
    "Page",
    "accuracy_series",
    "alert_region",
    "alerts_page",
    "clients_page",
    "data_page",
    "drift_by_feature",
    "falling_behind",
    "feature_summary",
    "models_page",
    "overview",
    "region_accuracy",
    "round_label",
    "rounds_page",
    "state_key",
    "when",
]

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
_CHART_ROUNDS = 500
_THROUGHPUT_ROUNDS = 10
_LINEAGE_DEPTH = 20
_CLIENT_EVENTS = 20
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its rows, its number (from 1), its size and the list's length."""

    rows: list[T]
    number: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_next(self) -> bool:
        return self.number < self.pages

    @property
    def has_prev(self) -> bool:
        return self.number > 1

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


def when(seconds: float | None) -> str:
    """A time as the pages show it (UTC, to the second); empty for None."""
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def state_key(service: CoordinatorService, chart: str) -> str:
    """A short digest of what ``chart`` (accuracy, regions, drift) shows: it changes when a
    round is added or changes state or a version is registered (accuracy), production or
    the versions change (regions), an alert is raised (drift)."""
    store = service.store
    parts: tuple[object, ...]
    if chart == "accuracy":
        latest = store.page_rounds(offset=0, limit=1)
        newest = (latest[0].round_id, latest[0].state) if latest else None
        parts = (store.count_rounds(), newest, store.count_models())
    elif chart == "regions":
        production = _production(service)
        parts = (store.count_models(), production.version if production else None)
    else:
        parts = (store.count_alerts(),)
    return hashlib.sha256(repr((chart, parts)).encode()).hexdigest()[:16]


def _production(service: CoordinatorService) -> ModelRecord | None:
    models = service.store.list_models(stage="production")
    return models[-1] if models else None


def overview(service: CoordinatorService) -> dict[str, Any]:
    """The current round, its participants, throughput over the last finished rounds, the
    alerts, the fleet and the production version."""
    store = service.store
    service.tick()
    recent = store.page_rounds(offset=0, limit=_THROUGHPUT_ROUNDS)
    current = recent[0] if recent else None
    updates = store.count_updates(current.round_id) if current is not None else 0
    finished = [r for r in recent if r.closed_at is not None and r.state == "committed"]
    accepted = sum(store.count_updates(r.round_id) for r in finished)
    seconds = sum(max(0.0, (r.closed_at or r.opened_at) - r.opened_at) for r in finished)
    latest_alerts = store.page_alerts(offset=0, limit=5)
    production = _production(service)
    return {
        "current": current,
        "updates": updates,
        "rounds_total": store.count_rounds(),
        "finished": len(finished),
        "updates_per_minute": (60.0 * accepted / seconds) if seconds > 0 else None,
        "rounds_per_hour": (3600.0 * len(finished) / seconds) if seconds > 0 else None,
        "bytes_up": sum(r.bytes_up for r in finished),
        "alerts_total": store.count_alerts(),
        "latest_alerts": latest_alerts,
        "clients_total": store.count_clients(),
        "production": production,
        "epsilon": (production.privacy or {}).get("epsilon") if production else None,
        "privacy_budget": service.config.privacy_budget,
    }


def _page_of(total: int, number: int, per_page: int) -> tuple[int, int]:
    pages = max(1, math.ceil(total / per_page))
    number = min(number, pages)
    return number, (number - 1) * per_page


def rounds_page(service: CoordinatorService, number: int, per_page: int) -> dict[str, Any]:
    store = service.store
    service.tick()
    number, offset = _page_of(store.count_rounds(), number, per_page)
    rounds = store.page_rounds(offset=offset, limit=per_page)
    rows = []
    for round_ in rounds:
        model = store.get_model(round_.result_version) if round_.result_version else None
        metrics = dict(model.metrics) if model is not None else {}
        rows.append(
            {
                "round": round_,
                "updates": store.count_updates(round_.round_id),
                "accuracy": metrics.get("accuracy"),
                "loss": metrics.get("loss"),
            }
        )
    return {"page": Page(rows, number, per_page, store.count_rounds())}


def accuracy_series(
    service: CoordinatorService,
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Accuracy and loss of the versions rounds committed (the last 500), by round id."""
    models = service.store.page_models(offset=0, limit=_CHART_ROUNDS)
    points = sorted((m.round_id, m) for m in models if m.round_id is not None)
    x = [float(round_id) for round_id, _ in points]
    series: dict[str, list[float | None]] = {
        name: [m.metrics.get(name) for _, m in points] for name in ("accuracy", "loss")
    }
    return x, series


def region_accuracy(service: CoordinatorService) -> tuple[ModelRecord | None, dict[str, float]]:
    """The per-region accuracy of the production version (else the newest version with
    per-region metrics)."""
    model = _production(service)
    if model is None or not model.slice_metrics:
        newest = service.store.page_models(offset=0, limit=1)
        model = newest[0] if newest else model
    if model is None:
        return None, {}
    metric = service.config.alerts.accuracy_metric
    regions = {
        region: values[metric]
        for region, values in sorted(model.slice_metrics.items())
        if metric in values
    }
    return model, regions


def _lineage(service: CoordinatorService, model: ModelRecord | None) -> list[ModelRecord]:
    chain: list[ModelRecord] = []
    while model is not None and len(chain) < _LINEAGE_DEPTH:
        chain.append(model)
        model = service.store.get_model(model.parent) if model.parent else None
    return chain


def models_page(service: CoordinatorService, number: int, per_page: int) -> dict[str, Any]:
    store = service.store
    total = store.count_models()
    number, offset = _page_of(total, number, per_page)
    production = _production(service)
    return {
        "page": Page(store.page_models(offset=offset, limit=per_page), number, per_page, total),
        "production": production,
        "lineage": _lineage(service, production),
        "events": service.model_events(production.version)[-20:] if production else [],
    }


def falling_behind(
    client: ClientRecord, seen: tuple[float, str] | None, now: float, behind_seconds: float
) -> bool:
    """Whether a client (not revoked) has made no call for more than ``behind_seconds``:
    since it was last seen, or since it registered when it never was."""
    if client.revoked:
        return False
    last = seen[0] if seen is not None else client.registered_at
    return now - last > behind_seconds


def clients_page(
    service: CoordinatorService, number: int, per_page: int, *, behind_seconds: float = 600.0
) -> dict[str, Any]:
    """The page's clients with their last update, last seen and transport (``seen``), the
    ids of those falling behind (:func:`falling_behind`), and the history's last actions
    on clients (``client_events``, newest last)."""
    store = service.store
    total = store.count_clients()
    number, offset = _page_of(total, number, per_page)
    held: dict[str, int] = {}
    for update in store.list_quarantined_updates():
        held[update.client_id] = held.get(update.client_id, 0) + 1
    clients = store.page_clients(offset=offset, limit=per_page)
    ids = [c.client_id for c in clients]
    seen = store.clients_seen(ids)
    now = service.now()
    return {
        "page": Page(clients, number, per_page, total),
        "quarantined": held,
        "latest": store.latest_updates(ids),
        "seen": seen,
        "behind": {
            c.client_id
            for c in clients
            if falling_behind(c, seen.get(c.client_id), now, behind_seconds)
        },
        "behind_seconds": behind_seconds,
        "client_events": service.model_events("")[-_CLIENT_EVENTS:],
    }


def drift_by_feature(service: CoordinatorService) -> dict[str, dict[str, float]]:
    """Per feature, the largest PSI and mean shift of the data_drift alerts and how many
    reports drifted."""
    found: dict[str, dict[str, float]] = {}
    for alert in service.store.list_alerts(kind="data_drift"):
        columns = alert.details.get("columns", {})
        if not isinstance(columns, Mapping):
            continue
        for name, measures in columns.items():
            entry = found.setdefault(str(name), {"psi": 0.0, "mean_shift": 0.0, "reports": 0.0})
            entry["reports"] += 1
            if isinstance(measures, Mapping):
                for key in ("psi", "mean_shift"):
                    value = measures.get(key)
                    if isinstance(value, int | float):
                        entry[key] = max(entry[key], float(value))
    return dict(sorted(found.items()))


def data_page(service: CoordinatorService, number: int, per_page: int) -> dict[str, Any]:
    store = service.store
    total = store.count_reports(kind="stats")
    number, offset = _page_of(total, number, per_page)
    rows = []
    for report in store.page_reports(kind="stats", offset=offset, limit=per_page):
        document = report.document
        columns = document.get("columns", ())
        names = [str(c.get("name")) for c in columns if isinstance(c, Mapping)]
        rows.append({"report": report, "rows": document.get("num_rows"), "columns": names})
    newest = store.page_reports(kind="stats", offset=0, limit=1)
    return {
        "page": Page(rows, number, per_page, total),
        "drift": drift_by_feature(service),
        "latest": newest[0] if newest else None,
        "features": feature_summary(newest[0].document) if newest else [],
    }


def feature_summary(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per column of a statistics document: its kind, count, missing, and mean, standard
    deviation, min and max (numeric) or the number of categories and the commonest
    (categorical)."""
    summary = []
    for column in document.get("columns", ()):
        if not isinstance(column, Mapping):
            continue
        count = column.get("count") or 0
        row: dict[str, Any] = {
            "name": str(column.get("name")),
            "kind": column.get("kind"),
            "count": count,
            "missing": column.get("missing"),
        }
        if column.get("kind") == "numeric":
            m2 = column.get("m2")
            std = math.sqrt(m2 / count) if isinstance(m2, int | float) and count else None
            row.update(mean=column.get("mean"), std=std, min=column.get("min"))
            row["max"] = column.get("max")
        else:
            values = column.get("value_counts") or {}
            row["categories"] = len(values)
            row["top"] = max(values, key=lambda k: values[k]) if values else None
        summary.append(row)
    return summary


def alerts_page(service: CoordinatorService, number: int, per_page: int) -> dict[str, Any]:
    store = service.store
    total = store.count_alerts()
    number, offset = _page_of(total, number, per_page)
    alerts = store.page_alerts(offset=offset, limit=per_page)
    return {"page": Page(alerts, number, per_page, total)}


def alert_region(details: Mapping[str, Any]) -> str:
    region = details.get("region")
    return str(region) if region is not None else ""


def round_label(round_: RoundRecord | None) -> str:
    return f"round {round_.round_id}: {round_.state}" if round_ is not None else "no round yet"
