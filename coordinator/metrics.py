"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Values are read from the store at scrape time, so they survive restarts and agree across
replicas that share a database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from coordinator.records import ROUND_STATES
from coordinator.store import Store

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
    return lines


def render_metrics(store: Store) -> str:
    """The exposition text for the coordinator's state in ``store``."""
    rounds = Counter(r.state for r in store.list_rounds())
    rejected = store.rejection_counts()
    models = store.list_models()
    production = [m for m in models if m.stage == "production"]
    alerts = Counter(a.kind for a in store.list_alerts())
    lines: list[str] = []
    lines += _family(
        "fedge_rounds",
        "gauge",
        "Rounds by state.",
        (({"state": s}, float(rounds.get(s, 0))) for s in ROUND_STATES),
    )
    lines += _family(
        "fedge_updates_accepted_total",
        "counter",
        "Client updates accepted.",
        [({}, float(store.count_updates()))],
    )
    lines += _family(
        "fedge_updates_rejected_total",
        "counter",
        "Client updates rejected, by the check that failed.",
        (({"reason": r}, float(n)) for r, n in sorted(rejected.items())),
    )
    lines += _family(
        "fedge_clients_registered",
        "gauge",
        "Registered clients.",
        [({}, float(store.count_clients()))],
    )
    lines += _family(
        "fedge_model_versions",
        "gauge",
        "Registered model versions.",
        [({}, float(len(models)))],
    )
    lines += _family(
        "fedge_current_model_info",
        "gauge",
        "The production model version (value 1; the version is the label).",
        (({"version": m.version}, 1.0) for m in production),
    )
    lines += _family(
        "fedge_current_model_seq",
        "gauge",
        "Sequence number of the production model version (vN -> N).",
        (({}, float(m.seq)) for m in production[-1:]),
    )
    lines += _family(
        "fedge_alerts_total",
        "counter",
        "Alerts raised, by kind.",
        (({"kind": k}, float(n)) for k, n in sorted(alerts.items())),
    )
    return "\n".join(lines) + "\n"
