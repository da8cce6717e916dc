"""Differential privacy in ``fedge-simulate``: DP-FedAvg rounds on digits, plain and secure.

Each run is 20 clients, 5 per round (sampling rate q = 0.25 of the 20 registered), so the
accountant's epsilon after r rounds is that of r Poisson-sampled Gaussian mechanisms of
noise multiplier z at q, computed here with ``dp_accounting`` directly and compared with
what each round of the report shows (the committed version's privacy record). A privacy
budget just above the epsilon of two rounds stops a five-round run after two, and the
report (JSON, CSV, summary) says why.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dp_accounting import dp_event, rdp

from simulations.errors import SettingsError
from simulations.pretrain import Pretrained
from simulations.runner import simulate
from simulations.settings import check_settings

if TYPE_CHECKING:
    from tests.support.simulation import CliRunner, SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

CLIENTS, PER_ROUND = 20, 5
Z, CLIP, DELTA = 1.1, 0.5, 1e-3


def _accountant_epsilon(rounds: int) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(
        dp_event.PoissonSampledDpEvent(PER_ROUND / CLIENTS, dp_event.GaussianDpEvent(Z)),
        rounds,
    )
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_each_round_reports_the_accountants_cumulative_epsilon(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory, secure: bool
) -> None:
    report = simulate(
        sim_settings(
            clients=CLIENTS,
            per_round=PER_ROUND,
            rounds=3,
            baseline=False,
            personalization=False,
            secure_aggregation=secure,
            dp_noise_multiplier=Z,
            dp_clip=CLIP,
            dp_delta=DELTA,
        )
    )
    rounds = report.result.rounds
    assert [r.committed for r in rounds] == [True, True, True]
    assert [r.secure for r in rounds] == [secure] * 3
    for r in rounds:
        assert r.epsilon == pytest.approx(_accountant_epsilon(r.round), rel=1e-9)
        assert r.delta == DELTA
        assert r.privacy["noise_multiplier"] == Z
        assert r.privacy["sampling_rate"] == PER_ROUND / CLIENTS
        assert r.privacy["rounds"] == r.round
    # plain rounds: the server noises the sum; secure rounds: the devices did, it adds none
    expected_stddev = 0.0 if secure else Z * CLIP  # per coordinate of the sum
    for r in rounds:
        assert r.measurements["dp_noise_stddev"] == pytest.approx(expected_stddev, rel=1e-9)
    assert rounds[0].epsilon is not None
    assert rounds[2].epsilon is not None
    assert 0 < rounds[0].epsilon < rounds[2].epsilon
    document = report.to_dict()
    assert document["privacy"]["epsilon"] == pytest.approx(_accountant_epsilon(3), rel=1e-9)
    assert document["privacy"]["delta"] == DELTA
    assert document["stop_reason"] is None
    assert document["rounds"][1]["epsilon"] == rounds[1].epsilon


def test_adaptive_clipping_carries_the_clip_from_round_to_round(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    report = simulate(
        sim_settings(
            clients=CLIENTS,
            per_round=PER_ROUND,
            rounds=3,
            baseline=False,
            personalization=False,
            dp_noise_multiplier=Z,
            dp_clip=CLIP,
            dp_adaptive_clip=True,
            dp_clipped_count_stddev=1.0,
            dp_delta=DELTA,
        )
    )
    rounds = report.result.rounds
    assert [r.committed for r in rounds] == [True, True, True]
    assert rounds[0].measurements["dp_clip"] == CLIP
    for before, after in itertools.pairwise(rounds):
        assert after.measurements["dp_clip"] == pytest.approx(
            before.measurements["dp_next_clip"], rel=1e-6
        )
    assert rounds[1].measurements["dp_clip"] != CLIP
    assert rounds[2].epsilon == pytest.approx(_accountant_epsilon(3), rel=1e-9)


def test_a_privacy_budget_stops_the_run_and_the_report_says_why(
    digits_pretrained: Pretrained, sim_cache: Path, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    budget = _accountant_epsilon(2) * 1.001  # a third round would exceed it
    out = tmp_path / "out"
    flags = (
        f"--clients {CLIENTS} --per-round {PER_ROUND} --rounds 5 --dp-noise-multiplier {Z} "
        f"--dp-clip {CLIP} --dp-delta {DELTA} --privacy-budget {budget!r} --no-baseline "
        "--no-personalization --quiet --json"
    )
    done = fedge_simulate([*flags.split(), "--cache-dir", str(sim_cache), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [r["round"] for r in document["rounds"]] == [1, 2]
    assert document["stop_reason"].startswith("privacy budget exhausted: ")
    assert document["privacy"]["epsilon"] == pytest.approx(_accountant_epsilon(2), rel=1e-9)
    assert document["settings"]["privacy_budget"] == budget
    with open(out / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(r["epsilon"]) for r in rows] == pytest.approx(
        [_accountant_epsilon(1), _accountant_epsilon(2)], rel=1e-6
    )
    assert {r["delta"] for r in rows} == {str(DELTA)}
    summary = (out / "summary.txt").read_text()
    assert "stopped after 2 rounds: privacy budget exhausted: " in summary
    assert f"(epsilon, delta) = ({_accountant_epsilon(2):.4g}, 0.001)" in summary
    header = summary.splitlines()[2].split()
    assert "epsilon" in header


@pytest.mark.parametrize(
    ("changes", "message", "fields"),
    [
        (
            {"dp_clip": 0.5},
            "dp_clip applies only with differential privacy: give a noise multiplier",
            ("dp_clip", "dp_noise_multiplier"),
        ),
        (
            {"dp_noise_multiplier": 1.0, "dp_adaptive_clip": True, "secure_aggregation": True},
            "adaptive clipping needs the server to count clipped updates",
            ("dp_adaptive_clip", "secure_aggregation"),
        ),
        (
            {"dp_noise_multiplier": 1.0, "engine": "tff"},
            "the tff reference engine runs plain FedAvg",
            ("engine", "dp_noise_multiplier", "privacy_budget"),
        ),
        (
            {"dp_noise_multiplier": -1.0},
            "dp_noise_multiplier",
            ("dp_noise_multiplier",),
        ),
        (
            {"dp_noise_multiplier": 1.0, "dp_clip": 2.0, "secure_aggregation": True},
            "secagg_clip",
            ("dp_noise_multiplier", "dp_clip", "secagg_clip"),
        ),
        (
            {"dp_noise_multiplier": 1.0, "dp_clipped_count_stddev": 1.0},
            "dp_clipped_count_stddev only applies with adaptive clipping",
            ("dp_clipped_count_stddev", "dp_adaptive_clip"),
        ),
        (
            {"dp_noise_multiplier": 1.1, "dp_adaptive_clip": True},
            "clipped_count_stddev",
            ("dp_noise_multiplier", "dp_adaptive_clip", "dp_clipped_count_stddev"),
        ),
        (
            {"dp_noise_multiplier": 1.0, "aggregator": "median"},
            "needs the fedavg aggregator",
            ("dp_noise_multiplier", "aggregator"),
        ),
    ],
)
def test_dp_settings_that_cannot_run_are_refused_before_any_work(
    sim_settings: SettingsFactory, changes: dict[str, object], message: str, fields: tuple[str]
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        check_settings(sim_settings(clients=CLIENTS, per_round=PER_ROUND, **changes))
    assert tuple(caught.value.fields) == fields
