"""Acceptance 2: federated training of the head learns, and ends where central training does.

The cloud pretrained on its proxy share only; the other training rows live only on the
clients. The federated head is compared with the pretrained one and with the same head
trained centrally (plain SGD, same learning rate, backbone frozen, on the union of the
clients' training rows, for the epochs the federation spent). Fixed seeds, CI-sized:

- digits: 10% proxy share; 10 clients, Dirichlet(0.5) labels, all 10 each round, 30 rounds,
  E=2, lr 0.02;
- taxi: 2% proxy share pretrained for 2 epochs (the default 10% share for 5 epochs gives a
  head at 0.94 test AUC that 10 rounds cannot move: pretrained = federated = 0.9423); one
  client per pickup community area, the 10 largest areas (the others' rows are left out),
  all 10 each round, 10 rounds, E=1, lr 0.1; compared by AUC. Measured with seed 0:
  pretrained 0.873, federated 0.908, centralized 0.921 (seeds 1 and 2: federated closes 78%
  and 91% of the centralized gain).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from simulations.pretrain import Pretrained
from simulations.runner import simulate

if TYPE_CHECKING:
    from tests.support.simulation import SettingsFactory

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:non-integer arguments to randrange:DeprecationWarning"),
]

LIFT = 0.02
"""The least gain over the pretrained head that counts as learning (7 of 359 test digits)."""
DIGITS_GAP = 0.02
TAXI_GAP = 0.02
TAXI_ROOM = 0.02
"""The least AUC the centralized head must gain over the pretrained one: below it, the run
leaves too little to learn to tell a federation that learns from one that does not."""
TAXI_SHARE = 0.5
"""The least part of the centralized gain the federation must reach (measured: 0.74)."""


def test_digits_federated_beats_pretrained_and_matches_centralized(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    report = simulate(
        sim_settings(
            task="digits",
            clients=10,
            rounds=30,
            partition="dirichlet:0.5",
            epochs=2,
            learning_rate=0.02,
            seed=0,
            personalization=False,
        )
    )
    pretrained, federated = report.pretrained.accuracy, report.final.accuracy
    assert report.centralized is not None
    centralized = report.centralized.accuracy
    print(
        f"\ndigits (10 clients, dirichlet:0.5, 30 rounds) test accuracy: pretrained "
        f"{pretrained:.4f}  federated {federated:.4f}  centralized {centralized:.4f} "
        f"({report.centralized_epochs} epochs)"
    )
    assert len(report.result.rounds) == 30
    assert all(r.committed and r.participants == 10 for r in report.result.rounds)
    assert federated >= pretrained + LIFT
    assert abs(federated - centralized) <= DIGITS_GAP


def test_taxi_by_pickup_area_beats_pretrained_and_matches_centralized_auc(
    sim_settings: SettingsFactory,
) -> None:
    report = simulate(
        sim_settings(
            task="taxi",
            clients=10,
            rounds=10,
            partition="by:pickup_community_area",
            epochs=1,
            learning_rate=0.1,
            seed=0,
            personalization=False,
            proxy_fraction=0.02,
            pretrain_epochs=2,
        )
    )
    assert report.centralized is not None
    pretrained, federated, centralized = (
        report.pretrained.auc,
        report.final.auc,
        report.centralized.auc,
    )
    assert pretrained is not None
    assert federated is not None
    assert centralized is not None
    print(
        f"\ntaxi (10 largest pickup areas, 10 rounds) test AUC: pretrained {pretrained:.4f}  "
        f"federated {federated:.4f}  centralized {centralized:.4f} "
        f"({report.centralized_epochs} epochs)"
    )
    clients = report.schedule[0]
    assert len(clients) == 10
    assert all(c.startswith("pickup_community_area=") for c in clients)
    assert all(r.committed and r.participants == 10 for r in report.result.rounds)
    room = centralized - pretrained
    assert room >= TAXI_ROOM, f"the pretrained head leaves only {room:.4f} AUC to learn"
    assert federated - pretrained >= TAXI_SHARE * room
    assert abs(federated - centralized) <= TAXI_GAP
