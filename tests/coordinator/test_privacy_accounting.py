"""DP rounds on the coordinator: the accountant, the privacy record of every version, the
DP-FedAvg commit (clip, noise, fixed denominator), secure DP rounds and the privacy budget."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting import dp_event, rdp

from coordinator.auth import hash_token
from coordinator.config import RoundConfig
from coordinator.privacy import DPEvent, compute_epsilon, default_delta
from coordinator.registry import SERVER_STATE
from coordinator.rest import ApiConfig, create_app
from coordinator.secagg import masking_config
from coordinator.service import CoordinatorService
from edge_client.secure import privatize
from fedge.dp import DP_CLIP_SLOT
from fedge.errors import ConfigError
from fedge.server_optimizers import ServerState
from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    FakeClock,
    bearer,
    build_service,
    delta,
    submission,
)
from tests.support.secagg_client import SecureDevice, ServiceTransport, make_wide_bundle, run_stages

FloatArray = npt.NDArray[np.float64]


def _direct_epsilon(events: list[tuple[float, float, int]], delta: float) -> float:
    """What dp-accounting says, called here without the coordinator's code."""
    accountant = rdp.RdpAccountant()
    for z, q, rounds in events:
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), rounds)
    return float(accountant.get_epsilon(delta))


def _clients(service: CoordinatorService, n: int) -> None:
    for _ in range(n):
        service.register_client(region="north")


def _complete(
    service: CoordinatorService, round_id: int, bodies: dict[int, Weights] | None = None
) -> None:
    """Every selected client of ``round_id`` uploads (``bodies``: index -> its delta)."""
    round_ = service.get_round(round_id)
    assert round_.state == "collecting", round_.failure_reason
    for i, client_id in enumerate(round_.selected):
        client = service.store.get_client(client_id)
        assert client is not None
        body = (bodies or {}).get(i, delta(round_id * 100 + i, scale=0.001))
        service.submit_update(
            client, submission(round_id, client_id, seed=round_id * 100 + i, body=body.to_bytes())
        )


def _weights(service: CoordinatorService, version: str) -> FloatArray:
    return service.registry.weights(service.get_model(version)).flatten()


# The accountant ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "q", "rounds", "delta"),
    [(1.1, 0.01, 1000, 1e-5), (0.8, 0.1, 50, 1e-6), (2.0, 1.0, 3, 1e-5), (5.0, 0.3, 1, 0.01)],
)
def test_epsilon_matches_dp_accounting_called_directly(
    z: float, q: float, rounds: int, delta: float
) -> None:
    ours = compute_epsilon([DPEvent(z, q, rounds)], delta)
    assert ours == pytest.approx(_direct_epsilon([(z, q, rounds)], delta), rel=1e-9)
    assert 0.0 < ours < math.inf


def test_epsilon_composes_rounds_of_different_noise_and_sampling() -> None:
    events = [(1.0, 0.1, 5), (2.0, 0.05, 10)]
    ours = compute_epsilon([DPEvent(*e) for e in events], 1e-5)
    assert ours == pytest.approx(_direct_epsilon(events, 1e-5), rel=1e-9)
    assert ours > compute_epsilon([DPEvent(1.0, 0.1, 5)], 1e-5)


def test_default_delta_is_below_one_over_the_population() -> None:
    assert default_delta(1000) == pytest.approx(1000**-1.1)
    assert default_delta(1000) < 1 / 1000
    assert default_delta(0) == default_delta(2) < 1.0


# The privacy record of versions --------------------------------------------------------------


def test_each_dp_round_records_the_lineage_epsilon(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=3, min_clients=3, min_available_clients=6,
        dp_noise_multiplier=1.2, dp_delta=1e-5,
    )  # fmt: skip
    _clients(service, 6)  # q = 3 / 6
    assert service.get_model("v1").to_dict()["privacy"] == {
        "epsilon": 0.0, "delta": None, "noise_multiplier": None, "rounds": 0,
        "sampling_rate": None, "events": [],
    }  # fmt: skip
    _complete(service, 1)
    _complete(service, 2)
    for version, rounds in (("v2", 1), ("v3", 2)):
        privacy = service.get_model(version).privacy
        assert privacy is not None
        assert privacy["epsilon"] == pytest.approx(
            _direct_epsilon([(1.2, 0.5, rounds)], 1e-5), rel=1e-9
        )
        assert (privacy["delta"], privacy["noise_multiplier"]) == (1e-5, 1.2)
        assert (privacy["rounds"], privacy["sampling_rate"]) == (rounds, 0.5)
    round_ = service.get_round(2)
    assert round_.measurements["dp_sampling_rate"] == 0.5
    assert round_.measurements["dp_noise_stddev"] == pytest.approx(1.2 * 1.0)


