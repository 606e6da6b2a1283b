"""Seeded, order-independent random draws.

Every draw is a hash of (seed, purpose, key), where the key is a submission's sequence number
and attempt. A request's latency or failure therefore does not depend on how other requests
interleave on the event loop, which keeps rate-based knobs reproducible under concurrency.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

from genrelay.emulator.settings import FixedLatency, LognormalLatency, UniformLatency

_STANDARD_NORMAL = NormalDist()
_SCALE = float(1 << 64)
# Keeps inverse-CDF sampling away from the infinite tails.
_EPSILON = 1e-12


class Dice:
    """Deterministic draws in [0, 1) keyed by purpose and integers."""

    __slots__ = ("_key",)

    def __init__(self, seed: int) -> None:
        self._key = seed.to_bytes(16, "big", signed=True)

    def uniform(self, purpose: str, *key: int) -> float:
        """A draw in [0, 1) that depends only on the seed, `purpose` and `key`."""
        return self.integer(purpose, *key) / _SCALE

    def integer(self, purpose: str, *key: int) -> int:
        """A draw in [0, 2**64) that depends only on the seed, `purpose` and `key`."""
        text = purpose + "".join(f":{part}" for part in key)
        digest = hashlib.blake2b(text.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big")

    def chance(self, rate: float, purpose: str, *key: int) -> bool:
        """True with probability `rate`; never draws for the common 0 and 1 rates."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.uniform(purpose, *key) < rate

    def latency_ms(
        self,
        spec: FixedLatency | UniformLatency | LognormalLatency,
        purpose: str,
        *key: int,
    ) -> float:
        """A delay in milliseconds drawn from `spec`."""
        if isinstance(spec, FixedLatency):
            return spec.ms
        u = self.uniform(purpose, *key)
        if isinstance(spec, UniformLatency):
            return spec.min_ms + u * (spec.max_ms - spec.min_ms)
        z = _STANDARD_NORMAL.inv_cdf(min(max(u, _EPSILON), 1.0 - _EPSILON))
        value = spec.median_ms * math.exp(spec.sigma * z)
        return value if spec.max_ms is None else min(value, spec.max_ms)
