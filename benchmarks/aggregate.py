"""FedAvg of one round at memory bandwidth: fedge's aggregation beside a streaming saxpy.

Run ``.venv/bin/python benchmarks/aggregate.py`` (``--updates 1000 --params 100000`` by
default; ``--quick`` is a small smoke run). In one process per BLAS thread setting
(``OPENBLAS_NUM_THREADS`` = ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = each of
``--threads``, 1 and 2 by default), over the same synthetic round (float32 deltas drawn from
N(0, 0.02), example counts in 10..200, one tensor), it times, median of ``--repeats`` (the
rows take turns):

- ``saxpy``: the floor a streaming weighted sum can reach in numpy: a float32 accumulator,
  ``np.multiply(delta, weight, out=scratch)`` then ``np.add(acc, scratch, out=acc)`` per
  update; no validation, no norm, O(P) memory;
- ``np.add.reduce``: the unweighted sum of the updates stacked in one (updates x P) array
  (not streaming: it needs every update in memory at once);
- ``fedge arrays``: :class:`fedge.aggregation.FedAvg` ``add`` per update then ``result``:
  the structure and finiteness checks, every update's L2 norm and the weighted mean;
- ``fedge bytes``: the same from each update's safetensors bytes
  (:meth:`fedge.weights.Weights.from_bytes` per update, then ``add``).

It prints each row per thread setting, fedge's ratio to saxpy next to the goal (at most
1.5x), the max abs error of fedge's result against the exact (float64, math.fsum-grade)
weighted mean next to its stated bound, and whether the result has the same bits under every
thread setting. Figures compare only within one invocation.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

GOAL_RATIO = 1.5
ROWS = ("saxpy", "np.add.reduce", "fedge arrays", "fedge bytes")
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _median_ms(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each run's median milliseconds; the runs take turns, so a load that comes and goes
    on the machine falls on every row alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) * 1e3 for name, spent in times.items()}


def measure(updates: int, params: int, repeats: int, seed: int) -> dict[str, Any]:
    """Every row's median milliseconds in this process, fedge's error and result digest."""
    from fedge.aggregation import FedAvg
    from fedge.weights import Weights

    rng = np.random.default_rng(seed)
    stacked = (rng.standard_normal((updates, params)) * 0.02).astype(np.float32)
    weights = rng.integers(10, 201, updates).astype(np.float64)
    deltas = [Weights({"w": row}) for row in stacked]
    bodies = [delta.to_bytes() for delta in deltas]
    reference = Weights({"w": np.zeros(params, np.float32)})

    def saxpy() -> None:
        acc = np.zeros(params, np.float32)
        scratch = np.empty(params, np.float32)
        for delta, weight in zip(deltas, weights, strict=True):
            np.multiply(delta["w"], np.float32(weight), out=scratch)
            np.add(acc, scratch, out=acc)

    def reduce() -> None:
        np.add.reduce(stacked, axis=0)

    def from_arrays() -> Weights:
        aggregator = FedAvg(reference)
        for delta, weight in zip(deltas, weights, strict=True):
            aggregator.add(delta, float(weight))
        return aggregator.result().delta

    def from_bytes() -> Weights:
        aggregator = FedAvg(reference)
        for body, weight in zip(bodies, weights, strict=True):
            aggregator.add(Weights.from_bytes(body), float(weight))
        return aggregator.result().delta

    times = _median_ms(
        {
            "saxpy": saxpy,
            "np.add.reduce": reduce,
            "fedge arrays": from_arrays,
            "fedge bytes": from_bytes,
        },
        repeats,
    )
    result = from_arrays()
    assert result == from_bytes(), "the bytes path must give the same bits"
    # Exact weighted sum: every w * x is exact in float64 (24 + 8 significand bits), and
    # the float64 sum of 1,000 such terms is within 1000 * 2**-53 of exact, far below 2**-24.
    terms = stacked.astype(np.float64) * weights[:, None]
    exact = terms.sum(axis=0) / weights.sum()
    magnitude = np.abs(terms).sum(axis=0) / weights.sum()
    error = np.abs(result["w"].astype(np.float64) - exact)
    bound = 6 * 2.0**-24 * magnitude + 2.0**-24 * np.abs(exact)
    return {
        "times": times,
        "max_error": float(error.max()),
        "max_bound": float(bound.max()),
        "within_bound": bool((error <= bound).all()),
        "digest": hashlib.sha256(result["w"].tobytes()).hexdigest(),
    }


def _measure_in_child(
    threads: int, updates: int, params: int, repeats: int, seed: int
) -> dict[str, Any]:
    env = {**os.environ, **{name: str(threads) for name in _THREAD_VARIABLES}}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        f"--updates={updates}",
        f"--params={params}",
        f"--repeats={repeats}",
        f"--seed={seed}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"aggregate.py: the run with {threads} BLAS threads failed:\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--updates", type=int, default=1000, help="updates in the round")
    parser.add_argument("--params", type=int, default=100_000, help="float32 values per update")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument("--threads", default="1,2", help="BLAS thread settings, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="40 updates x 20,000 values")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.updates, args.params = 40, 20_000
    if args.child:
        print(json.dumps(measure(args.updates, args.params, args.repeats, args.seed)))
        return 0
    settings = [int(part) for part in args.threads.split(",")]
    runs = {
        threads: _measure_in_child(threads, args.updates, args.params, args.repeats, args.seed)
        for threads in settings
    }
    print(
        f"FedAvg of {args.updates} updates x {args.params} float32, one process per BLAS "
        f"thread setting, median of {args.repeats} (ms)"
    )
    print(f"{'row':<16}" + "".join(f"{f'threads={t}':>12}" for t in settings))
    for row in ROWS:
        print(f"{row:<16}" + "".join(f"{runs[t]['times'][row]:>12.1f}" for t in settings))
    for row in ("fedge arrays", "fedge bytes"):
        ratios = "".join(
            f"{runs[t]['times'][row] / runs[t]['times']['saxpy']:>12.2f}" for t in settings
        )
        print(f"{'ratio ' + row.split()[1]:<16}{ratios}   (vs saxpy; goal <= {GOAL_RATIO})")
    first = runs[settings[0]]
    print(
        f"max abs error {first['max_error']:.3g} vs the exact mean (bound {first['max_bound']:.3g}"
        f" at most; every coordinate within its bound: "
        f"{'yes' if all(r['within_bound'] for r in runs.values()) else 'NO'})"
    )
    same = len({run["digest"] for run in runs.values()}) == 1
    print(f"same bits under every thread setting: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
