"""Final test accuracy of DP-FedAvg on digits at epsilon about 1, 3 and 8, and without DP.

Run ``.venv/bin/python benchmarks/dp.py`` (``--quick``: a smoke run of 20 clients, 5 per
round, 3 rounds, with the same four rows). In one process it pretrains the digits model
once (cached in ``--cache-dir``), then runs the native simulation engine (the coordinator
service and the edge clients, as ``fedge-simulate`` does) four times on the same scenario:
100 IID clients, 10 sampled per round (sampling rate q = 0.1), ``--rounds`` rounds
(default 100), 2 local epochs, plain FedAvg as the server step.

The DP runs clip each update to L2 ``--clip`` and add Gaussian noise of stddev z * clip to
each round's sum, divided by the 10 clients (DP-FedAvg, McMahan et al., ICLR 2018). The
default clip, 0.02, was the best of 0.02, 0.05, 0.1, 0.25, 0.5 and 1.0 at epsilon 1 in one
sweep of this benchmark (most updates are longer, so the clip sets the step and the noise
shrinks with it). The noise multiplier z of each target epsilon is the smallest one for
which the coordinator's accountant (:mod:`coordinator.privacy`: RDP of the Poisson-sampled
Gaussian) gives at most that epsilon after the chosen rounds at q and delta = 1 / 100^1.1
(the coordinator's default for 100 clients), found by bisection.

The table shows, per run, the noise multiplier, the epsilon the final model's privacy
record reports, the final test accuracy (on the 359-row test split: one row is 0.0028) and
its difference to the run without DP; the PNG (``--out``) plots the test accuracy per round
of every run and the final accuracy against epsilon, beside the pretrained head every run
starts from. The partition, the sampling and the local training are seeded (``--seed``),
the DP noise is not: three full runs on two shared cores gave 0.905-0.911 at epsilon 8
and 3 and 0.883-0.905 at epsilon 1 (without DP 0.919 each time, the pretrained head 0.883),
so differences of a few rows are noise. Each full run takes about a minute there.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep this folder off the import path: it holds benchmarks/quantize.py, which would shadow
# the quantize package that the simulation imports.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGETS = (8.0, 3.0, 1.0)
"""The target epsilons, loosest first (the run without DP comes before them)."""
CLIENTS, PER_ROUND = 100, 10
QUICK_CLIENTS, QUICK_PER_ROUND, QUICK_ROUNDS = 20, 5, 3


@dataclass(frozen=True)
class Run:
    """One simulation: its target, noise multiplier, the epsilon it reported, accuracy."""

    label: str
    target: float | None
    noise_multiplier: float | None
    epsilon: float | None
    delta: float | None
    accuracy: float
    curve: tuple[float, ...]
    """Test accuracy after each round (round 0: the pretrained model)."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "target_epsilon": self.target,
            "noise_multiplier": self.noise_multiplier,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "final_accuracy": self.accuracy,
            "accuracy_per_round": list(self.curve),
            "seconds": self.seconds,
        }


