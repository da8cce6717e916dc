"""The SecAgg+ communication graph: a random k-regular graph with k = O(log n).

Bell et al. (CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead") replace SecAgg's complete graph (Bonawitz et al., CCS 2017) with a sparse one:
a client masks with, and shares its secrets among, only its k neighbours, so each client's
work grows with log n instead of n. The graph here is their Harary-graph construction:
clients are placed on a ring in a random order (a permutation drawn from ``rng``) and each
is joined to the k/2 nearest on either side, which makes it k-regular and connected.

Threshold: an honest client reveals, for a given peer, only one kind of share (self-mask
seed if the peer survived, mask key if it dropped). With ``t > k / 2`` the server cannot
collect ``t`` shares of both kinds for one peer from disjoint sets of neighbours, so the
default threshold is the strict majority ``k // 2 + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedge.errors import SecAggError

__all__ = ["build_graph", "default_degree", "default_threshold"]


def default_degree(num_clients: int) -> int:
    """An even k = O(log n): 2 * ceil(log2 n), capped at the largest even k < n."""
    if num_clients < 3:
        raise SecAggError(f"secure aggregation needs at least 3 clients, got {num_clients}")
    largest = num_clients - 1 if (num_clients - 1) % 2 == 0 else num_clients - 2
    return min(2 * math.ceil(math.log2(num_clients)), largest)


def default_threshold(degree: int) -> int:
    """The strict majority of a neighbourhood of ``degree`` peers: ``degree // 2 + 1``."""
    return degree // 2 + 1


def build_graph(
    client_ids: Sequence[int], *, degree: int, rng: np.random.Generator
) -> dict[int, frozenset[int]]:
    """Each client's k neighbours in a random k-regular graph over ``client_ids``."""
    ids = list(client_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise SecAggError("client ids must be distinct")
    if degree < 2 or degree % 2 or degree >= n:
        raise SecAggError(f"degree must be even and in [2, {n - 1}] for {n} clients, got {degree}")
    ring = [ids[i] for i in rng.permutation(n)]
    half = degree // 2
    return {
        ring[p]: frozenset(ring[(p + s) % n] for s in range(-half, half + 1) if s != 0)
        for p in range(n)
    }
