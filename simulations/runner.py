"""One simulation run as a plain function: settings -> scenario -> engine -> report.

:func:`simulate` checks the settings (:mod:`simulations.settings`), prepares the scenario
(:mod:`simulations.preparation`), runs the chosen engine and adds the baselines; nothing is
written here. The CLI (:mod:`simulations.cli`) only parses, writes and prints.

Settings without ``workers`` let :func:`simulate` choose (:func:`choose_workers`): the
clients run in this process when their training is small, where starting worker
processes would cost more than it saves, else in ``AUTO_WORKERS`` worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_client import EdgeModel, PersonalizationConfig
from fedge.weights import Weights
from simulations.baseline import evaluate_head, matching_epochs, train_centrally
from simulations.inputs import files
from simulations.native_engine import NativeOptions, run_native
from simulations.preparation import Step, prepare_scenario
from simulations.report import EngineResult, ProgressSink, RoundStats, RunReport
from simulations.scenario import Scenario, build_workload, initial_head
from simulations.secure_stages import Dropout
from simulations.settings import CheckedInputs, Settings, check_settings

__all__ = ["AUTO_WORKERS", "IN_PROCESS_SECONDS", "choose_workers", "run_engine", "simulate"]

logger = logging.getLogger(__name__)

AUTO_WORKERS = 2
"""Worker processes of a run whose clients' training is not small (and of the ray engine's
actors) when the settings leave ``workers`` unset."""
IN_PROCESS_SECONDS = 3.0
"""The clients' estimated training CPU time under which a run with ``workers`` unset runs
them in this process: starting two worker processes costs about as much."""
_TRAIN_COST = 3.0
"""A training example's cost in units of an inference of it (forward, backward, update)."""


def run_engine(
    scenario: Scenario,
    settings: Settings,
    *,
    progress: ProgressSink | None = None,
    round_head: Callable[[int, Weights], None] | None = None,
) -> EngineResult:
    """Run ``scenario`` on the engine ``settings`` names (``round_head``: see
    :attr:`NativeOptions.round_head`; the tff engine has none)."""
    if settings.engine == "tff":
        return _run_tff(scenario, progress)
    options = dataclasses.replace(_native_options(settings), round_head=round_head)
    if settings.engine == "ray":
        # Ray loads only for this engine.
        from simulations.ray_engine import RayOptions, run_ray

        return run_ray(
            scenario,
            options,
            RayOptions(
                address=settings.ray_address,
                num_cpus=settings.workers or AUTO_WORKERS,
                actors=settings.workers or AUTO_WORKERS,
            ),
            progress=progress,
        )
    return run_native(scenario, options, progress=progress)


def choose_workers(scenario: Scenario, settings: Settings, *, inference_seconds: float) -> int:
    """``settings.workers``, or when it is unset: 1 (the clients in this process) if their
    training is estimated under :data:`IN_PROCESS_SECONDS`, else :data:`AUTO_WORKERS`.

    The estimate: every scheduled client's training rows times the local epochs (and, with
    personalization, every client's rows times the personalization epochs), each at
    ``_TRAIN_COST`` times ``inference_seconds``, the measured CPU time of one test row's
    inference. The ray engine always gets ``AUTO_WORKERS`` actors. The choice changes no
    update; with several workers only the order in which the updates reach the
    aggregator varies (float sums).
    """
    if settings.workers is not None:
        return settings.workers
    if settings.engine != "native":
        return AUTO_WORKERS
    rows = {client: len(split.train) for client, split in scenario.partition.items()}
    examples = sum(rows[c] for participants in scenario.schedule for c in participants)
    examples *= scenario.hyperparams.epochs
    if settings.personalization:
        examples += sum(rows.values()) * settings.personalize_epochs
    estimate = examples * _TRAIN_COST * inference_seconds
    return 1 if estimate < IN_PROCESS_SECONDS else AUTO_WORKERS


def _native_options(settings: Settings) -> NativeOptions:
    return NativeOptions(
        workers=settings.workers or AUTO_WORKERS,
        aggregator=settings.aggregator,
        aggregator_options=dict(settings.aggregator_options),
        server_optimizer=settings.server_optimizer,
        server_optimizer_options=dict(settings.server_optimizer_options),
        store=settings.store,
        state_dir=settings.state_dir,
        personalization=settings.personalization,
        personalize=PersonalizationConfig(
            epochs=settings.personalize_epochs, learning_rate=settings.personalize_lr
        ),
        secure_aggregation=settings.secure_aggregation,
        secagg_clip=settings.secagg_clip,
        secagg_degree=settings.secagg_degree,
        secagg_threshold=settings.secagg_threshold,
        dropout=Dropout(settings.secagg_dropout, settings.secagg_dropout_stage),
        compression=settings.compression,
        compression_options=_compression_options(settings),
        dp_noise_multiplier=settings.dp_noise_multiplier,
        dp_clip=settings.dp_clip,
        dp_adaptive_clip=settings.dp_adaptive_clip,
        dp_clipped_count_stddev=settings.dp_clipped_count_stddev,
        dp_delta=settings.dp_delta,
        privacy_budget=settings.privacy_budget,
        transport=settings.transport,
    )


