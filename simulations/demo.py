"""The demo job on the pure core: federated softmax regression on non-IID digits.

Ten virtual clients each hold a Dirichlet(0.5) share of the digits training split. They
report mergeable statistics of their own data (never the data), the merged statistics build
the one feature transform every client uses, and each round the clients train locally and
send back only a serialized weight delta, which the server validates against the global
model before it counts. Three strategies run on the same clients and rounds: streaming
FedAvg, FedAvg with a FedAdam server optimizer, and a coordinate-wise median.

Run with ``python -m simulations.demo --out DIR`` (``make demo``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedge.aggregation import build_strategy
from fedge.data import Dataset, dirichlet, load_digits, train_test_split
from fedge.features import FeatureSpec
from fedge.stats import DatasetStats, compute_stats
from fedge.weights import Weights

STRATEGIES: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedadam": {"lr": 0.05},
    "median": {},
}


@dataclass(frozen=True)
class ClientData:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _predict(weights: Weights, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return _softmax(x.reshape(len(x), -1) @ weights["kernel"] + weights["bias"])


def local_train(
    weights: Weights, data: ClientData, *, epochs: int, lr: float, batch_size: int, seed: int
) -> Weights:
    """Mini-batch SGD on softmax cross-entropy; returns the trained weights."""
    rng = np.random.default_rng(seed)
    kernel = weights["kernel"].astype(np.float64)
    bias = weights["bias"].astype(np.float64)
    x = data.x.reshape(len(data.x), -1).astype(np.float64)
    onehot = np.eye(kernel.shape[1])[data.y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            probs = _softmax(x[batch] @ kernel + bias)
            grad = (probs - onehot[batch]) / len(batch)
            kernel -= lr * x[batch].T @ grad
            bias -= lr * grad.sum(axis=0)
    return Weights({"kernel": kernel, "bias": bias})


def accuracy(weights: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    return float((_predict(weights, x).argmax(axis=1) == y).mean())


def run_demo(*, rounds: int, num_clients: int, alpha: float, seed: int) -> dict[str, object]:
    digits = load_digits()
    train_idx, test_idx = train_test_split(digits, test_fraction=0.2, seed=seed)
    partition = dirichlet(train_idx, digits.labels, num_clients=num_clients, alpha=alpha, seed=seed)
    shards: dict[str, Dataset] = {cid: digits.take(split.train) for cid, split in partition.items()}

    # Each client summarises its own data; only the summaries are merged.
    reports = [compute_stats(d.columns, schema=d.schema, labels=d.labels) for d in shards.values()]
    merged: DatasetStats = reports[0]
    for report in reports[1:]:
        merged = merged.merge(report)
    spec = FeatureSpec.from_stats(merged, schema=digits.schema, normalization={"pixels": "minmax"})
    clients = {cid: ClientData(spec.transform(d.columns), d.labels) for cid, d in shards.items()}
    test = digits.take(test_idx)
    x_test, y_test = spec.transform(test.columns), test.labels

    dim = int(np.prod(spec.output_shape))
    initial = Weights({"kernel": np.zeros((dim, digits.schema.num_classes)), "bias": np.zeros(10)})
    history: dict[str, list[float]] = {}
    bytes_up = 0
    for name, options in STRATEGIES.items():
        strategy = build_strategy(name, initial, **options)
        global_weights, state = initial, strategy.server_optimizer.init(initial)
        curve = []
        for round_number in range(1, rounds + 1):
            aggregator = strategy.new_aggregator()
            for index, (cid, data) in enumerate(clients.items()):
                trained = local_train(
                    global_weights,
                    data,
                    epochs=1,
                    lr=0.5,
                    batch_size=16,
                    seed=seed * 100_003 + round_number * 1009 + index,
                )
                wire = trained.delta(global_weights).to_bytes()  # what a client sends
                bytes_up += len(wire)
                delta = Weights.from_bytes(wire)
                delta.validate_against(global_weights)
                aggregator.add(delta, float(len(clients[cid].y)))
            result = aggregator.result()
            global_weights, state = strategy.server_optimizer.step(
                state, global_weights, result.delta
            )
            curve.append(accuracy(global_weights, x_test, y_test))
        history[name] = curve
    return {
        "task": "digits",
        "clients": num_clients,
        "client_sizes": {cid: len(d.y) for cid, d in clients.items()},
        "partition": f"dirichlet:{alpha}",
        "rounds": rounds,
        "test_examples": len(y_test),
        "data_fingerprint": digits.fingerprint(),
        "feature_spec": json.loads(spec.to_json()),
        "accuracy": history,
        "bytes_up": bytes_up,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    summary = run_demo(
        rounds=args.rounds, num_clients=args.clients, alpha=args.alpha, seed=args.seed
    )
    names = list(STRATEGIES)
    print(
        f"fedge demo: digits, {args.clients} clients, dirichlet:{args.alpha}, {args.rounds} rounds"
    )
    print("client sizes:", " ".join(str(n) for n in summary["client_sizes"].values()))  # type: ignore[attr-defined]
    print("round " + " ".join(f"{n:>9}" for n in names))
    history = summary["accuracy"]
    assert isinstance(history, dict)
    for r in range(args.rounds):
        print(f"{r + 1:5d} " + " ".join(f"{history[n][r]:9.3f}" for n in names))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"uploaded {summary['bytes_up']:,} bytes of deltas; summary in {args.out / 'summary.json'}"
    )
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
