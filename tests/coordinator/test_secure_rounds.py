"""Secure-aggregation (SecAgg+) rounds in the service on a fake clock, over both stores.

20 clients with 1,950-value deltas. The rounds use ``secagg_degree`` 14 and
``secagg_threshold`` 8: every client has 14 neighbours, so when 6 of the 20 (30%) drop
out, each client still has at least 14 - 6 = 8 = t surviving (or answering) neighbours,
whatever graph the round draws; 30% dropout completes deterministically. Dropping 12
leaves 8 survivors with at most 7 surviving neighbours each (< t), and 13 silent at the
unmask stage leave at most 7 answering neighbours per survivor (< t): both fail
deterministically.

The bound: each client's quantized coordinate is off by less than one step ``2c / L``
(``MaskingConfig.error_bound``); the mean ``cap * S / N`` is therefore within
``cap * error_bound(m) / N`` of the FedAvg of the clipped deltas, plus float32 rounding
of the committed weights (1e-6 here).
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import requests

from coordinator.artifacts import ArtifactStore
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.errors import ConflictError, PermissionDeniedError
from coordinator.secagg import masking_config
from coordinator.service import CoordinatorService
from coordinator.sqlite_store import SQLiteStore
from coordinator.store import MemoryStore, Store
from fedge.errors import ConfigError
from fedge.weights import Weights
from tests.support.coordinator import (
    FakeClock,
    admin_call,
    build_service,
    serve_command,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)
from tests.support.secagg_client import (
    HttpTransport,
    SecureDevice,
    ServiceTransport,
    make_wide_bundle,
    run_stages,
)

SHAPES = {"head/kernel": (64, 30), "head/bias": (30,)}
DIMENSION = 64 * 30 + 30
CLIP = 0.05
CAP = 100
SECURE: dict[str, Any] = {
    "clients_per_round": 20,
    "min_clients": 5,
    "deadline_seconds": 600,
    "secure_aggregation": True,
    "secagg_clip": CLIP,
    "secagg_example_cap": CAP,
    "secagg_degree": 14,
    "secagg_threshold": 8,
    "secagg_stage_seconds": 60,
    "continuous": False,
    "auto_promote": False,
}
STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": lambda path: SQLiteStore(path / "state.db"),
}


def _service(tmp_path: Path, clock: FakeClock, store: str, **overrides: Any) -> CoordinatorService:
    if not (tmp_path / "bundle" / "manifest.json").exists():
        make_wide_bundle(tmp_path / "bundle", SHAPES)
    options = {**SECURE, **overrides}
    return build_service(tmp_path, clock=clock, store=STORES[store](tmp_path), **options)


def _devices(service: CoordinatorService, drop: dict[int, str] | None = None) -> list[SecureDevice]:
    """20 registered devices with their deltas; ``drop``: index -> the stage after which
    that device stops answering."""
    devices = []
    for i in range(20):
        client = service.authenticate(service.register_client().token)
        rng = np.random.default_rng(100 + i)
        vector = rng.normal(0.0, 0.03, DIMENSION)  # some values beyond the clip 0.05
        devices.append(
            SecureDevice(
                ServiceTransport(service, client),
                vector,
                num_examples=10 + 2 * i,
                seed=i,
                stop_after=(drop or {}).get(i),
                metrics={"loss": 0.1 * (i % 5)},
            )
        )
    return devices


def _weights(service: CoordinatorService, version: str) -> npt.NDArray[np.float64]:
    return service.registry.weights(service.get_model(version)).flatten()


def _fedavg(base: npt.NDArray[np.float64], devices: list[SecureDevice]) -> Any:
    total = sum(d.num_examples for d in devices)
    mean = sum(np.clip(d.vector, -CLIP, CLIP) * d.num_examples for d in devices) / total
    return base + mean


def _bound(survivors: list[SecureDevice]) -> float:
    config = masking_config(RoundConfig(**SECURE), DIMENSION)
    total = sum(min(d.num_examples, CAP) for d in survivors)
    return CAP * config.error_bound(len(survivors)) / total


def _digest(service: CoordinatorService) -> str:
    return hashlib.sha256(
        service.registry.weights(service.get_model("current")).to_bytes()
    ).hexdigest()


def _finish_stage(service: CoordinatorService, clock: FakeClock) -> None:
    clock.advance(61)  # past the stage deadline (secagg_stage_seconds 60)
    service.tick()


@pytest.mark.parametrize("store", sorted(STORES))
def test_secure_round_commits_the_fedavg_of_the_clipped_deltas(tmp_path: Path, store: str) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, store)
    devices = _devices(service)
    service.open_round()
    base = _weights(service, "v1")
    task = devices[0].transport.next_task()
    assert task is not None
    options = task["config"]["options"]
    assert options["secagg"] is True
    assert options["secagg_dimension"] == DIMENSION
    assert (options["secagg_quantization_bits"], options["secagg_modulus_bits"]) == (16, 24)
    run_stages(devices)
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    bound = _bound(devices)
    assert round_.measurements["secagg_survivors"] == 20
    assert round_.measurements["secagg_dropped"] == 0
    assert round_.measurements["secagg_error_bound"] == pytest.approx(bound)
    assert 1e-7 < bound < 1e-4
    committed = _weights(service, str(round_.result_version))
    expected = _fedavg(base, devices)
    assert np.max(np.abs(committed - expected)) <= bound + 1e-6
    # The clip matters: the plain mean of the unclipped deltas is farther than the bound.
    unclipped = base + sum(d.vector * d.num_examples for d in devices) / sum(
        d.num_examples for d in devices
    )
    assert np.max(np.abs(committed - unclipped)) > bound + 1e-6
    model = service.get_model(str(round_.result_version))
    assert model.participants == 20
    assert model.metrics == pytest.approx({"loss": np.mean([0.1 * (i % 5) for i in range(20)])})
    assert service.round_updates(1) == []  # no individual update is stored
    # The masked inputs (24-bit values: 3 bytes each) and the stage documents both ways.
    assert round_.bytes_up > 20 * (DIMENSION + 1) * 3
    assert round_.bytes_down > 20 * 14 * 100  # rosters and deliveries of 14 neighbours


@pytest.mark.parametrize("store", sorted(STORES))
def test_clients_dropping_before_the_masked_input_are_removed(tmp_path: Path, store: str) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, store)
    dropped = {i: "share" for i in range(0, 20, 3)[:6]}  # 6 of 20 never send a masked input
    devices = _devices(service, dropped)
    service.open_round()
    base = _weights(service, "v1")
    run_stages(devices, rounds=3)
    round_ = service.get_round(1)
    assert round_.secagg is not None
    assert round_.secagg["stage"] == "mask"
    _finish_stage(service, clock)
    assert service.get_round(1).secagg["stage"] == "unmask"  # type: ignore[index]
    run_stages(devices, rounds=1)
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    survivors = [d for i, d in enumerate(devices) if i not in dropped]
    assert round_.measurements["secagg_survivors"] == 14
    assert round_.measurements["secagg_dropped"] == 6
    committed = _weights(service, str(round_.result_version))
    assert np.max(np.abs(committed - _fedavg(base, survivors))) <= _bound(survivors) + 1e-6


@pytest.mark.parametrize("store", sorted(STORES))
def test_survivors_silent_at_the_unmask_stage_still_count(tmp_path: Path, store: str) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, store)
    silent = {i: "mask" for i in range(1, 20, 3)[:6]}  # masked input sent, no unmask answer
    devices = _devices(service, silent)
    service.open_round()
    base = _weights(service, "v1")
    run_stages(devices)
    assert service.get_round(1).state == "collecting"  # waiting for the silent six
    _finish_stage(service, clock)
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    assert round_.measurements["secagg_survivors"] == 20
    committed = _weights(service, str(round_.result_version))
    assert np.max(np.abs(committed - _fedavg(base, devices))) <= _bound(devices) + 1e-6


@pytest.mark.parametrize("store", sorted(STORES))
def test_too_many_dropouts_fail_the_round_and_keep_the_model(tmp_path: Path, store: str) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, store)
    devices = _devices(service, {i: "share" for i in range(12)})
    before = _digest(service)
    service.open_round()
    run_stages(devices)
    _finish_stage(service, clock)
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason is not None
    assert "surviving neighbours, fewer than the threshold 8" in round_.failure_reason
    assert _digest(service) == before
    assert [m.version for m in service.list_models()] == ["v1"]
    assert service.store.list_tasks(round_id=1, status="pending") == []


@pytest.mark.parametrize("store", sorted(STORES))
def test_fewer_than_t_shares_fail_with_a_clear_reason(tmp_path: Path, store: str) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, store)
    devices = _devices(service, {i: "mask" for i in range(13)})  # 7 answer the unmask stage
    before = _digest(service)
    service.open_round()
    run_stages(devices)
    _finish_stage(service, clock)
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason is not None
    assert "cannot recover the self-mask seed of client" in round_.failure_reason
    assert "threshold 8" in round_.failure_reason
    assert _digest(service) == before


def test_too_few_advertisers_fail_the_round(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, "memory", deadline_seconds=100)
    devices = _devices(service, {i: "advertise" for i in range(20)})
    service.open_round()
    for device in devices[:2]:
        device.step()
    clock.advance(101)
    service.tick()
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason == (
        "secure aggregation: only 2 clients advertised keys by the deadline, 5 needed "
        "(at least 3, and min_clients)"
    )


def test_a_restarted_service_resumes_between_stages(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, "sqlite")
    devices = _devices(service)
    service.open_round()
    base = _weights(service, "v1")
    run_stages(devices, rounds=2)  # advertise, share
    assert service.get_round(1).secagg["stage"] == "mask"  # type: ignore[index]
    service.store.close()
    restarted = CoordinatorService(
        store=SQLiteStore(tmp_path / "state.db"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(task="taxi", rounds=RoundConfig(**SECURE), seed=1),
        now=clock,
    )
    for device in devices:
        assert isinstance(device.transport, ServiceTransport)
        device.transport.service = restarted
    run_stages(devices, rounds=1)  # mask
    restarted.store.close()
    again = CoordinatorService(
        store=SQLiteStore(tmp_path / "state.db"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(task="taxi", rounds=RoundConfig(**SECURE), seed=2),
        now=clock,
    )
    assert again.get_round(1).secagg["stage"] == "unmask"  # type: ignore[index]
    for device in devices:
        assert isinstance(device.transport, ServiceTransport)
        device.transport.service = again
    run_stages(devices, rounds=1)  # unmask
    round_ = again.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    committed = _weights(again, str(round_.result_version))
    assert np.max(np.abs(committed - _fedavg(base, devices))) <= _bound(devices) + 1e-6


def test_a_payload_before_its_stage_is_a_conflict(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, "memory")
    devices = _devices(service)
    service.open_round()
    transport = devices[0].transport
    assert isinstance(transport, ServiceTransport)
    with pytest.raises(ConflictError, match="is at the advertise stage, not mask") as caught:
        service.secagg_payload(transport.client, 1, "mask")
    assert caught.value.code == "secagg_stage"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aggregator": "median"}, "needs the fedavg aggregator"),
        (
            {"aggregator": "trimmed_mean", "aggregator_options": {"trim_fraction": 0.1}},
            "fedavg aggregator",
        ),
        ({"compression": "topk"}, "cannot use compression 'topk'"),
        (
            {
                "clients_per_round": 2,
                "min_clients": 2,
                "secagg_degree": None,
                "secagg_threshold": None,
            },
            "clients_per_round >= 3",
        ),
        ({"secagg_degree": 5}, "secagg_degree must be even"),
        ({"secagg_degree": 20, "secagg_threshold": 11}, "must be below clients_per_round"),
        ({"secagg_threshold": 7}, "strict majority"),
        ({"secagg_clip": 0}, "secagg_clip"),
    ],
)
def test_secure_configs_that_cannot_work_are_refused(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RoundConfig(**{**SECURE, **overrides})


def test_server_optimizers_and_q8_combine_with_secure_aggregation() -> None:
    config = RoundConfig(**{**SECURE, "server_optimizer": "fedadam", "compression": "q8"})
    assert config.secagg_bits == (8, 16)  # 20 * max(255, 100) < 2^16
    capped = RoundConfig(**{**SECURE, "compression": "q8", "secagg_example_cap": 1000})
    assert (capped.secagg_cap, capped.secagg_bits) == (255, (8, 16))  # q8: the cap <= 255
    assert masking_config(capped, 10).example_cap == 255
    assert RoundConfig(**{**SECURE, "aggregator": "fedavgm"}).secure_aggregation
    big = RoundConfig(**{**SECURE, "clients_per_round": 1000, "secagg_example_cap": 10**6})
    assert big.secagg_bits == (16, 32)  # 1000 * 10^6 < 2^32


def test_an_open_round_refuses_a_secure_override_that_cannot_work(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, "memory")
    with pytest.raises(ConfigError, match="fedavg aggregator"):
        service.open_round({"aggregator": "median"})
    assert service.list_rounds() == []


def test_stage_requests_of_outsiders_are_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock, "memory")
    devices = _devices(service, {0: "advertise"})  # device 0 never shares its keys
    service.open_round()  # selects the 20
    outsider = service.authenticate(service.register_client().token)  # registered later
    assert outsider.client_id not in service.get_round(1).selected
    with pytest.raises(PermissionDeniedError) as refused:
        service.submit_secagg(
            outsider, 1, "advertise", task_id=f"r1-{outsider.client_id}",
            idempotency_key="key-outsider-1", document={}, body=None,
        )  # fmt: skip
    assert refused.value.code == "not_assigned"
    run_stages(devices, rounds=2)  # advertise; share without device 0
    _finish_stage(service, clock)  # the share stage closes at its deadline
    dropped = devices[0].transport
    assert isinstance(dropped, ServiceTransport)
    with pytest.raises(PermissionDeniedError) as skipped:
        service.secagg_payload(dropped.client, 1, "mask")
    assert skipped.value.code == "not_in_stage"
    assert service.get_round(1).state == "collecting"
    assert service.store.rejection_counts()["not_assigned"] == 1
    plain = _service(tmp_path / "plain", clock, "memory", secure_aggregation=False)
    client = plain.authenticate(plain.register_client().token)
    plain.open_round(
        {"clients_per_round": 3, "min_clients": 1, "min_available_clients": 1,
         "secagg_degree": None, "secagg_threshold": None}
    )  # fmt: skip
    with pytest.raises(ConflictError) as not_secure:
        plain.secagg_payload(client, 1, "share")
    assert not_secure.value.code == "round_not_secure"


def test_a_killed_server_resumes_the_secure_round_where_it_stopped(tmp_path: Path) -> None:
    make_wide_bundle(tmp_path / "bundle", SHAPES)
    settings = tmp_path / "round-config.json"
    settings.write_text(json.dumps({"secagg_clip": CLIP, "secagg_example_cap": CAP}))
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--secure-aggregation", "--on-demand", "--clients-per-round", "5", "--min-clients", "3",
        "--round-config", str(settings),
    )  # fmt: skip
    server = start_server(command, tmp_path)
    try:
        devices = []
        for i in range(5):
            token = requests.post(f"{server.url}/v1/clients", json={}, timeout=10).json()["token"]
            vector = np.random.default_rng(300 + i).normal(0.0, 0.03, DIMENSION)
            devices.append(SecureDevice(HttpTransport(server.url, token), vector, 15 + i, seed=i))
        base = Weights.from_bytes(
            admin_call(server.url, "GET", "/v1/models/v1/weights").content
        ).flatten()
        assert admin_call(server.url, "POST", "/v1/rounds", json={}).status_code == 201
        for _ in range(2):  # advertise, share
            for device in devices:
                assert wait_for(device.step) in ("advertise", "share")
        assert admin_call(server.url, "GET", "/v1/rounds/1").json()["secagg"]["stage"] == "mask"
        stop_server(server, signal.SIGKILL)
        server = start_server(command, tmp_path)
        for device in devices:
            assert isinstance(device.transport, HttpTransport)
            device.transport.url = server.url
        for _ in range(2):  # mask, unmask
            for device in devices:
                assert wait_for(device.step) in ("mask", "unmask")
        round_ = admin_call(server.url, "GET", "/v1/rounds/1").json()
        assert round_["state"] == "committed", round_["failure_reason"]
        committed = Weights.from_bytes(
            admin_call(server.url, "GET", f"/v1/models/{round_['result_version']}/weights").content
        ).flatten()
        bound = round_["measurements"]["secagg_error_bound"]
        assert np.max(np.abs(committed - _fedavg(base, devices))) <= bound + 1e-6
    finally:
        stop_server(server)