def noise_for(target: float, *, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-3) whose epsilon after ``rounds`` rounds at
    ``sampling_rate`` and ``delta`` is at most ``target``, by bisection on the accountant
    (epsilon falls as the noise grows)."""
    from coordinator.privacy import DPEvent, compute_epsilon

    def dp_epsilon(z: float) -> float:
        return compute_epsilon([DPEvent(z, sampling_rate, rounds)], delta)

    low, high = 0.0, 1.0
    while dp_epsilon(high) > target:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon {target}")
    while high - low > 1e-3:
        middle = (low + high) / 2
        if dp_epsilon(middle) > target:
            low = middle
        else:
            high = middle
    return high


def simulate_one(
    label: str,
    target: float | None,
    noise: float | None,
    *,
    args: argparse.Namespace,
    clients: int,
    per_round: int,
    rounds: int,
    delta: float,
) -> Run:
    from simulations.runner import simulate
    from simulations.settings import Settings

    started = time.perf_counter()
    dp: dict[str, Any] = {}
    if noise is not None:
        dp = {"dp_noise_multiplier": noise, "dp_clip": args.clip, "dp_delta": delta}
    report = simulate(
        Settings(
            task="digits",
            clients=clients,
            per_round=per_round,
            rounds=rounds,
            seed=args.seed,
            workers=args.workers,
            cache_dir=args.cache_dir,
            baseline=False,
            personalization=False,
            **dp,
        )
    )
    privacy = report.result.privacy or {}
    epsilon = privacy.get("epsilon")
    recorded = privacy.get("delta")
    return Run(
        label=label,
        target=target,
        noise_multiplier=noise,
        epsilon=None if epsilon is None else float(epsilon),
        delta=None if recorded is None else float(recorded),
        accuracy=report.final.accuracy,
        curve=(report.pretrained.accuracy, *(r.accuracy for r in report.result.rounds)),
        seconds=time.perf_counter() - started,
    )


def table(runs: Sequence[Run]) -> str:
    """The runs side by side; the first is the run without DP (the baseline of the gap)."""
    baseline = runs[0].accuracy
    lines = [
        f"{'target':>8}  {'noise z':>8}  {'epsilon':>8}  {'delta':>9}  {'accuracy':>8}  "
        f"{'vs no DP':>8}  {'seconds':>7}"
    ]
    for run in runs:
        lines.append(
            f"{run.label:>8}  {_cell(run.noise_multiplier, '.3f'):>8}  "
            f"{_cell(run.epsilon, '.3f'):>8}  {_cell(run.delta, '.2e'):>9}  "
            f"{run.accuracy:>8.4f}  {run.accuracy - baseline:>+8.4f}  {run.seconds:>7.1f}"
        )
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plot(runs: Sequence[Run], path: Path, *, title: str) -> None:
    """Accuracy per round of every run, and final accuracy against epsilon (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    curves, points = figure.subplots(1, 2)
    for run in runs:
        name = "no DP" if run.target is None else f"epsilon {run.epsilon or run.target:.2g}"
        curves.plot(range(len(run.curve)), run.curve, label=name, linewidth=1.2)
    curves.set_xlabel("round")
    curves.set_ylabel("test accuracy")
    curves.set_title("global model accuracy per round")
    curves.legend(loc="lower right")
    private = [r for r in runs if r.epsilon is not None]
    points.plot(
        [r.epsilon for r in private], [r.accuracy for r in private], "o-", label="DP-FedAvg"
    )
    points.axhline(runs[0].accuracy, color="grey", linestyle="--", label="no DP")
    points.axhline(runs[0].curve[0], color="black", linestyle=":", label="pretrained")
    points.set_xscale("log")
    points.minorticks_off()
    points.set_xticks([r.epsilon for r in private])
    points.set_xticklabels([f"{r.epsilon:.3g}" for r in private])
    points.set_xlabel("epsilon (log scale)")
    points.set_ylabel("final test accuracy")
    points.set_title("final accuracy against epsilon")
    points.legend(loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--rounds", type=int, default=100, help="rounds per run (100)")
    parser.add_argument("--clip", type=float, default=0.02, help="L2 clip of each update (0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="client worker processes (2)")
    parser.add_argument(
        "--out", type=Path, default=Path("dp-benchmark.png"), help="the PNG (dp-benchmark.png)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(".fedge-cache"), help="pretrained models"
    )
    parser.add_argument("--json", action="store_true", help="also print the runs as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    clients, per_round, rounds = CLIENTS, PER_ROUND, args.rounds
    if args.quick:
        clients, per_round, rounds = QUICK_CLIENTS, QUICK_PER_ROUND, QUICK_ROUNDS
    sampling_rate = per_round / clients
    delta = clients**-1.1
    print(
        f"digits: {clients} clients, {per_round} per round (q = {sampling_rate:g}), {rounds} "
        f"rounds, clip {args.clip:g}, delta {delta:.2e}",
        flush=True,
    )
    plan: list[tuple[str, float | None, float | None]] = [("none", None, None)]
    for goal in TARGETS:
        z = noise_for(goal, sampling_rate=sampling_rate, rounds=rounds, delta=delta)
        plan.append((f"{goal:g}", goal, z))
    runs = []
    for label, target, noise in plan:
        run = simulate_one(
            label,
            target,
            noise,
            args=args,
            clients=clients,
            per_round=per_round,
            rounds=rounds,
            delta=delta,
        )
        print(f"  epsilon target {label}: accuracy {run.accuracy:.4f}", flush=True)
        runs.append(run)
    print()
    print(table(runs))
    print(f"(every run starts from the pretrained head: test accuracy {runs[0].curve[0]:.4f})")
    plot(
        runs,
        args.out,
        title=f"DP-FedAvg on digits: {clients} clients, {per_round} per round, {rounds} rounds",
    )
    print(f"\nwrote {args.out}")
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