def test_the_default_delta_follows_the_registered_population(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, min_available_clients=8,
                            dp_noise_multiplier=1.0)  # fmt: skip
    _clients(service, 8)
    _complete(service, 1)
    privacy = service.get_model("v2").privacy
    assert privacy is not None
    assert privacy["delta"] == pytest.approx(8**-1.1)
    assert privacy["epsilon"] == pytest.approx(_direct_epsilon([(1.0, 0.25, 1)], 8**-1.1), rel=1e-9)


def test_a_round_without_dp_leaves_its_lineage_without_a_guarantee(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=2, min_clients=2, continuous=False, auto_promote=True
    )
    _clients(service, 2)
    service.open_round()
    _complete(service, 1)
    service.open_round({"dp_noise_multiplier": 1.0, "dp_delta": 1e-5})
    _complete(service, 2)
    for version in ("v2", "v3"):
        privacy = service.get_model(version).privacy
        assert privacy is not None
        assert privacy["epsilon"] is None
        assert not privacy["events"]
    assert service.get_model("v3").privacy["rounds"] == 2  # type: ignore[index]


def test_get_model_shows_the_privacy_record(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=2, min_clients=2, min_available_clients=4,
        dp_noise_multiplier=2.0, dp_delta=1e-6,
    )  # fmt: skip
    _clients(service, 4)
    _complete(service, 1)
    http = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN))).test_client()
    response = http.get("/v1/models/v2", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200
    privacy = response.get_json()["privacy"]
    assert privacy["epsilon"] == pytest.approx(_direct_epsilon([(2.0, 0.5, 1)], 1e-6), rel=1e-9)
    assert privacy["events"] == [{"noise_multiplier": 2.0, "sampling_rate": 0.5, "rounds": 1}]
    listing = http.get("/v1/models", headers=bearer(ADMIN_TOKEN)).get_json()["models"]
    assert [m["privacy"]["epsilon"] for m in listing] == [0.0, privacy["epsilon"]]


# The DP-FedAvg commit ------------------------------------------------------------------------


def test_clipping_bounds_what_one_huge_update_moves_the_model(tmp_path: Path) -> None:
    clip, m = 0.05, 3
    service = build_service(
        tmp_path, clients_per_round=m, min_clients=m, dp_noise_multiplier=0.0, dp_clip=clip,
        norm_bound=1e5,
    )  # fmt: skip
    _clients(service, m)
    small = [delta(1, scale=0.001), delta(2, scale=0.001)]
    huge = delta(3, scale=1000.0)
    _complete(service, 1, {0: small[0], 1: small[1], 2: huge})
    moved = _weights(service, "v2") - _weights(service, "v1")
    honest = (small[0].flatten() + small[1].flatten()) / m
    attacker = moved - honest
    assert np.linalg.norm(attacker) == pytest.approx(clip / m, rel=1e-4)
    assert np.allclose(attacker, huge.flatten() / np.linalg.norm(huge.flatten()) * clip / m,
                       atol=1e-6)  # fmt: skip
    assert service.get_round(1).measurements["dp_clipped_updates"] == 1.0
    assert service.get_model("v2").privacy["epsilon"] is None  # type: ignore[index]


def test_a_dp_commit_carries_gaussian_noise_of_z_clip_over_m(tmp_path: Path) -> None:
    z, clip, m = 3.0, 0.05, 3
    service = build_service(tmp_path, clients_per_round=m, min_clients=m, dp_noise_multiplier=z,
                            dp_clip=clip)  # fmt: skip
    _clients(service, m)
    deltas = [delta(i, scale=0.001) for i in range(m)]  # all within the clip
    _complete(service, 1, dict(enumerate(deltas)))
    noiseless = _weights(service, "v1") + sum(d.flatten() for d in deltas) / m
    noise = _weights(service, "v2") - noiseless
    sigma = z * clip / m
    # 18 coordinates: the sample stddev is within [0.4, 1.8] sigma but with ~1e-5 odds.
    assert 0.4 * sigma < float(np.std(noise)) < 1.8 * sigma
    assert float(np.max(np.abs(noise))) > 10 * 1e-6  # far beyond float32 rounding


def test_the_adaptive_clip_persists_between_rounds_in_the_server_state(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=3, dp_noise_multiplier=0.2,
                            dp_adaptive_clip=True, dp_clip=1.0)  # fmt: skip
    _clients(service, 3)
    _complete(service, 1)  # every update far within the clip: it shrinks
    _complete(service, 2)
    first, second = service.get_round(1), service.get_round(2)
    assert first.measurements["dp_clip"] == 1.0
    assert second.measurements["dp_clip"] == pytest.approx(first.measurements["dp_next_clip"],
                                                           rel=1e-6)  # fmt: skip
    digest = service.get_model("v3").artifacts[SERVER_STATE]
    state = ServerState.from_bytes(service.artifacts.get_bytes(digest))
    assert float(state.slots[DP_CLIP_SLOT]["clip"][0]) == pytest.approx(
        second.measurements["dp_next_clip"], rel=1e-6
    )
    assert second.measurements["dp_clip"] != 1.0


# Secure DP rounds ----------------------------------------------------------------------------

SHAPES = {"head/kernel": (64, 30), "head/bias": (30,)}
DIMENSION = 64 * 30 + 30
SECURE_DP: dict[str, Any] = {
    "clients_per_round": 10, "min_clients": 5, "deadline_seconds": 600,
    "secure_aggregation": True, "secagg_clip": 2.0, "secagg_stage_seconds": 60,
    "continuous": False, "auto_promote": False, "dp_noise_multiplier": 1.0, "dp_clip": 0.3,
}  # fmt: skip


def test_secure_dp_tasks_carry_the_clip_and_each_clients_noise(tmp_path: Path) -> None:
    make_wide_bundle(tmp_path / "bundle", SHAPES)
    service = build_service(tmp_path, clock=FakeClock(), **SECURE_DP)
    _clients(service, 10)
    round_ = service.open_round()
    task = service.store.list_tasks(round_id=round_.round_id)[0]
    options = task.config.options
    assert options["dp_clip"] == 0.3
    assert options["dp_noise_stddev"] == pytest.approx(1.0 * 0.3 / math.sqrt(10))
    assert options["secagg_example_cap"] == 1  # every client weighs 1


def test_a_secure_dp_round_commits_the_devices_noised_sum_over_m(tmp_path: Path) -> None:
    make_wide_bundle(tmp_path / "bundle", SHAPES)
    service = build_service(tmp_path, clock=FakeClock(), **SECURE_DP)
    stddev = 0.3 / math.sqrt(10)
    devices = []
    for i in range(10):
        client = service.authenticate(service.register_client().token)
        rng = np.random.default_rng(i)
        vector = privatize(rng.normal(0.0, 0.05, DIMENSION), 0.3, stddev, rng=rng)
        devices.append(SecureDevice(ServiceTransport(service, client), vector, 1, seed=i))
    service.open_round()
    base = _weights(service, "v1")
    run_stages(devices)
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    committed = _weights(service, str(round_.result_version))
    expected = base + sum(d.vector for d in devices) / 10
    bound = masking_config_bound(10)
    assert float(np.max(np.abs(committed - expected))) <= bound / 10 + 1e-6
    assert round_.measurements["dp_noise_stddev"] == 0.0  # the server added nothing
    privacy = service.get_model(str(round_.result_version)).privacy
    assert privacy is not None
    assert privacy["epsilon"] == pytest.approx(
        _direct_epsilon([(1.0, 1.0, 1)], default_delta(10)), rel=1e-9
    )


def _secure_dp_round_with_two_dropouts(
    tmp_path: Path, budget: float | None = None
) -> CoordinatorService:
    """A secure DP round of 10 devices where two never send their masked input."""
    make_wide_bundle(tmp_path / "bundle", SHAPES)
    clock = FakeClock()
    service = build_service(tmp_path, clock=clock, privacy_budget=budget, **SECURE_DP)
    devices = []
    for i in range(10):
        client = service.authenticate(service.register_client().token)
        rng = np.random.default_rng(i)
        vector = privatize(rng.normal(0.0, 0.05, DIMENSION), 0.3, 0.3 / math.sqrt(10), rng=rng)
        stop = "share" if i in (2, 7) else None
        devices.append(
            SecureDevice(ServiceTransport(service, client), vector, 1, seed=i, stop_after=stop)
        )
    service.open_round()
    run_stages(devices, rounds=3)
    clock.advance(61)  # the mask stage's deadline
    service.tick()
    run_stages(devices, rounds=1)
    return service


def test_a_secure_dp_round_accounts_only_the_survivors_noise(tmp_path: Path) -> None:
    service = _secure_dp_round_with_two_dropouts(tmp_path)
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    privacy = service.get_model(str(round_.result_version)).privacy
    assert privacy is not None
    z = 1.0 * math.sqrt(8 / 10)
    assert privacy["noise_multiplier"] == pytest.approx(z)
    assert privacy["epsilon"] == pytest.approx(
        _direct_epsilon([(z, 1.0, 1)], default_delta(10)), rel=1e-9
    )


def test_dropouts_that_take_a_secure_round_over_the_budget_fail_it(tmp_path: Path) -> None:
    planned = _direct_epsilon([(1.0, 1.0, 1)], default_delta(10))
    actual = _direct_epsilon([(math.sqrt(0.8), 1.0, 1)], default_delta(10))
    budget = (planned + actual) / 2  # the round starts, its survivors' noise is too little
    service = _secure_dp_round_with_two_dropouts(tmp_path, budget)
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason == (
        "aggregation failed: privacy budget exhausted: with the noise of 8 of 10 clients "
        f"epsilon would be {actual:.4g}, budget {budget:g}"
    )
    assert [m.version for m in service.store.list_models()] == ["v1"]


def masking_config_bound(survivors: int) -> float:
    """The quantization error of a secure sum of ``survivors`` inputs (per coordinate)."""
    return float(masking_config(RoundConfig(**SECURE_DP), DIMENSION).error_bound(survivors))


# Round configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dp_noise_multiplier": 1.0, "aggregator": "median"}, "needs the fedavg aggregator"),
        ({**SECURE_DP, "dp_adaptive_clip": True}, "dp_adaptive_clip cannot run in a secure"),
        ({**SECURE_DP, "secagg_clip": 0.1}, r"secagg_clip \(per coordinate, 0.1\) >= dp_clip"),
        ({"task_options": {"dp_clip": 1.0}}, r"task_options \['dp_clip'\] are reserved"),
        ({"dp_noise_multiplier": -1.0}, "dp_noise_multiplier must be >= 0"),
        ({"dp_noise_multiplier": 1.0, "dp_adaptive_clip": True}, "clipped_count_stddev >"),
        ({"dp_delta": 1.0}, "dp_delta must be"),
        ({"dp_noise_multiplier": 1.0, "dp_clipped_count_stddev": -1.0}, "must be >= 0"),
    ],
)
def test_dp_configs_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RoundConfig(**options)


