import random

import pytest

from edge.backoff import Backoff, BackoffPolicy
from edge.testing import ManualClock


def test_ceiling_grows_then_caps() -> None:
    p = BackoffPolicy(base=1, factor=2, cap=10, jitter=0)
    assert [p.ceiling(i) for i in range(6)] == [1, 2, 4, 8, 10, 10]
    assert p.ceiling(10_000) == 10


def test_jitter_stays_within_bounds() -> None:
    p = BackoffPolicy(base=1, factor=2, cap=30, jitter=0.5)
    rng = random.Random(7)
    for attempt in range(12):
        d = p.delay(attempt, rng)
        assert p.ceiling(attempt) * 0.5 <= d <= p.ceiling(attempt)


def test_backoff_counts_and_resets() -> None:
    b = Backoff(BackoffPolicy(base=1, factor=3, cap=100, jitter=0), random.Random(1))
    assert [b.next_delay() for _ in range(3)] == [1, 3, 9]
    b.reset()
    assert b.next_delay() == 1


@pytest.mark.parametrize("kw", [{"base": 0}, {"factor": 0.5}, {"cap": 0.1}, {"jitter": 2}])
def test_invalid_policy_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kw)


async def test_manual_clock_wakes_sleepers_only_when_due() -> None:
    import asyncio

    clock = ManualClock()
    woke: list[float] = []

    async def sleeper(t: float) -> None:
        await clock.sleep(t)
        woke.append(t)

    tasks = [asyncio.create_task(sleeper(t)) for t in (5, 1)]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    clock.step(2)
    await asyncio.sleep(0)
    assert woke == [1]
    clock.step(3)
    await asyncio.gather(*tasks)
    assert woke == [1, 5]
