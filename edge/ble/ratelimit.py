"""A per-device rate limit on notifications: a token bucket (pure: the caller passes a
monotonic ``now``; no clock, no I/O).

The bucket holds up to ``burst`` tokens and refills at ``rate_hz`` tokens a second; each
notification takes one, and a notification that finds the bucket empty is refused. A real
strap (about 1 Hz, a few notifications bunched after a missed connection event) never meets
the limit; a device notifying hundreds of times a second gets ``rate_hz`` through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPSILON = 1e-9


@dataclass(frozen=True)
class RateLimit:
    """At most ``rate_hz`` a second sustained, with bursts of up to ``burst``."""

    rate_hz: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)) or self.burst < 1:
            raise ValueError("a rate limit needs rate_hz > 0 (finite) and burst >= 1")


class TokenBucket:
    """One device's bucket; starts full."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """Take a token at monotonic time ``now``; False when there is none (refuse)."""
        if self._last is not None and now > self._last:
            refill = (now - self._last) * self.limit.rate_hz
            self._tokens = min(float(self.limit.burst), self._tokens + refill)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0 - _EPSILON:  # 5 x 0.2 tokens must make one, rounding or not
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False
