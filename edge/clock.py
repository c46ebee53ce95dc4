"""The one clock protocol (gateway and simulator), the real clock, and the one timeout helper.

Every wait in the product goes through an injected :class:`Clock`, so tests drive time with
``edge.testing.ManualClock`` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Wall time (UTC, aware) and a monotonic counter in seconds, plus a sleep."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has finished, consuming its outcome (our own
    cancellation still propagates)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()


async def with_timeout(clock: Clock, seconds: float, aw: Awaitable[T]) -> T:
    """``aw``, or ``TimeoutError`` after ``seconds`` on ``clock``.

    The work is cancelled (and awaited) both when time runs out and when the caller itself is
    cancelled, so nothing is left running behind the caller's back.
    """
    task = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        timer.cancel()
        task.cancel()
        raise
    timer.cancel()
    if task in done:
        return task.result()
    await cancel_and_wait(task)
    raise TimeoutError
