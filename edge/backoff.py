"""Capped, jittered exponential backoff as a pure policy (no sleeping here)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before retry ``attempt`` (0-based): ``min(cap, base * factor**attempt)``,
    jittered downwards by up to ``jitter`` (a fraction) so many clients do not retry together."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor < 1 or self.cap < self.base or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs base > 0, factor >= 1, cap >= base, 0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay for ``attempt``."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Stop multiplying once past the cap so huge attempt counts cannot overflow.
        delay = self.base
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay for ``attempt``, in ``[ceiling*(1-jitter), ceiling]``."""
        ceiling = self.ceiling(attempt)
        return ceiling * (1.0 - self.jitter * rng.random())


@dataclass
class Backoff:
    """A policy plus the attempt counter of one retrying party."""

    policy: BackoffPolicy
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next try; counts the attempt."""
        delay = self.policy.delay(self.attempt, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Call after a success."""
        self.attempt = 0