def test_more_clipped_count_noise_allows_adaptive_clipping_with_more_update_noise() -> None:
    config = RoundConfig(
        dp_noise_multiplier=2.0, dp_adaptive_clip=True, dp_clipped_count_stddev=2.0
    ).dp_config()
    assert config is not None
    # Andrew et al. 2021: (z^-2 - (2 sigma_b)^-2)^-1/2 = (1/4 - 1/16)^-1/2.
    assert config.update_noise_multiplier == pytest.approx((1 / 4 - 1 / 16) ** -0.5)


# The privacy budget --------------------------------------------------------------------------


def test_the_budget_stops_training_before_the_round_that_would_exceed_it(tmp_path: Path) -> None:
    one, two = (_direct_epsilon([(1.0, 0.5, n)], 1e-5) for n in (1, 2))
    budget = (one + two) / 2
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, min_available_clients=4,
                            dp_noise_multiplier=1.0, dp_delta=1e-5,
                            privacy_budget=budget)  # fmt: skip
    _clients(service, 4)
    _complete(service, 1)
    refused = service.get_round(2)
    assert refused.state == "failed"
    assert refused.failure_reason == (
        f"privacy budget exhausted: epsilon would be {two:.4g}, budget {budget:g}"
    )
    assert refused.selected == ()
    alerts = service.store.list_alerts(kind="privacy_budget_exhausted")
    assert len(alerts) == 1
    assert refused.failure_reason in alerts[0].message
    production = service.get_model("current")
    weights = _weights(service, "current")
    for _ in range(5):  # continuous mode opens no further round
        service.tick()
    assert [r.state for r in service.list_rounds()] == ["committed", "failed"]
    assert service.get_model("current").version == production.version == "v2"
    assert np.array_equal(_weights(service, "current"), weights)
    assert production.privacy["epsilon"] == pytest.approx(one, rel=1e-9)  # type: ignore[index]
    service.store.close()
    # A larger budget lets training go on.
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, min_available_clients=4,
                            dp_noise_multiplier=1.0, dp_delta=1e-5,
                            privacy_budget=two * 1.01)  # fmt: skip
    service.tick()
    assert service.get_round(3).state == "collecting"


def test_a_budget_refuses_any_round_without_dp(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, privacy_budget=10.0)
    _clients(service, 2)
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason == (
        "privacy budget exhausted: epsilon would be unbounded (the round has no DP), budget 10"
    )
    service.tick()
    assert len(service.list_rounds()) == 1
    assert service.get_model("current").version == "v1"
