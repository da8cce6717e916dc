"""Smoke runs of the benchmarks that finish in seconds, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECAGG_METHODS = ("plain", "q8", "topk", "secagg", "secagg-q8", "secagg-drop")


def test_secagg_benchmark_quick_prints_every_row_side_by_side() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "secagg.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split()[-2:] == ["err", "bound"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :][:6]}
    assert tuple(rows) == SECAGG_METHODS
    for method, cells in rows.items():
        assert len(cells) == 12, (method, cells)
    # the plain row is the baseline of every ratio
    assert rows["plain"][6:10] == ["1.00", "1.00", "1.000", "1.000"]
    # compression shrinks the upload; the secure rows stay within their stated bound
    assert float(rows["q8"][8]) < 0.3
    assert float(rows["topk"][8]) < 0.1
    for method in ("secagg", "secagg-q8", "secagg-drop"):
        assert 0 < float(rows[method][10]) <= float(rows[method][11]), method
    assert float(rows["plain"][10]) < 1e-6


def test_dp_benchmark_quick_prints_each_epsilon_row_and_writes_the_png(tmp_path: Path) -> None:
    png = tmp_path / "plots" / "dp.png"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "dp.py"),
            "--quick",
            "--out",
            str(png),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["target"])
    assert lines[header].split()[:4] == ["target", "noise", "z", "epsilon"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :][:4]}
    assert tuple(rows) == ("none", "8", "3", "1")
    assert rows["none"][:3] == ["-", "-", "-"]
    assert rows["none"][4] == "+0.0000"
    noise = {label: float(rows[label][0]) for label in ("8", "3", "1")}
    assert 0 < noise["8"] < noise["3"] < noise["1"]  # a smaller epsilon needs more noise
    for label in ("8", "3", "1"):
        # the epsilon the run's final model records: at most the target, within 1% of it
        epsilon = float(rows[label][1])
        assert 0.99 * float(label) <= epsilon <= float(label), (label, epsilon)
        assert 0.0 < float(rows[label][3]) <= 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in done.stdout


def test_transport_benchmark_small_runs_a_round_over_rest_and_grpc_side_by_side(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "transport.py"),
            "--devices",
            "4",
            "--parameters",
            "1000",
            "--time-limit",
            "60",
            "--work",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["metric"])
    assert lines[header].split() == ["metric", "rest", "grpc"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :] if line.split()}
    for call in ("register", "next_task", "download", "upload"):
        for transport in (0, 1):
            p50 = float(rows[f"{call}_p50_ms"][transport])
            assert 0 < p50 <= float(rows[f"{call}_p99_ms"][transport]), (call, transport)
        assert int(rows[f"{call}_calls"][0]) >= 4
    # 4 manifests + 4 x 3 bundle files each way; one upload per device
    assert rows["download_calls"] == ["16", "16"]
    assert rows["upload_calls"] == ["4", "4"]
    # the relay saw the TLS traffic: more than the 4 weight files down, the 4 deltas up
    for column in (0, 1):
        assert int(rows["bytes_down"][column]) > 4 * 4000
        assert int(rows["bytes_up"][column]) > 4 * 4000
        assert float(rows["server_cpu_s"][column]) > 0
    # REST opens a connection per call; each gRPC device keeps one channel
    assert int(rows["tcp_connections"][0]) >= 4 + 16 + 4 + 4
    assert int(rows["tcp_connections"][1]) <= 4 * 2
    assert rows["round"] == ["committed", "committed"]
    assert rows["updates"] == ["4/4", "4/4"]
    assert rows["acks_lost"] == ["0", "0"]
    assert rows["errors"] == ["0", "0"]


def test_personalize_benchmark_small_times_both_fine_tunings_on_the_same_steps(
    tmp_path: Path,
) -> None:
    args = ["--rows", "200", "--epochs", "1", "--repeats", "1", "--train-epochs", "1", "--json"]
    args += ["--work", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "personalize.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["path"])
    assert lines[header].split() == ["path", "seconds", "steps", "train", "acc"]
    assert lines[header + 2].startswith("trainable.tflite (pixels)")
    assert lines[header + 3].startswith("head.tflite (cached int8 embeddings)")
    assert any(line.startswith("speedup (trainable / head): ") for line in lines)
    figures = json.loads(lines[-1])
    assert (figures["rows"], figures["epochs"], figures["batch_size"]) == (200, 1, 32)
    assert figures["steps"] == figures["head_steps"] == 7  # ceil(200 / 32), the same batches
    assert figures["trainable_seconds"] > 0
    assert figures["head_seconds"] > 0
    assert figures["speedup"] == figures["trainable_seconds"] / figures["head_seconds"]
    assert figures["goal"] == 3.0
    for name in ("trainable_train_accuracy", "head_train_accuracy"):
        assert 0.0 < figures[name] <= 1.0


def test_serving_benchmark_quick_prints_each_mode_side_by_side() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serving.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["mode"])
    columns = ["requests", "p50_ms", "p99_ms", "req_per_s", "fails", "table", "cache", "model"]
    assert lines[header].split() == ["mode", *columns]
    rows = {
        line.split()[0]: dict(zip(columns, map(float, line.split()[1:]), strict=True))
        for line in lines[header + 1 : header + 4]
    }
    assert tuple(rows) == ("dynamic", "static", "hybrid")
    for mode, row in rows.items():
        assert (row["requests"], row["fails"]) == (60, 0), mode
        assert 0 < row["p50_ms"] <= row["p99_ms"], mode
        assert row["req_per_s"] > 0, mode
        # 60 timed requests of one row and 3 warm-up ones, each answered by one source
        assert row["table"] + row["cache"] + row["model"] == 63, mode
    assert rows["dynamic"]["model"] == 63
    assert rows["static"]["table"] == 63
    assert rows["hybrid"]["table"] > 0
    assert rows["hybrid"]["model"] > 0


def test_simulate_benchmark_quick_prints_native_and_ray_side_by_side(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "simulate.py"),
            "--quick",
            "--json",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split() == ["native", "ray", "ray/native"]
    )
    rows = {line[:20].strip(): line[20:].split() for line in lines[header + 1 :] if line.strip()}
    for row in ("wall time (s)", "peak RSS (tree)", "final accuracy"):
        assert row in rows, rows
    assert float(rows["wall time (s)"][0]) > 0
    assert float(rows["wall time (s)"][1]) > 0
    # the Ray run's tree held Ray's daemons and actors besides the command
    assert int(rows["processes at peak"][1]) > int(rows["processes at peak"][0])
    ray = json.loads(results.read_text())["ray"]
    assert ray["native"]["engine"] == "native"
    assert ray["ray"]["engine"] == "ray"
    assert ray["ray"]["rounds"] == ray["native"]["rounds"] == 2
    # the same clients, rows and schedule: the same model
    assert ray["ray"]["final_accuracy"] == ray["native"]["final_accuracy"]
    assert ray["ray"]["peak_rss_bytes"] > 0


def test_dashboard_benchmark_quick_times_every_page_next_to_the_goal() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dashboard.py"), "--quick", "--repeats", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = done.stdout.splitlines()
    # the exit status says whether the goal held; a slow machine may miss it, never crash
    assert lines, done.stderr
    assert lines[-1].endswith(f"under 300 ms: {'yes' if done.returncode == 0 else 'no'}"), (
        done.stdout + done.stderr
    )
    assert "store: 300 clients, 31 rounds, 31 models" in done.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("page "))
    assert lines[header].split() == ["page", "status", "KiB", "first", "median", "max", "goal"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 : header + 16]}
    for page in ("/ui/", "/ui/rounds", "/ui/models", "/ui/clients", "/ui/data", "/ui/alerts"):
        assert rows[page][0] == "200", (page, rows[page])
        assert rows[page][5] == "<300ms", (page, rows[page])
    assert all(cells[0] == "200" for cells in rows.values()), rows


def test_aggregate_benchmark_quick_prints_fedavg_beside_saxpy_under_each_thread_setting() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "aggregate.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row "))
    assert lines[header].split() == ["row", "threads=1", "threads=2"]
    rows = {line[:16].strip(): line[16:].split() for line in lines[header + 1 : header + 7]}
    assert tuple(rows) == (
        "saxpy",
        "np.add.reduce",
        "fedge arrays",
        "fedge bytes",
        "ratio arrays",
        "ratio bytes",
    )
    for name in ("saxpy", "np.add.reduce", "fedge arrays", "fedge bytes"):
        assert all(float(cell) > 0 for cell in rows[name]), (name, rows[name])
    for name in ("ratio arrays", "ratio bytes"):
        assert rows[name][2:] == ["(vs", "saxpy;", "goal", "<=", "1.5)"], rows[name]
    assert "every coordinate within its bound: yes" in done.stdout
    assert lines[-1] == "same bits under every thread setting: yes"


def test_simulate_benchmark_workloads_quick_prints_each_ratio_next_to_its_goal(
    tmp_path: Path,
) -> None:
    # workload A only: B and C take the same path (tests/simulations/test_reference_parity.py
    # runs all three), and each run here costs a process or two
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "simulate.py"),
            "--workloads",
            "A",
            "--quick",
            "--json",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    table = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["workload", "rounds", "floor"]
    )
    assert lines[table + 1].split()[:2] == ["A", "3"]
    goals = next(i for i, line in enumerate(lines) if line.startswith("workload  wall (goal)"))
    row = lines[goals + 1]
    assert row.split()[0] == "A"
    for goal in ("(<= 1.49 s)", "(<= 5x)", "(<= 200 MB)", "equal in 3/3 rounds"):
        assert goal in row, row
    assert not lines[goals + 2].startswith(("B ", "C "))
    assert "Flower is not installed here" in done.stdout
    workload = json.loads(results.read_text())["workloads"]["A"]
    assert workload["equal_rounds"] == workload["rounds"] == 3
    assert workload["fedge_accuracy"] == workload["floor_accuracy"]
    assert workload["max_weights_diff"] < 1e-5
    assert workload["floor_wall_seconds"] > 0
    assert 0 < workload["floor_peak_rss"] < workload["fedge_peak_rss"]
