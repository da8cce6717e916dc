"""The round lifecycle: open -> collecting -> aggregating -> committed | failed.

- open: waiting for ``min_available_clients`` registered (not revoked) clients; then the
  :class:`~coordinator.selection.ClientSelector` picks up to ``clients_per_round`` of them
  (by default at random from the seeded generator), each gets a train task carrying the
  round's ``task_options`` (and its codec, :meth:`RoundConfig.compression_task_options`),
  and the collecting deadline starts. An open round has a deadline too
  (``deadline_seconds`` after it opened): a round still waiting then fails with "too few
  clients: N available, M needed".
- collecting: accepted updates are on disk and in the store (see the service's intake).
  With ``stats_every_round`` (not in a secure round) each selected client also has a
  ``stats`` task, created before its train task.
  The round closes when every selected client reported, or at the deadline; then, with
  ``quarantine``, the updates of clients whose latest statistics show anomalies are
  quarantined (:mod:`coordinator.quarantine`: kept, not aggregated, counted in the
  measurement ``quarantined_updates``), and a round left with fewer than ``min_clients``
  updates to aggregate fails. A secure
  round (``secure_aggregation``) collects through the SecAgg+ stages of
  :mod:`coordinator.secagg` instead, each with its tasks and deadline, and is aggregated
  from the unmasked sum: one update of the survivors' summed example count.
- aggregating: the round config's strategy (:mod:`fedge.strategy`) does the work: the
  stored updates are decoded one at a time with the round's codec
  (:func:`~coordinator.codecs.decode_update`) and streamed through its fresh aggregator
  (FedAvg: O(model) memory; median, trimmed mean and Krum hold the round's updates,
  O(clients x model)), its server
  optimizer steps from the base version's persisted state, and its metrics aggregation
  summarizes the clients' metrics overall and per region; the new weights, state and
  derived manifest are written before the version is registered.
- gating (a gated round, :meth:`RoundConfig.gated`): the new version is registered as a
  candidate and the gate (:mod:`coordinator.gate`) evaluates it on the cloud holdout and
  a federated holdout cohort; it is promoted (the round commits) only when it is not worse
  than its parent by more than ``gate_margin``, else kept as a ``rejected`` version and the
  round fails with the gate's reason. The gate's progress is on the candidate's record.
- committed: a new registry version (promoted when ``promotes_on_commit``), with its
  privacy record (:mod:`coordinator.privacy`): a DP round (``dp_noise_multiplier``) is
  aggregated by :class:`~fedge.strategy.DPFedAvg` around the round's strategy, its noise
  drawn from a generator seeded by the OS's CSPRNG, its adaptive clip carried in the server
  state; the sampling rate and delta are fixed when the round starts (kept in its
  ``measurements`` as ``dp_sampling_rate``, ``dp_delta`` and ``dp_population``).
- privacy budget (``privacy_budget``): a round whose commit would take the production
  lineage's epsilon over the budget, or any round without DP, fails before it starts with
  "privacy budget exhausted: epsilon would be X, budget Y" and a
  ``privacy_budget_exhausted`` alert; continuous mode then opens no new round while the
  production version and the round defaults stay as they are (no loop of failing rounds).
- failed: too few clients to start, fewer than ``min_clients`` updates by the deadline,
  cancelled by an operator, or any error while aggregating or committing (a non-finite
  result included); the global model is unchanged, the reason recorded and a
  ``round_failed`` alert raised. A failure never wedges the engine: the next round opens.

- async (``mode`` ``async``, FedBuff): a round is a buffer that starts collecting at once
  on production, selects nobody and has no deadline; the service hands a train task of
  the buffer to any client that polls without one (:meth:`RoundEngine.buffer_task`), and
  an update of an earlier buffer's task goes into the collecting one. It closes when
  ``buffer`` updates are in (the quarantine judges them as above) and commits the
  staleness-weighted mean (:mod:`fedge.fedbuff`; the staleness of an update is the number
  of versions on production's lineage since its task's version), recorded in its
  measurements (``staleness_mean``, ``staleness_max``); its open tasks stay open.
Every transition is saved before the next step, so after a crash :meth:`tick` resumes a
round where it stopped: an aggregating round is aggregated again from its stored updates
(and fails with its reason when that cannot succeed).
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import logging
import math
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from coordinator import privacy
from coordinator.alerts import AlertMonitor
from coordinator.artifacts import ArtifactStore
from coordinator.codecs import decode_update
from coordinator.config import RoundConfig
from coordinator.errors import ConflictError, NotFoundError
from coordinator.gate import Gate
from coordinator.records import (
    ACTIVE_ROUND_STATES,
    ModelRecord,
    RoundRecord,
    RoundState,
    TaskRecord,
    UpdateRecord,
)
from coordinator.registry import SERVER_STATE, ModelRegistry
from coordinator.secagg import SecureOutcome, SecureRounds
from coordinator.selection import ClientSelector, check_selection
from coordinator.store import Store
from fedge.errors import AggregationError, FedgeError
from fedge.fedbuff import FedBuffBuffer, FedBuffConfig
from fedge.messages import TaskConfig
from fedge.server_optimizers import ServerState
from fedge.strategy import ClientMetrics, DPFedAvg, Strategy
from fedge.weights import Weights

__all__ = ["RoundEngine", "stats_task_id", "train_task_id"]

logger = logging.getLogger(__name__)


def train_task_id(round_id: int, client_id: str) -> str:
    return f"r{round_id}-{client_id}"


def stats_task_id(round_id: int, client_id: str) -> str:
    """The id of a round's statistics task (``RoundConfig.stats_every_round``)."""
    return f"r{round_id}-{client_id}-stats"