def _compression_options(settings: Settings) -> dict[str, float]:
    return {"fraction": settings.topk_fraction} if settings.compression == "topk" else {}


def _run_tff(scenario: Scenario, progress: ProgressSink | None) -> EngineResult:
    # Importing the TFF engine installs the reaper that stops TFF's worker_binary at exit.
    from simulations.tff_engine import keras_model_factory, run_tff

    started = time.perf_counter()
    workload = build_workload(scenario)
    model_fn = keras_model_factory(scenario.keras_model)
    rounds: list[RoundStats] = []
    total = scenario.num_rounds

    def on_round(metrics: Any) -> None:
        stats = RoundStats(
            round=metrics.round + 1,
            accuracy=metrics.test_accuracy,
            loss=None,
            participants=len(metrics.participants),
            bytes_up=None,
            bytes_down=None,
            seconds=metrics.seconds,
            train_loss=metrics.train_loss,
            clients=tuple(metrics.participants),
        )
        rounds.append(stats)
        if progress is not None:
            progress.round_finished(stats)
            if stats.round < total:
                progress.round_started(stats.round + 1, total, len(scenario.schedule[stats.round]))

    if progress is not None:
        progress.round_started(1, total, len(scenario.schedule[0]))
    result = run_tff(workload, model_fn=model_fn, on_round=on_round)
    return EngineResult(
        engine="tff",
        rounds=tuple(rounds),
        final_head=result.final_head,
        seconds=time.perf_counter() - started,
        details={"aggregator": "fedavg (tff.learning.algorithms.build_weighted_fed_avg)"},
    )


def simulate(
    settings: Settings,
    *,
    progress: ProgressSink | None = None,
    step: Step | None = None,
    inputs: CheckedInputs | None = None,
    weights_dir: Path | None = None,
) -> RunReport:
    """Check, prepare, run and measure one simulation. Nothing is written here, except
    with ``weights_dir`` (``--save-weights every-round``): the global weights after each
    round, ``round-0001.safetensors``, ... in the plain format of an init file, named as
    the user's model (:func:`~simulations.inputs.files.plain_weights`)."""
    checked = inputs if inputs is not None else check_settings(settings)
    scenario = prepare_scenario(settings, checked, step=step)
    round_head = None
    if weights_dir is not None:
        round_head = _weights_writer(weights_dir, files.user_weight_names(scenario.bundle_dir))
    say = step or (lambda _: None)
    model = EdgeModel.load(scenario.bundle_dir)
    test_x, test_y = scenario.test_arrays()
    start = initial_head(scenario.bundle_dir)
    evaluating = time.process_time()  # CPU time: what the work costs, however busy the host
    pretrained = evaluate_head(model, test_x, test_y, head=start)
    inference = (time.process_time() - evaluating) / len(test_y)
    settings = dataclasses.replace(
        settings, workers=choose_workers(scenario, settings, inference_seconds=inference)
    )
    say(
        f"{len(scenario.client_ids)} clients, {scenario.num_rounds} rounds on the "
        f"{settings.engine} engine"
    )
    result = run_engine(scenario, settings, progress=progress, round_head=round_head)
    final = evaluate_head(model, test_x, test_y, head=_in_head_order(result.final_head, start))
    centralized, epochs = None, None
    if settings.baseline:
        epochs = matching_epochs(scenario)
        say(f"centralized baseline: the same head on the clients' union for {epochs} epochs")
        rows = scenario.train_rows()
        union = scenario.pool.take(rows)
        head = train_centrally(
            model,
            model.transform(union.columns),
            union.labels,
            start=start,
            epochs=epochs,
            learning_rate=settings.learning_rate,
            seed=settings.seed,
        )
        centralized = evaluate_head(model, test_x, test_y, head=head)
    return RunReport(
        settings={
            **settings.to_dict(),
            **dict(scenario.details),
            "clients": len(scenario.client_ids),
            "rounds": scenario.num_rounds,
        },
        result=result,
        pretrained=pretrained,
        final=final,
        centralized=centralized,
        centralized_epochs=epochs,
        schedule=scenario.schedule,
        initial_label=_initial_label(settings),
    )


def _weights_writer(directory: Path, names: dict[str, str]) -> Callable[[int, Weights], None]:
    """Each round's file appears whole (a rename), without an fsync per round: that would
    cost a round's time again on a busy disk, and the CLI writes into a staging folder
    that it publishes only when the run succeeds."""
    directory.mkdir(parents=True, exist_ok=True)

    def write(number: int, head: Weights) -> None:
        path = directory / f"round-{number:04d}.safetensors"
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(files.plain_weights(head, names))
        os.replace(partial, path)

    return write


def _initial_label(settings: Settings) -> str:
    if settings.model_file is not None:
        return "initial (your model)"
    if settings.init_file is not None:
        return "initial (init file)"
    return "pretrained (proxy share)"


def _in_head_order(head: Weights, reference: Weights) -> Weights:
    head.validate_against(reference)
    return Weights.from_pairs((name, np.asarray(head[name])) for name in reference.names)
