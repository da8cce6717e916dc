"""Differential privacy primitives: the Gaussian mechanism, L2 clipping, DP-FedAvg settings.

- :func:`gaussian_sigma` / :func:`gaussian_epsilon`: the analytic Gaussian mechanism
  (Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy:
  Analytical Calibration and Optimal Denoising", ICML), exact for one release; edge devices
  use it to noise features and statistics (they carry no accounting library).
- :func:`clip_l2`: scale a vector into an L2 ball.
- :class:`DPConfig`: DP-FedAvg's settings (McMahan et al. 2018, "Learning Differentially
  Private Recurrent Language Models", ICLR): each client's update clipped to L2 ``clip``,
  the clipped updates summed with weight 1, Gaussian noise of stddev
  ``noise_multiplier * clip`` added, divided by ``expected_clients``. With ``adaptive`` the
  clip follows a quantile of the update norms (Andrew et al. 2021, "Differentially Private
  Learning with Adaptive Clipping", NeurIPS): :func:`next_clip`.

The strategy wrapper that applies these is :class:`fedge.strategy.DPFedAvg`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedge.errors import ConfigError
from fedge.validation import check_fraction, check_int, check_number, check_positive

__all__ = [
    "DP_CLIP_SLOT",
    "DPConfig",
    "clip_l2",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_sigma",
    "next_clip",
]

DP_CLIP_SLOT = "dp_clip"
"""The server-state slot that carries the adaptive clip between rounds (one scalar tensor
``clip``); :class:`fedge.strategy.DPFedAvg` adds it, every other strategy ignores it."""

_MAX_EPSILON = 700.0  # exp(epsilon) stays finite in float64


def _phi(x: float) -> float:
    """The standard normal CDF; ``erfc`` keeps the lower tail accurate."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The smallest delta for which N(0, sigma^2) noise on a query of L2 ``sensitivity``
    is (epsilon, delta)-DP (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    # exp(eps) * Phi(-a - b) computed in log space: the product is tiny where exp is huge.
    upper = 0.5 * math.erfc((a + b) / math.sqrt(2.0))
    tail = math.exp(epsilon + math.log(upper)) if upper > 0.0 else 0.0
    return max(0.0, _phi(a - b) - tail)


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest noise stddev that makes the Gaussian mechanism on a query of L2
    ``sensitivity`` (epsilon, delta)-DP (the analytic calibration of Balle & Wang 2018)."""
    eps = check_number(epsilon, "epsilon", low=0.0, low_inclusive=False, high=_MAX_EPSILON)
    dlt = check_fraction(delta, "delta", zero_ok=False)
    sens = check_positive(sensitivity, "sensitivity")
    high = sens
    while gaussian_delta(high, eps, sens) > dlt:
        high *= 2.0
    # delta falls as sigma grows
    return _smallest(lambda sigma: gaussian_delta(sigma, eps, sens) <= dlt, 1e-12 * sens, high)


def gaussian_epsilon(sigma: float, delta: float, sensitivity: float) -> float:
    """The smallest epsilon for which N(0, sigma^2) noise on a query of L2 ``sensitivity``
    is (epsilon, delta)-DP: the inverse of :func:`gaussian_sigma`."""
    sig = check_positive(sigma, "sigma")
    dlt = check_fraction(delta, "delta", zero_ok=False)
    sens = check_positive(sensitivity, "sensitivity")
    if gaussian_delta(sig, 0.0, sens) <= dlt:
        return 0.0
    low, high = 0.0, 1.0
    while gaussian_delta(sig, high, sens) > dlt:
        if high >= _MAX_EPSILON:
            return math.inf
        high = min(2.0 * high, _MAX_EPSILON)
    # delta falls as epsilon grows
    return _smallest(lambda eps: gaussian_delta(sig, eps, sens) <= dlt, low, high)


def _smallest(holds: Callable[[float], bool], low: float, high: float) -> float:
    """The smallest x in (low, high] where the monotone ``holds`` is true (it is at
    ``high``), bisected to float precision."""
    for _ in range(200):
        mid = 0.5 * (low + high)
        if holds(mid):
            high = mid
        else:
            low = mid
        if high - low <= 1e-15 * high:
            break
    return high


def clip_l2(vector: npt.ArrayLike, bound: float) -> tuple[npt.NDArray[np.float64], bool]:
    """``vector * min(1, bound / ||vector||)`` in float64, and whether it was scaled down.
    A non-finite vector is refused (its norm bounds nothing)."""
    limit = check_positive(bound, "bound")
    values = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(values.ravel()))
    if not math.isfinite(norm):
        raise ConfigError("cannot clip a vector holding NaN or infinite values")
    if norm <= limit:
        return values.copy(), False
    return values * (limit / norm), True


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """DP-FedAvg's settings, validated when built.

    - ``noise_multiplier`` z >= 0: the noise stddev is ``z * clip`` on the sum of clipped
      updates (0: clipping only, no guarantee).
    - ``clip`` C > 0: the L2 bound of one client's update (with ``adaptive``: the first
      round's bound).
    - ``expected_clients`` m: the fixed denominator (the round's clients_per_round).
    - ``adaptive``: quantile clipping (Andrew et al. 2021): after each round the clip moves
      toward the ``target_quantile`` of the update norms,
      ``C <- C * exp(-clip_learning_rate * (b - target_quantile))``, where b is the
      fraction of updates within the clip, counted with N(0, ``clipped_count_stddev``^2)
      noise (default m / 20). That count spends privacy too: the update noise multiplier
      becomes ``(z^-2 - (2 * clipped_count_stddev)^-2)^-1/2`` so that the round as a whole
      keeps multiplier z (the paper's Theorem 1), which needs ``2 * clipped_count_stddev > z``.
    """

    noise_multiplier: float
    clip: float = 1.0
    expected_clients: int
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None

    def __post_init__(self) -> None:
        z = check_number(self.noise_multiplier, "noise_multiplier", low=0.0, high=1e6)
        object.__setattr__(self, "noise_multiplier", z)
        object.__setattr__(self, "clip", check_number(self.clip, "clip", low=0.0, high=1e6))
        if self.clip <= 0.0:
            raise ConfigError(f"clip must be > 0, got {self.clip!r}")
        check_int(self.expected_clients, "expected_clients", low=1)
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"adaptive must be true or false, got {self.adaptive!r}")
        quantile = check_fraction(self.target_quantile, "target_quantile", zero_ok=False)
        object.__setattr__(self, "target_quantile", quantile)
        rate = check_number(self.clip_learning_rate, "clip_learning_rate", low=0.0, high=10.0)
        object.__setattr__(self, "clip_learning_rate", rate)
        if self.clipped_count_stddev is None:
            object.__setattr__(self, "clipped_count_stddev", self.expected_clients / 20.0)
        else:
            stddev = check_number(self.clipped_count_stddev, "clipped_count_stddev", low=0.0)
            object.__setattr__(self, "clipped_count_stddev", stddev)
        if self.adaptive and z > 0.0 and not 2.0 * self.count_stddev > z:
            raise ConfigError(
                f"adaptive clipping with noise_multiplier {z:g} needs clipped_count_stddev > "
                f"{z / 2.0:g} (got {self.count_stddev:g}): the noised clipped count spends the "
                "rest of the round's privacy"
            )

    @property
    def count_stddev(self) -> float:
        """``clipped_count_stddev`` with its default applied."""
        assert self.clipped_count_stddev is not None  # set in __post_init__
        return self.clipped_count_stddev

    @property
    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise on the updates: z, or with adaptive clipping the
        share left after the clipped count's noise (Andrew et al. 2021, Theorem 1)."""
        z = self.noise_multiplier
        if not self.adaptive or z == 0.0:
            return z
        return float((z**-2 - (2.0 * self.count_stddev) ** -2) ** -0.5)

    def noise_stddev(self, clip: float) -> float:
        """The stddev of the noise on the sum of updates clipped to ``clip``."""
        return self.update_noise_multiplier * clip

    def client_noise_stddev(self) -> float:
        """Each client's share of the noise in a secure round (distributed noise):
        ``z * clip / sqrt(m)``, so that m clients' noise sums to stddev ``z * clip``."""
        return self.noise_multiplier * self.clip / math.sqrt(self.expected_clients)


def next_clip(
    config: DPConfig, clip: float, unclipped: int, *, rng: np.random.Generator
) -> tuple[float, float]:
    """The adaptive clip after a round where ``unclipped`` updates were within ``clip``:
    ``(new clip, noised fraction within the clip)`` (Andrew et al. 2021, Algorithm 1)."""
    noisy = (unclipped + rng.normal(0.0, config.count_stddev)) / config.expected_clients
    return clip * math.exp(-config.clip_learning_rate * (noisy - config.target_quantile)), noisy
