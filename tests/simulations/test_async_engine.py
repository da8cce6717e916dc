"""Sync rounds against FedBuff on a simulated clock (simulations.async_engine): with a slow
30% of the devices, FedBuff reaches the sync run's final accuracy in less simulated time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedge.errors import ConfigError
from simulations.async_engine import AsyncSimConfig, compare, load_speed_trace, run_simulated
from simulations.pretrain import Pretrained
from tests.support.simulation import CliRunner


def test_fedbuff_reaches_the_sync_accuracy_sooner_with_a_slow_30_percent(
    digits_pretrained: Pretrained, capsys: pytest.CaptureFixture[str]
) -> None:
    config = AsyncSimConfig(slow_fraction=0.3, slow_factor=5.0, buffer_size=5, max_staleness=10)
    result = compare(config, digits_pretrained)
    with capsys.disabled():
        print("\n" + result.table())
    assert result.target == result.sync.final_accuracy
    assert result.async_seconds is not None, result.table()
    assert result.async_seconds < result.sync_seconds, result.table()
    assert result.fedbuff.final_accuracy >= result.target
    # The async run really was asynchronous: some updates were trained on older versions.
    assert result.fedbuff.max_staleness >= 1
    assert result.fedbuff.max_staleness <= config.max_staleness
    # And it is reproducible: the same seeds give the same curves.
    again = compare(config, digits_pretrained)
    assert again.fedbuff.curve == result.fedbuff.curve
    assert again.sync.curve == result.sync.curve


def test_updates_staler_than_max_staleness_are_dropped(digits_pretrained: Pretrained) -> None:
    config = AsyncSimConfig(rounds=3, buffer_size=2, max_staleness=1)
    run = run_simulated(config, digits_pretrained, "async", until=60.0)
    assert run.updates_dropped > 0
    assert run.max_staleness <= 1
    assert run.updates_used == 2 * (len(run.curve) - 1)


def test_a_speed_trace_gives_each_device_its_factor(
    digits_pretrained: Pretrained, tmp_path: Path
) -> None:
    trace = tmp_path / "speeds.json"
    trace.write_text(json.dumps({"speeds": [1.0] * 10}), encoding="utf-8")
    speeds = load_speed_trace(trace)
    uniform = run_simulated(
        AsyncSimConfig(num_clients=10, concurrency=5, rounds=2, speeds=speeds),
        digits_pretrained,
        "sync",
    )
    slow = run_simulated(
        AsyncSimConfig(num_clients=10, concurrency=5, rounds=2, speeds=(3.0,) * 10),
        digits_pretrained,
        "sync",
    )
    assert slow.seconds == pytest.approx(3.0 * uniform.seconds)
    with pytest.raises(ConfigError, match="the speed trace has 10 devices"):
        AsyncSimConfig(num_clients=12, speeds=speeds)
    trace.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected"):
        load_speed_trace(trace)


def test_fedge_simulate_async_prints_both_runs_side_by_side(
    fedge_simulate: CliRunner, sim_cache: Path, digits_pretrained: Pretrained
) -> None:
    args = ["async", "--cache-dir", str(sim_cache), "--rounds", "4", "--buffer", "3"]
    text = fedge_simulate(args)
    assert text.returncode == 0, text.stderr
    assert "async (FedBuff)" in text.stdout
    assert "time to" in text.stdout
    document = fedge_simulate([*args, "--json"])
    assert document.returncode == 0, document.stderr
    result = json.loads(document.stdout)
    assert len(result["sync"]["curve"]) == 5
    assert result["async"]["max_staleness"] <= 10
    bad = fedge_simulate(["async", "--cache-dir", str(sim_cache), "--buffer", "0"])
    assert bad.returncode == 2
    assert "buffer_size" in bad.stderr
