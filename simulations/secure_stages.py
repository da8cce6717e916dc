"""A secure round in the native engine: the SecAgg+ stages between service and fleet.

The train tasks go to the fleet as in a plain round; each worker trains, then runs
:func:`edge_client.secure.begin` with the client's secret store and returns the keys to
advertise. For each later stage (share, mask, unmask) every client still in the protocol
asks the service for its stage task, the engine fetches the stage payload
(:meth:`~coordinator.CoordinatorService.secagg_payload`, the document the device would GET)
and the worker answers it with :func:`edge_client.secure.step`; every reply goes to
:meth:`~coordinator.CoordinatorService.submit_secagg` the moment it arrives.

A stage closes when every client expected in it answered; when one did not (a dropout, a
client-side failure, a rejected reply) the simulated clock moves past the stage deadline
so the service closes it then. :class:`Dropout` is the test knob: a seeded share of each
round's clients stops before sending its masked input (``mask``) or before answering the
unmask stage (``unmask``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator import CoordinatorService
from coordinator.records import ClientRecord
from fedge.errors import ConfigError, FedgeError
from fedge.validation import check_fraction
from simulations.fleet import Fleet, Job, Outcome
from simulations.report import ProgressSink

__all__ = ["STAGES", "Dropout", "SecureRoundResult", "run_secure_round"]

logger = logging.getLogger(__name__)

STAGES = ("share", "mask", "unmask")
"""The stages after training (which ends with the clients advertising their keys)."""


@dataclass(frozen=True)
class Dropout:
    """``fraction`` of each round's clients (a seeded draw) stop at ``stage``."""

    fraction: float = 0.0
    stage: str = "mask"

    def __post_init__(self) -> None:
        check_fraction(self.fraction, "the secure-aggregation dropout fraction")
        if self.stage not in ("mask", "unmask"):
            raise ConfigError(f"the dropout stage must be mask or unmask, got {self.stage!r}")

    def choose(self, clients: Sequence[str], rng: np.random.Generator) -> frozenset[str]:
        """The clients (of ``clients``) that drop out: ``round(fraction * n)`` of them."""
        count = round(self.fraction * len(clients))
        if count == 0:
            return frozenset()
        ordered = sorted(clients)
        picked = rng.choice(len(ordered), size=count, replace=False)
        return frozenset(ordered[int(i)] for i in picked)


@dataclass(frozen=True)
class SecureRoundResult:
    """Who took part: failed clients (their messages), and the replies the service refused."""

    failures: tuple[str, ...]
    rejected: int


def run_secure_round(
    service: CoordinatorService,
    fleet: Fleet,
    *,
    round_id: int,
    train_jobs: Sequence[Job],
    record: Callable[[str], ClientRecord],
    dropped: frozenset[str],
    dropout_stage: str,
    close_stage: Callable[[], None],
    progress: ProgressSink | None = None,
) -> SecureRoundResult:
    """Drive round ``round_id`` through its stages (module docstring).

    ``record(client)`` authenticates a simulated client; ``close_stage()`` moves the clock
    past the current stage's deadline; ``dropped`` clients stop at ``dropout_stage``.
    """
    failures: list[str] = []
    rejected = 0

    def submit(outcomes: Iterable[Outcome], expected_stage: str) -> set[str]:
        nonlocal rejected
        answered: set[str] = set()
        for outcome in outcomes:
            if progress is not None and expected_stage == "advertise":
                progress.client_done()
            if outcome.error is not None:
                failures.append(f"{outcome.client_id}: {outcome.error}")
                continue
            if outcome.stage != expected_stage:
                failures.append(
                    f"{outcome.client_id}: answered {outcome.stage}, not {expected_stage}"
                )
                continue
            try:
                service.submit_secagg(
                    record(outcome.client_id),
                    round_id,
                    expected_stage,
                    task_id=outcome.task_id,
                    idempotency_key=f"sim-{outcome.task_id}-{expected_stage}",
                    document=outcome.document,
                    body=outcome.body,
                    metrics=_metrics(outcome.metrics),
                )
            except FedgeError as exc:  # the service recorded its refusal
                rejected += 1
                logger.warning(
                    "the service refused %s's %s reply: %s", outcome.client_id, expected_stage, exc
                )
                continue
            answered.add(outcome.client_id)
        return answered

    asked = {job.client_id for job in train_jobs}
    live = submit(fleet.run(train_jobs), "advertise")
    for stage in STAGES:
        if live != asked:
            close_stage()
        if not service.get_round(round_id).active:
            return SecureRoundResult(tuple(failures), rejected)
        jobs = []
        for client in sorted(live):
            if client in dropped and stage == dropout_stage:
                continue
            task = service.next_task(record(client))
            if task is None or task.kind != f"secagg_{stage}" or task.round_id != round_id:
                # The service left this client out of the stage (it knows why).
                logger.info("client %s has no %s task in round %d", client, stage, round_id)
                continue
            payload = service.secagg_payload(record(client), round_id, stage)
            jobs.append(Job(client, task.to_dict(), payload))
        asked = live
        live = submit(fleet.run(jobs), stage)
    if live != asked:
        close_stage()
    return SecureRoundResult(tuple(failures), rejected)


def _metrics(metrics: Mapping[str, float]) -> Mapping[str, float] | None:
    return dict(metrics) if metrics else None
