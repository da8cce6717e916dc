"""Sync rounds against FedBuff on a simulated clock (simulations.async_engine): with a slow
30% of the devices, FedBuff reaches the sync run's final accuracy in less simulated time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedge.errors import ConfigError
from simulations.async_engine import (
    AsyncSimConfig,
    Availability,
    compare,
    load_speed_trace,
    load_trace,
    run_simulated,
)
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


def _windows_trace(tmp_path: Path, online: object, speeds: int = 10) -> Path:
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"speeds": [1.0] * speeds, "online": online}), encoding="utf-8")
    return trace


def test_a_trace_s_online_windows_are_honoured_by_both_runs(
    digits_pretrained: Pretrained, tmp_path: Path
) -> None:
    always = [[0, 1e9]]
    # Device 0 comes online at 50 s; device 1 goes offline at 5 s, mid-training, and
    # delivers its update when it is back at 100 s.
    speeds, online = load_trace(
        _windows_trace(tmp_path, [[[50, 1e9]], [[0, 5], [100, 1e9]], *[always] * 8])
    )
    assert online is not None
    assert online[1] == ((0.0, 5.0), (100.0, 1e9))
    config = AsyncSimConfig(num_clients=10, concurrency=10, rounds=2, speeds=speeds, online=online)
    sync = run_simulated(config, digits_pretrained, "sync")
    fedbuff = run_simulated(config, digits_pretrained, "async", until=150.0)
    for run in (sync, fedbuff):
        device_0 = [(t, kind) for t, device, kind in run.events if device == 0]
        assert device_0
        assert all(t >= 50.0 for t, _ in device_0), device_0
        assert device_0[0][1] == "poll"
        device_1 = [(t, kind) for t, device, kind in run.events if device == 1]
        assert device_1[:2] == [(0.0, "poll"), (100.0, "deliver")]
        assert not any(5.0 <= t < 100.0 for t, _ in device_1)
    # Sync's first round has every device: device 0 polls as it comes online, and the round
    # waits for device 1's late delivery.
    first = sync.curve[1][0]
    assert [(t, d) for t, d, kind in sync.events if kind == "poll" and 0 < t < first] == [(50.0, 0)]
    assert sync.curve[1][0] >= 100.0


def test_both_runs_see_the_same_seeded_on_off_schedule(digits_pretrained: Pretrained) -> None:
    config = AsyncSimConfig(
        num_clients=10, concurrency=4, rounds=3, online_fraction=0.5, session_seconds=20.0
    )
    availability = Availability(config)
    result = compare(config, digits_pretrained)
    horizon = result.sync.seconds
    offline = [
        (device, t)
        for device in range(10)
        for t in np.arange(0.0, horizon, 5.0)
        if not availability.online(device, float(t))
    ]
    assert offline, "the schedule has offline sessions within the run"
    for run in (result.sync, result.fedbuff):
        assert any(kind == "poll" for _, _, kind in run.events)
        for t, device, kind in run.events:
            assert availability.online(device, t), (run.mode, t, device, kind)
    # The same seed gives the same schedule, and always online is the default.
    assert Availability(config).next_online(3, 0.0) == availability.next_online(3, 0.0)
    assert Availability(AsyncSimConfig()).online(3, 12345.0)


@pytest.mark.parametrize(
    ("online", "message"),
    [
        ([[[0, 10]]] * 3, "has 3 devices' online windows"),
        ([[[10, 5]], *[[[0, 1]]] * 9], "device 0's online window .* must have 0 <= start < end"),
        ([[[0, 10], [5, 20]], *[[[0, 1]]] * 9], "come after the previous one"),
        ([[[0, "x"]], *[[[0, 1]]] * 9], r"device 0's online window \[0, 'x'\] is not"),
        ([[[-1, 1]], *[[[0, 1]]] * 9], "0 <= start"),
    ],
)
def test_a_malformed_online_trace_is_refused(tmp_path: Path, online: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_trace(_windows_trace(tmp_path, online))


def test_fedge_simulate_async_refuses_a_malformed_online_trace_with_one_line(
    fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    trace = _windows_trace(tmp_path, [[[0, 10], [5, 20]], *[[[0, 1]]] * 9])
    bad = fedge_simulate(["async", "--trace", str(trace), "--cache-dir", str(tmp_path)])
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert "come after the previous one" in lines[0]
    fraction = fedge_simulate(["async", "--online-fraction", "0", "--cache-dir", str(tmp_path)])
    assert fraction.returncode == 2
    assert "online_fraction" in fraction.stderr