class RoundEngine:
    """Drives rounds through their states; every public method is called under the
    service's lock."""

    def __init__(
        self,
        *,
        store: Store,
        artifacts: ArtifactStore,
        registry: ModelRegistry,
        alerts: AlertMonitor,
        defaults: RoundConfig,
        now: Callable[[], float],
        rng: np.random.Generator,
        selector: ClientSelector,
        quarantine: Callable[[RoundRecord], list[UpdateRecord]] | None = None,
        privacy_budget: float | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._store = store
        self._gate = (
            gate if gate is not None else Gate(store=store, registry=registry, now=now, rng=rng)
        )
        self._privacy_budget = privacy_budget
        self._artifacts = artifacts
        self._registry = registry
        self._alerts = alerts
        self._defaults = defaults
        self._now = now
        self._rng = rng
        self._selector = selector
        self._quarantine = quarantine
        self._fresh_states: set[tuple[str, str]] = set()
        self._secure = SecureRounds(
            store=store, artifacts=artifacts, now=now, rng=rng, fail=self._fail
        )

    def open(self, overrides: Mapping[str, Any] | None = None) -> RoundRecord:
        active = self._store.list_rounds(ACTIVE_ROUND_STATES)
        if active:
            raise ConflictError(
                f"round {active[0].round_id} is still {active[0].state}; one round at a time",
                code="round_active",
            )
        config = self._defaults.merged(overrides or {})
        now = self._now()
        round_ = self._store.add_round(
            RoundRecord(
                round_id=0,
                state="open",
                config=config,
                opened_at=now,
                deadline=now + config.deadline_seconds,
            )
        )
        logger.info("opened round %d", round_.round_id)
        return self._advance(round_)

    def tick(self) -> None:
        """Advance every active round as far as the clock and the updates allow; in
        continuous mode open the next round when none is active."""
        active = self._store.list_rounds(ACTIVE_ROUND_STATES)
        for round_ in active:
            self._advance(round_)
        if self._defaults.continuous and not self._store.list_rounds(ACTIVE_ROUND_STATES):
            if self._budget_spent():
                return
            self.open()

    def cancel(self, round_id: int) -> RoundRecord:
        """Fail an active round at an operator's request; its pending tasks expire."""
        round_ = self._store.get_round(round_id)
        if round_ is None:
            raise NotFoundError(f"no round {round_id}", code="round_not_found")
        if not round_.active:
            raise ConflictError(
                f"round {round_id} is already {round_.state}; only an active round "
                "(open, collecting, aggregating, gating) can be cancelled",
                code="round_closed",
            )
        return self._fail(round_, "cancelled by an operator")

    def fail_superseded(self, production: str) -> None:
        """Fail active rounds built on a version that is no longer production."""
        for round_ in self._store.list_rounds(("collecting", "aggregating", "gating")):
            if round_.base_version != production:
                self._fail(round_, f"base version {round_.base_version} is no longer production")

    # Transitions --------------------------------------------------------------------------

    def _advance(self, round_: RoundRecord) -> RoundRecord:
        if round_.state == "open":
            round_ = self._start(round_)
        if round_.state == "collecting":
            round_ = self._maybe_close(round_)
        if round_.state == "aggregating":
            round_ = self._aggregate(round_)
        if round_.state == "gating":
            round_ = self._decide(round_)
        return round_

    def _start(self, round_: RoundRecord) -> RoundRecord:
        config = round_.config
        if config.buffered:
            return self._start_buffer(round_)
        clients = [c.client_id for c in self._store.list_clients() if not c.revoked]
        if len(clients) < config.clients_to_start:
            deadline = round_.deadline
            if deadline is None:  # opened by a version that gave open rounds no deadline
                deadline = round_.opened_at + config.deadline_seconds
            if self._now() >= deadline:
                return self._fail(
                    round_,
                    f"too few clients: {len(clients)} available, {config.clients_to_start} needed",
                )
            return round_
        base = self._registry.production()
        population = len(clients)
        rate = privacy.sampling_rate(config.clients_per_round, population)
        delta = (
            config.dp_delta if config.dp_delta is not None else privacy.default_delta(population)
        )
        refusal = self._budget_refusal(config, base, rate, delta)
        if refusal is not None:
            return self._refuse(dataclasses.replace(round_, base_version=base.version), refusal)
        count = min(config.clients_per_round, len(clients))
        selected = check_selection(
            self._selector.select(round_.round_id, tuple(clients), count, self._rng),
            clients,
            round_id=round_.round_id,
            count=count,
            min_count=config.min_clients,
        )
        now = self._now()
        deadline = now + config.deadline_seconds
        batch = config.batch_size or self._registry.manifest(base).train_batch_size
        task_config = TaskConfig(
            epochs=config.epochs,
            batch_size=batch,
            learning_rate=config.learning_rate,
            max_examples=config.max_examples,
            options={
                **config.task_options,
                **config.compression_task_options(),
                **config.dp_task_options(),
            },
        )
        tasks, secagg = {c: task_config for c in selected}, None
        if config.secure_aggregation:  # see coordinator.secagg
            weights = self._registry.weights(base)
            tasks, secagg = self._secure.begin(config, weights, selected, task_config)
        with self._store.transaction():
            if config.stats_every_round and secagg is None:  # first: the oldest is answered first
                self._add_stats_tasks(round_.round_id, selected, base.version, now, deadline)
            for client_id in selected:
                self._store.add_task(
                    TaskRecord(
                        task_id=train_task_id(round_.round_id, client_id),
                        kind="train",
                        client_id=client_id,
                        model_version=base.version,
                        config=tasks[client_id],
                        created_at=now,
                        deadline=deadline,
                        round_id=round_.round_id,
                    )
                )
            started = dataclasses.replace(
                round_,
                state="collecting",
                base_version=base.version,
                collecting_at=now,
                deadline=deadline,
                selected=selected,
                secagg=secagg,
                measurements={
                    "dp_sampling_rate": rate,
                    "dp_delta": delta,
                    "dp_population": float(population),
                },
            )
            self._store.save_round(started)
            self._registry.mark_deployed(base.version)
        logger.info(
            "round %d collecting from %d clients on %s until %.0f",
            round_.round_id,
            len(selected),
            base.version,
            deadline,
        )
        return started

    def _maybe_close(self, round_: RoundRecord) -> RoundRecord:
        if round_.secagg is not None:  # the secure stages close themselves
            return self._secure.advance(round_)
        # Pending tasks before the count: an update and the completion of its task are one
        # write (maybe another replica's), so once no task is pending every update counts.
        no_pending = not round_.config.buffered and self._no_train_task_pending(round_)
        received = self._store.count_updates(round_.round_id)
        needed = round_.config.min_clients
        if round_.config.buffered:  # a buffer closes when it is full, never by a deadline
            if received < round_.config.buffer:
                return round_
            needed = 1
        else:
            # Revoked clients' tasks expire: once no task is pending, no update can arrive.
            everyone = received >= len(round_.selected) or no_pending
            expired = round_.deadline is not None and self._now() >= round_.deadline
            if not (everyone or expired):
                return round_
            if received < needed:
                return self._fail(
                    round_,
                    f"only {received} of the {needed} required updates arrived by the deadline",
                )
        measurements = dict(round_.measurements)
        if round_.config.quarantine and self._quarantine is not None:
            try:
                held = len(self._quarantine(round_))
            except Exception as exc:  # the engine moves on (module docstring)
                logger.exception("round %d: judging the updates failed", round_.round_id)
                return self._fail(round_, f"the quarantine could not judge the updates: {exc}")
            measurements["quarantined_updates"] = float(held)
            if received - held < needed:
                return self._fail(
                    round_,
                    f"only {received - held} of the {needed} required "
                    f"updates can be aggregated: {held} of the {received} that arrived are "
                    "quarantined",
                )
        aggregating = dataclasses.replace(round_, state="aggregating", measurements=measurements)
        self._store.save_round(aggregating)
        return aggregating

    def _no_train_task_pending(self, round_: RoundRecord) -> bool:
        """No train task of the round is pending (its statistics tasks do not count)."""
        if not round_.config.stats_every_round:
            return self._store.count_tasks(round_id=round_.round_id, status="pending") == 0
        pending = self._store.list_tasks(round_id=round_.round_id, status="pending")
        return not any(task.kind == "train" for task in pending)

    def _add_stats_tasks(
        self, round_id: int, selected: tuple[str, ...], version: str, now: float, deadline: float
    ) -> None:
        """A ``stats`` task per selected client (``stats_every_round``), so that the
        quarantine judges every update by fresh statistics."""
        for client_id in selected:
            self._store.add_task(
                TaskRecord(
                    task_id=stats_task_id(round_id, client_id),
                    kind="stats",
                    client_id=client_id,
                    model_version=version,
                    config=TaskConfig(),
                    created_at=now,
                    deadline=deadline,
                    round_id=round_id,
                )
            )

    def _fail(self, round_: RoundRecord, reason: str) -> RoundRecord:
        failed = dataclasses.replace(
            round_, state="failed", closed_at=self._now(), failure_reason=reason
        )
        with self._store.transaction():
            if round_.state == "gating" and round_.result_version is not None:
                self._abandon_gate(round_.result_version, reason)
            self._store.save_round(failed)
            self._expire_tasks(round_.round_id)
        logger.warning("round %d failed: %s", round_.round_id, reason)
        self._alerts.round_failed(failed)
        return failed

    def _expire_tasks(self, round_id: int) -> None:
        for task in self._store.list_tasks(round_id=round_id, status="pending"):
            self._store.save_task(dataclasses.replace(task, status="expired"))

    def _aggregate(self, round_: RoundRecord) -> RoundRecord:
        """Aggregate and commit; any error on the way fails the round (never raises for
        what the updates, the base or the store hold), so the engine moves on."""
        try:
            return self._commit(round_)
        except Exception as exc:
            logger.exception("round %d: aggregating or committing failed", round_.round_id)
            reason = str(exc) if isinstance(exc, FedgeError) else f"{type(exc).__name__}: {exc}"
            return self._fail(round_, f"aggregation failed: {reason}")

    def _commit(self, round_: RoundRecord) -> RoundRecord:
        updates = [u for u in self._store.list_updates(round_.round_id) if not u.quarantined]
        base = self._registry.get(str(round_.base_version))
        config = round_.config
        weights = self._registry.weights(base)
        strategy = self._strategy(config)
        state = self._server_state(base.artifacts.get(SERVER_STATE), strategy.server_optimizer_name)
        if state is None:
            state = strategy.init_server_state(weights)
        strategy = strategy.bind_state(state)
        secure: SecureOutcome | None = None
        if config.buffered:  # FedBuff: the staleness-weighted mean of the buffer
            new_weights, measured = self._aggregate_buffer(round_, updates, weights)
            new_state = state
        else:
            aggregator = strategy.new_aggregator(weights)
            if round_.secagg is not None:  # one update: the unmasked mean of the secure sum
                secure = self._secure.aggregate(round_, weights, aggregator)
            for update in updates:  # one decoded delta in memory at a time
                body = self._artifacts.get_bytes(update.sha256)
                delta = decode_update(body, config.compression, weights, max_bytes=len(body))
                aggregator.add(delta, update.num_examples)
                del body, delta  # gone before the next update is read
            result = strategy.aggregate(aggregator)
            del aggregator  # its sums are freed before the server step allocates
            new_weights, new_state = strategy.server_step(state, weights, result)
            measured = dict(result.measurements)
        new_weights.check_finite()
        client_metrics = self._client_metrics(updates) if secure is None else secure.client_metrics
        metrics = strategy.aggregate_metrics(client_metrics)
        _check_finite_metrics("metric", metrics.overall)
        for region, by_region in metrics.by_region.items():
            _check_finite_metrics(f"region {region!r} metric", by_region)
        _check_finite_metrics("measurement", measured)
        record = self._round_privacy(round_, base, secure)
        with self._store.transaction():
            current = self._store.get_round(round_.round_id)
            if current is not None:
                if current.state != round_.state:
                    return current  # another replica moved it on meanwhile: never twice
                round_ = current  # with the traffic other replicas counted meanwhile
            model = self._registry.register_round_version(
                base,
                new_weights,
                new_state.to_bytes(),
                round_id=round_.round_id,
                participants=len(updates) if secure is None else secure.participants,
                data_fingerprint=_fingerprint(updates) if secure is None else secure.fingerprint,
                stats_id=self._latest_stats_id(),
                trainer_host=socket.gethostname(),
                trainer_user=_user(),
                metrics=dict(metrics.overall),
                slice_metrics={region: dict(m) for region, m in metrics.by_region.items()},
                privacy=record,
            )
            measurements = {
                **round_.measurements,
                **measured,
                **(secure.measurements if secure is not None else {}),
            }
            if self._gate.gated(config):
                return self._begin_gate(round_, model, base, measurements)
            if config.promotes_on_commit:
                model = self._registry.promote(
                    model.version, detail=f"auto-promoted by round {round_.round_id}"
                )
            committed = dataclasses.replace(
                round_,
                state="committed",
                closed_at=self._now(),
                result_version=model.version,
                measurements=measurements,
            )
            self._store.save_round(committed)
            if not config.buffered:  # a buffer's tasks stay open: their updates go to the next
                self._expire_tasks(round_.round_id)
        logger.info(
            "round %d committed %s from %d updates", round_.round_id, model.version, len(updates)
        )
        return committed

    # Asynchronous buffers (FedBuff) -------------------------------------------------------

    def _start_buffer(self, round_: RoundRecord) -> RoundRecord:
        """An async round collects at once, from nobody in particular (tasks are handed out
        on demand: :meth:`buffer_task`), on production, without a deadline."""
        base = self._registry.production()
        started = dataclasses.replace(
            round_,
            state="collecting",
            base_version=base.version,
            collecting_at=self._now(),
            deadline=None,
            selected=(),
        )
        with self._store.transaction():
            self._store.save_round(started)
            self._registry.mark_deployed(base.version)
        logger.info("buffer %d collecting on %s", round_.round_id, base.version)
        return started

    def collecting_buffer(self) -> RoundRecord | None:
        """The async round collecting now, if any."""
        for round_ in self._store.list_rounds(("collecting",)):
            if round_.config.buffered:
                return round_
        return None

    def buffer_task(self, client_id: str) -> TaskRecord | None:
        """A train task on production for ``client_id`` in the collecting buffer, unless it
        already had one in this buffer, or an update of an earlier buffer's task of it went
        into this one (a second update of one client in a buffer would be refused), or there
        is no buffer."""
        round_ = self.collecting_buffer()
        if round_ is None or round_.base_version is None:
            return None
        task_id = train_task_id(round_.round_id, client_id)
        if self._store.get_task(task_id) is not None:
            return None
        if self._store.get_update(round_.round_id, client_id) is not None:
            return None
        config = round_.config
        base = self._registry.get(round_.base_version)
        now = self._now()
        task = TaskRecord(
            task_id=task_id,
            kind="train",
            client_id=client_id,
            model_version=base.version,
            config=TaskConfig(
                epochs=config.epochs,
                batch_size=config.batch_size or self._registry.manifest(base).train_batch_size,
                learning_rate=config.learning_rate,
                max_examples=config.max_examples,
                options={**config.task_options, **config.compression_task_options()},
            ),
            created_at=now,
            deadline=now + config.deadline_seconds,
            round_id=round_.round_id,
        )
        self._store.add_task(task)
        return task

    def expire_if_stale(self, task: TaskRecord) -> bool:
        """Expire ``task`` when it is a train task of an async buffer whose version is now
        more than ``max_staleness`` versions behind (its update would be refused), so that
        its client gets a fresh task; True when it did."""
        if task.kind != "train" or task.round_id is None:
            return False
        round_ = self._store.get_round(task.round_id)
        if round_ is None or not round_.config.buffered:
            return False
        if self.staleness(task.model_version, round_.config.max_staleness) is not None:
            return False
        self._store.save_task(dataclasses.replace(task, status="expired"))
        return True

    def staleness(self, version: str, limit: int) -> int | None:
        """Versions committed on production's lineage since ``version`` (None: it is not on
        the lineage within ``limit`` steps)."""
        model = self._registry.production()
        for steps in range(limit + 1):
            if model.version == version:
                return steps
            if model.parent is None:
                return None
            model = self._registry.get(model.parent)
        return None

    def _aggregate_buffer(
        self, round_: RoundRecord, updates: list[UpdateRecord], weights: Weights
    ) -> tuple[Weights, dict[str, float]]:
        config = round_.config
        buffer = FedBuffBuffer(
            FedBuffConfig(buffer_size=len(updates), max_staleness=config.max_staleness),
            weights,
            version=config.max_staleness,
        )
        commit = None
        for update in updates:  # one decoded delta in memory at a time
            task = self._store.get_task(update.task_id)
            tau = None if task is None else self.staleness(task.model_version, config.max_staleness)
            if tau is None:
                raise AggregationError(
                    f"the update of {update.client_id} is staler than max_staleness "
                    f"{config.max_staleness}"
                )
            body = self._artifacts.get_bytes(update.sha256)
            delta = decode_update(body, config.compression, weights, max_bytes=len(body))
            admission, commit = buffer.offer(update.task_id, delta, buffer.version - tau)
            if not admission.accepted:
                raise AggregationError(f"the update of {update.client_id}: {admission.detail}")
        if commit is None:
            raise AggregationError("the buffer holds no update to commit")
        measured = {
            "count": float(len(updates)),
            "total_weight": float(sum(u.num_examples for u in updates)),
            "buffer": float(config.buffer),
            "staleness_mean": commit.mean_staleness,
            "staleness_max": float(commit.max_staleness),
            "aggregate_norm": commit.weights.delta(weights).l2_norm(),
        }
        return commit.weights, measured

    # The gate ------------------------------------------------------------------------------

    def _begin_gate(
        self,
        round_: RoundRecord,
        candidate: ModelRecord,
        base: ModelRecord,
        measurements: Mapping[str, float],
    ) -> RoundRecord:
        """Store the candidate's pending gate, its cohort's tasks and the round in state
        ``gating`` (inside the commit's transaction), then try to decide at once."""
        document, tasks = self._gate.begin(round_, candidate, base)
        self._registry.set_gate(candidate.version, document)
        for task in tasks:
            self._store.add_task(task)
        gating = dataclasses.replace(
            round_, state="gating", result_version=candidate.version, measurements=measurements
        )
        self._store.save_round(gating)
        logger.info(
            "round %d registered candidate %s; the gate evaluates it (%d cohort tasks)",
            round_.round_id,
            candidate.version,
            len(tasks),
        )
        return gating

    def _decide(self, round_: RoundRecord) -> RoundRecord:
        """Promote or reject the round's candidate once the gate can decide."""
        version = str(round_.result_version)
        candidate = self._registry.get(version)
        if candidate.stage == "production":  # an operator promoted it meanwhile
            return self._close_gated(round_, "committed")
        if candidate.gate is None or candidate.gate.get("status") != "pending":
            return self._fail(round_, f"the gate of candidate {version} was lost")
        if round_.base_version != self._registry.production().version:
            return self._fail(round_, f"base version {round_.base_version} is no longer production")
        decided = self._gate.decide(round_, candidate.gate)
        if decided is None:
            return round_
        reason = str(decided["reason"])
        if decided["status"] != "passed":
            with self._store.transaction():
                self._registry.reject(version, reason, gate=decided)
                return self._fail(round_, f"the gate rejected {version}: {reason}")
        with self._store.transaction():
            self._registry.set_gate(version, decided)
            if round_.config.promotes_on_commit:  # else it stays a candidate that passed
                self._registry.promote(
                    version, detail=f"promoted by the gate of round {round_.round_id}: {reason}"
                )
            return self._close_gated(round_, "committed")

    def _close_gated(self, round_: RoundRecord, state: RoundState) -> RoundRecord:
        closed = dataclasses.replace(round_, state=state, closed_at=self._now())
        with self._store.transaction():
            self._store.save_round(closed)
            self._expire_tasks(round_.round_id)
        logger.info("round %d %s %s", round_.round_id, state, round_.result_version)
        return closed

    def _abandon_gate(self, version: str, reason: str) -> None:
        """A gating round failed for another reason: its candidate's gate says why."""
        model = self._store.get_model(version)
        if model is None or model.gate is None or model.gate.get("status") != "pending":
            return
        gate = {**model.gate, "status": "abandoned", "reason": reason, "decided_at": self._now()}
        self._registry.set_gate(version, gate)

    def _strategy(self, config: RoundConfig) -> Strategy:
        """The round's strategy, wrapped in DP-FedAvg when the round is DP."""
        strategy = config.strategy()
        dp = config.dp_config()
        if dp is None:
            return strategy
        rng = np.random.default_rng(secrets.randbits(128))  # the noise must be unpredictable
        return DPFedAvg(strategy, config=dp, rng=rng, secure=config.secure_aggregation)

    def _round_privacy(
        self, round_: RoundRecord, base: ModelRecord, secure: SecureOutcome | None
    ) -> dict[str, Any]:
        """The new version's privacy record, at the sampling rate and delta fixed when the
        round started (a round saved by an older coordinator: the population now).

        In a secure round each survivor brought 1/m of the noise's variance, so with s of m
        survivors the sum holds noise of multiplier z * sqrt(s / m): that is what is
        accounted. When it takes the lineage over the privacy budget the round fails
        instead of committing (AggregationError)."""
        config = round_.config
        rate = round_.measurements.get("dp_sampling_rate")
        delta = round_.measurements.get("dp_delta")
        if rate is None or delta is None:
            population = len([c for c in self._store.list_clients() if not c.revoked])
            rate = privacy.sampling_rate(config.clients_per_round, population)
            delta = config.dp_delta or privacy.default_delta(population)
        noise = config.dp_noise_multiplier
        if noise and secure is not None:
            noise *= math.sqrt(min(1.0, secure.participants / config.clients_per_round))
        record = privacy.round_privacy(base, noise_multiplier=noise, rate=rate, delta=delta)
        budget, epsilon = self._privacy_budget, record["epsilon"]
        if budget is not None and (epsilon is None or epsilon > budget):
            shown = "unbounded" if epsilon is None else f"{epsilon:.4g}"
            noised = (
                f" with the noise of {secure.participants} of {config.clients_per_round} clients"
                if secure is not None
                else ""
            )
            raise AggregationError(
                f"{privacy.BUDGET_EXHAUSTED}:{noised} epsilon would be {shown}, budget {budget:g}"
            )
        return record

    # The privacy budget -------------------------------------------------------------------

    def _budget_refusal(
        self, config: RoundConfig, base: ModelRecord, rate: float, delta: float
    ) -> str | None:
        """Why the budget refuses a round of ``config`` on ``base``, or None."""
        budget = self._privacy_budget
        if budget is None:
            return None
        if not config.dp_noise_multiplier:
            what = "the round has no DP" if config.dp_noise_multiplier is None else "z is 0"
            return (
                f"{privacy.BUDGET_EXHAUSTED}: epsilon would be unbounded ({what}), "
                f"budget {budget:g}"
            )
        ledger = privacy.lineage_ledger(base).plus(config.dp_noise_multiplier, rate)
        epsilon = ledger.epsilon(delta)
        if epsilon is None:
            return (
                f"{privacy.BUDGET_EXHAUSTED}: epsilon would be unbounded (the lineage of "
                f"{base.version} holds a round without DP), budget {budget:g}"
            )
        if epsilon > budget:
            return f"{privacy.BUDGET_EXHAUSTED}: epsilon would be {epsilon:.4g}, budget {budget:g}"
        return None

    def _refuse(self, round_: RoundRecord, reason: str) -> RoundRecord:
        self._alerts.privacy_budget_exhausted(round_, reason)
        return self._fail(round_, reason)

    def _budget_spent(self) -> bool:
        """Whether continuous mode must not open a round: the budget refuses the defaults
        on the production version and a round already failed for it on that version."""
        if self._privacy_budget is None:
            return False
        rounds = self._store.list_rounds(("failed",))
        last = max(rounds, key=lambda r: r.round_id) if rounds else None
        if last is None or not (last.failure_reason or "").startswith(privacy.BUDGET_EXHAUSTED):
            return False
        base = self._registry.production()
        if last.base_version != base.version:
            return False
        population = len([c for c in self._store.list_clients() if not c.revoked])
        config = self._defaults
        rate = privacy.sampling_rate(config.clients_per_round, population)
        delta = (
            config.dp_delta if config.dp_delta is not None else privacy.default_delta(population)
        )
        return self._budget_refusal(config, base, rate, delta) is not None

    def _server_state(self, digest: str | None, optimizer: str) -> ServerState | None:
        """The base version's server state, or None when there is none or it belongs to
        another server optimizer (the round config changed it: e.g. fedadam -> fedavg).

        ``optimizer`` is the server optimizer's name, not the aggregator's: a median round
        stepping with FedAdam carries ``fedadam``, one with the plain preset ``fedavg``.
        """
        if digest is None:
            return None
        state = ServerState.from_bytes(self._artifacts.get_bytes(digest))
        if state.optimizer == optimizer:
            return state
        if (digest, optimizer) not in self._fresh_states:  # once: rounds may share a base
            self._fresh_states.add((digest, optimizer))
            logger.info(
                "the server optimizer changed from %s to %s: its state starts afresh",
                state.optimizer,
                optimizer,
            )
        return None

    def _client_metrics(self, updates: list[UpdateRecord]) -> list[ClientMetrics]:
        """Each update's metrics with its example count and its client's region."""
        out = []
        for update in updates:
            client = self._store.get_client(update.client_id)
            region = client.region if client and client.region else None
            out.append(ClientMetrics(update.num_examples, update.metrics, region))
        return out

    def _latest_stats_id(self) -> int | None:
        reports = self._store.list_reports(kind="stats")
        return reports[-1].report_id if reports else None


def _check_finite_metrics(what: str, values: Mapping[str, float]) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise AggregationError(f"the aggregated {what} {name!r} is not finite ({value})")


def _fingerprint(updates: list[UpdateRecord]) -> str:
    """A content address of what went into the round: each client's update and count."""
    lines = sorted(f"{u.client_id}:{u.sha256}:{u.num_examples}" for u in updates)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
