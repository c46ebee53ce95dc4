"""The simulator's clocks: manual stepping, autojump, and the real one."""

import asyncio
from datetime import UTC, datetime, timedelta

from edge.clock import SystemClock
from firmware_sim.model.clock import ManualClock

START = datetime(2026, 1, 1, tzinfo=UTC)


async def test_advance_steps_through_each_deadline() -> None:
    clock = ManualClock(START)
    ticks: list[float] = []

    async def periodic() -> None:
        while True:
            await clock.sleep(1)
            ticks.append(clock.monotonic())

    task = asyncio.ensure_future(periodic())
    await clock.advance(5.5)
    assert ticks == [1, 2, 3, 4, 5]
    assert clock.monotonic() == 5.5
    assert clock.now() == START + timedelta(seconds=5.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert clock.sleepers == 0


async def test_sleep_does_not_return_before_its_deadline() -> None:
    clock = ManualClock(START)
    sleeper = asyncio.ensure_future(clock.sleep(2))
    await clock.advance(1.999)
    assert not sleeper.done()
    await clock.advance(0.001)
    assert sleeper.done()


async def test_zero_sleep_only_yields() -> None:
    clock = ManualClock(START)
    await clock.sleep(0)
    assert clock.monotonic() == 0


async def test_autojump_runs_virtual_time_while_the_loop_is_idle() -> None:
    clock = ManualClock(START, autojump=True)
    await asyncio.wait_for(clock.sleep(3600), 10)
    assert clock.monotonic() == 3600
    order: list[int] = []

    async def after(seconds: float, tag: int) -> None:
        await clock.sleep(seconds)
        order.append(tag)

    await asyncio.wait_for(asyncio.gather(after(30, 3), after(10, 1), after(20, 2)), 10)
    assert order == [1, 2, 3]
    assert clock.monotonic() == 3630


async def test_autojump_delay_paces_the_jumps() -> None:
    clock = ManualClock(START, autojump=True, autojump_delay=0.001)
    await asyncio.wait_for(clock.sleep(5), 10)
    assert clock.monotonic() == 5


async def test_real_clock_is_utc_and_monotonic() -> None:
    clock = SystemClock()
    assert clock.now().tzinfo is UTC
    a = clock.monotonic()
    await clock.sleep(0)
    assert clock.monotonic() >= a
