"""One round's cost of secure aggregation and of each update compression, side by side.

Run ``.venv/bin/python benchmarks/secagg.py`` (``--clients 100 --params 100000`` by
default; ``--quick`` is a small smoke run). In one process, on the same synthetic round
(float32 deltas drawn from N(0, 0.02), example counts in 10..200, a model of two tensors),
it measures, per method:

- client time: the mean per client of what a device computes for its upload (encode,
  compress or all four SecAgg+ stages, including the JSON encoding of each message);
- server time: the whole round on the server (decode every upload and FedAvg them; for
  SecAgg+ every stage, the unmasking and the dequantization);
- bytes up and down per selected client and in total. Down is the global model as
  safetensors (every method downloads it) plus, for SecAgg+, the key roster, share
  delivery and unmask request each client is served; up is the update payload, or for
  SecAgg+ the advertised keys, sealed shares, packed masked vector and unmask shares. JSON
  documents are counted as compact UTF-8 text;
- the max abs error of the aggregated delta against the exact float64 FedAvg of the same
  float32 deltas (for the dropout row: of the survivors' deltas).

Methods: ``plain`` (float32 safetensors, ``fedge.weights.encode_weights``), ``q8``
(``fedge.compression.Quantizer8Bit``, one block per tensor), ``topk`` (1% with error
feedback, ``TopK.step`` from a zero residual: one round of it, so most of the delta is
still in the residual and its error is large), ``secagg`` (``fedge.secagg``, default
degree and threshold, clip 1, 16-bit field quantization, example cap 1000),
``secagg-q8`` (the same with 8-bit field quantization) and ``secagg-drop`` (16-bit, 10% of
the clients drop after sharing keys, so the server recovers their mask keys). The modulus
bits and the example cap come from the coordinator's own
:class:`~coordinator.config.RoundConfig` (``secagg_bits``, ``secagg_cap``: with q8 the cap is
at most 255). Ratios are against ``plain``
measured in the same run; figures compare only within one invocation.
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
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, ParamSpec, TypeVar  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from coordinator.config import RoundConfig  # noqa: E402
from fedge.aggregation import FedAvg  # noqa: E402
from fedge.compression import ErrorFeedback, Quantizer8Bit, TopK, decode_into  # noqa: E402
from fedge.secagg import (  # noqa: E402
    ClientState,
    MaskingConfig,
    SecAggMessage,
    ServerState,
    decode_secagg,
    encode_secagg,
)
from fedge.weights import Weights, decode_weights, encode_weights  # noqa: E402

CLIP = 1.0
EXAMPLE_CAP = 1000
TOPK_FRACTION = 0.01
DROPOUT = 0.1
METHODS = ("plain", "q8", "topk", "secagg", "secagg-q8", "secagg-drop")

_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(frozen=True)
class Workload:
    """One round's inputs: the global model, each client's delta and example count."""

    base: Weights
    deltas: tuple[Weights, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Row:
    """What one method cost for one round."""

    method: str
    client_seconds: float
    """Mean per client that did work."""
    server_seconds: float
    up_bytes: int
    down_bytes: int
    clients: int
    """Selected clients: the per-client bytes divide by this."""
    max_error: float
    error_bound: float | None = None
    """SecAgg+: the promised bound on each coordinate of the mean."""


def build_workload(clients: int, params: int, *, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    bias = max(1, params // 10)
    shapes = {"dense/kernel": (params - bias,), "dense/bias": (bias,)}
    base = Weights({n: rng.normal(0.0, 0.1, s).astype(np.float32) for n, s in shapes.items()})
    deltas = tuple(
        Weights({n: rng.normal(0.0, 0.02, s).astype(np.float32) for n, s in shapes.items()})
        for _ in range(clients)
    )
    counts = tuple(int(c) for c in rng.integers(10, 201, clients))
    return Workload(base, deltas, counts)


def exact_fedavg(work: Workload, ids: Sequence[int]) -> npt.NDArray[np.float64]:
    total = np.zeros(work.base.num_parameters, np.float64)
    for i in ids:
        total += work.deltas[i].flatten() * work.counts[i]
    mean: npt.NDArray[np.float64] = total / sum(work.counts[i] for i in ids)
    return mean


def secure_round_config(clients: int, quantization_bits: int) -> RoundConfig:
    """The coordinator's round config for a secure round of ``clients`` (``q8`` when
    ``quantization_bits`` is 8): its ``secagg_bits`` and ``secagg_cap`` are what the
    coordinator derives (the modulus, and the example cap: at most 255 with q8)."""
    return RoundConfig(
        clients_per_round=clients,
        secure_aggregation=True,
        secagg_clip=CLIP,
        secagg_example_cap=EXAMPLE_CAP,
        compression="q8" if quantization_bits == 8 else "none",
    )


def _timed(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> tuple[_T, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def _max_error(delta: Weights, exact: npt.NDArray[np.float64]) -> float:
    return float(np.abs(delta.flatten() - exact).max())


def run_compressed(work: Workload, method: str, *, seed: int) -> Row:
    """``plain``, ``q8`` or ``topk``: each client encodes its delta; the server decodes
    each payload and FedAvgs them."""
    rng = np.random.default_rng(seed)
    quantizer, topk = Quantizer8Bit(), TopK(fraction=TOPK_FRACTION)
    model = encode_weights(work.base)

    def upload(delta: Weights) -> bytes:
        if method == "plain":
            return encode_weights(delta)
        if method == "q8":
            return quantizer.encode(delta, rng=rng).payload
        return topk.step(ErrorFeedback.zeros(work.base), delta)[0].payload

    payloads: list[bytes] = []
    client_seconds = 0.0
    for delta in work.deltas:
        payload, seconds = _timed(upload, delta)
        payloads.append(payload)
        client_seconds += seconds

    def serve() -> Weights:
        aggregator = FedAvg(work.base)
        for payload, count in zip(payloads, work.counts, strict=True):
            update = (
                decode_weights(payload)[0] if method == "plain" else decode_into(payload, work.base)
            )
            aggregator.add(update, count)
        return aggregator.result().delta

    aggregate, server_seconds = _timed(serve)
    n = len(work.deltas)
    return Row(
        method=method,
        client_seconds=client_seconds / n,
        server_seconds=server_seconds,
        up_bytes=sum(len(p) for p in payloads),
        down_bytes=n * len(model),
        clients=n,
        max_error=_max_error(aggregate, exact_fedavg(work, range(n))),
    )


class _Wire:
    """Counts the bytes of every SecAgg+ message, each through the JSON codec."""

    def __init__(self) -> None:
        self.up = 0
        self.down = 0

    def send(self, message: SecAggMessage) -> tuple[str, bytes | None]:
        doc, body = encode_secagg(message)
        text = json.dumps(doc, separators=(",", ":"))
        return text, body

    def receive(self, wire: tuple[str, bytes | None]) -> Any:
        return decode_secagg(json.loads(wire[0]), wire[1])

    @staticmethod
    def size(wire: tuple[str, bytes | None]) -> int:
        return len(wire[0].encode()) + len(wire[1] or b"")


def run_secure(
    work: Workload, method: str, *, quantization_bits: int, dropout: float, seed: int
) -> Row:
    """The four SecAgg+ stages for every client in turn; the server between them. Clients
    in the dropped set share keys and then send nothing more."""
    rng = np.random.default_rng(seed)
    n = len(work.deltas)
    round_config = secure_round_config(n, quantization_bits)
    quantization_bits, bits = round_config.secagg_bits
    config = MaskingConfig(
        dimension=work.base.num_parameters,
        clip=CLIP,
        example_cap=round_config.secagg_cap,
        modulus_bits=bits,
        quantization_bits=quantization_bits,
    )
    dropped = set(rng.choice(n, round(dropout * n), replace=False).tolist())
    wire = _Wire()
    model_bytes = len(encode_weights(work.base))
    client_seconds = [0.0] * n
    clients: dict[int, ClientState] = {}

    def client(step: Callable[[int], _T], cid: int) -> _T:
        value, seconds = _timed(step, cid)
        client_seconds[cid] += seconds
        return value

    def advertise(cid: int) -> tuple[str, bytes | None]:
        clients[cid] = ClientState.create(cid, config)
        return wire.send(clients[cid].advertise())

    adverts = {cid: client(advertise, cid) for cid in range(n)}
    up = sum(map(_Wire.size, adverts.values()))
    server_seconds = 0.0
    (server, rosters), seconds = _timed(
        lambda: ServerState(config).collect_keys(
            [wire.receive(a) for a in adverts.values()], rng=rng
        )
    )
    server_seconds += seconds
    roster_wire, seconds = _timed(lambda: {cid: wire.send(r) for cid, r in rosters.items()})
    server_seconds += seconds
    down = sum(map(_Wire.size, roster_wire.values()))

    def share(cid: int) -> tuple[str, bytes | None]:
        clients[cid], message = clients[cid].share_keys(wire.receive(roster_wire[cid]))
        return wire.send(message)

    shares = {cid: client(share, cid) for cid in range(n)}
    up += sum(map(_Wire.size, shares.values()))
    (server, deliveries), seconds = _timed(
        lambda: server.collect_shares([wire.receive(s) for s in shares.values()])
    )
    server_seconds += seconds
    delivery_wire, seconds = _timed(lambda: {cid: wire.send(d) for cid, d in deliveries.items()})
    server_seconds += seconds
    down += sum(map(_Wire.size, delivery_wire.values()))

    def mask(cid: int) -> tuple[str, bytes | None]:
        vector = work.deltas[cid].flatten()
        clients[cid], message = clients[cid].mask(
            wire.receive(delivery_wire[cid]), vector, work.counts[cid], rng=rng
        )
        return wire.send(message)

    survivors = [cid for cid in range(n) if cid not in dropped]
    for cid in survivors:
        masked = client(mask, cid)
        up += _Wire.size(masked)
        server, seconds = _timed(server.accept_masked, wire.receive(masked))
        server_seconds += seconds
    (server, requests), seconds = _timed(server.unmask_requests)
    server_seconds += seconds
    request_wire, seconds = _timed(lambda: {cid: wire.send(r) for cid, r in requests.items()})
    server_seconds += seconds
    down += sum(map(_Wire.size, request_wire.values()))

    def unmask(cid: int) -> tuple[str, bytes | None]:
        clients[cid], message = clients[cid].unmask(wire.receive(request_wire[cid]))
        return wire.send(message)

    responses = [client(unmask, cid) for cid in requests]
    up += sum(map(_Wire.size, responses))

    def finish(state: ServerState) -> tuple[Weights, float]:
        result = state.unmask([wire.receive(r) for r in responses])
        bound = config.example_cap * config.error_bound(result.num_clients) / result.num_examples
        return work.base.unflatten(result.mean), bound

    (aggregate, bound), seconds = _timed(finish, server)
    server_seconds += seconds
    return Row(
        method=method,
        client_seconds=sum(client_seconds) / n,
        server_seconds=server_seconds,
        up_bytes=up,
        down_bytes=down + n * model_bytes,
        clients=n,
        max_error=_max_error(aggregate, exact_fedavg(work, survivors)),
        error_bound=bound,
    )


def measure(clients: int, params: int, *, seed: int, log: Callable[[str], None]) -> list[Row]:
    work = build_workload(clients, params, seed=seed)
    rows = []
    for method in METHODS:
        log(f"measuring {method} ...")
        if method in ("plain", "q8", "topk"):
            rows.append(run_compressed(work, method, seed=seed))
        else:
            rows.append(
                run_secure(
                    work,
                    method,
                    quantization_bits=8 if method == "secagg-q8" else 16,
                    dropout=DROPOUT if method == "secagg-drop" else 0.0,
                    seed=seed,
                )
            )
    return rows


def format_table(rows: Sequence[Row]) -> str:
    plain = rows[0]
    head = (
        f"{'method':<12}{'client ms':>11}{'server s':>10}{'up B/cl':>11}{'down B/cl':>11}"
        f"{'up total':>13}{'down total':>13}"
        f"{'client x':>10}{'server x':>10}{'up x':>8}{'down x':>8}{'max abs err':>13}"
        f"{'bound':>10}"
    )
    lines = [head]
    for row in rows:
        lines.append(
            f"{row.method:<12}{row.client_seconds * 1e3:>11.2f}{row.server_seconds:>10.3f}"
            f"{row.up_bytes // row.clients:>11,}{row.down_bytes // row.clients:>11,}"
            f"{row.up_bytes:>13,}{row.down_bytes:>13,}"
            f"{row.client_seconds / plain.client_seconds:>10.2f}"
            f"{row.server_seconds / plain.server_seconds:>10.2f}"
            f"{row.up_bytes / plain.up_bytes:>8.3f}{row.down_bytes / plain.down_bytes:>8.3f}"
            f"{row.max_error:>13.2e}"
            f"{'-' if row.error_bound is None else format(row.error_bound, '.2e'):>10}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--clients", type=int, default=100, help="clients in the round")
    parser.add_argument("--params", type=int, default=100_000, help="model parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10 clients x 2,000 parameters"
    )
    args = parser.parse_args(argv)
    clients, params = (10, 2_000) if args.quick else (args.clients, args.params)
    if clients < 10 or params < 10:
        parser.error("--clients and --params must be at least 10")
    print(f"one round: {clients} clients x {params:,} parameters (seed {args.seed})")
    started = time.perf_counter()
    rows = measure(clients, params, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    print(format_table(rows))
    q16, q8 = secure_round_config(clients, 16), secure_round_config(clients, 8)
    print(
        f"secagg: modulus 2^{q16.secagg_bits[1]} (q=16, example cap {q16.secagg_cap}), "
        f"2^{q8.secagg_bits[1]} (q=8, example cap {q8.secagg_cap}); clip {CLIP}; "
        f"{DROPOUT:.0%} dropout after sharing keys in secagg-drop"
    )
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
