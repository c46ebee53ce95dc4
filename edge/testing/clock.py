"""The one manual clock, for the gateway's tests and the simulator's.

``step(s)`` moves time at once and wakes every sleeper whose deadline passed (synchronous, for
code that is not a coroutine). ``await advance(s)`` steps through every deadline on the way in
order, letting woken tasks run, so periodic tasks tick once per period. With ``autojump=True``
the clock jumps to the next deadline whenever the event loop has gone quiet, as trio's
``MockClock(autojump_threshold=0)`` does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

#: how many bare loop iterations count as "the loop has gone quiet"
_SETTLE_ROUNDS = 25


async def settle(rounds: int = _SETTLE_ROUNDS) -> None:
    """Let ready tasks run: yield to the event loop ``rounds`` times."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ManualClock:
    """Virtual time. ``sleep`` parks the caller until the clock passes its deadline."""

    def __init__(
        self,
        start: datetime | None = None,
        *,
        autojump: bool = False,
        autojump_delay: float = 0.0,
    ) -> None:
        """``autojump_delay`` (real seconds) paces the jumps, capping how fast virtual time
        runs while the test waits on something that is not this clock (a thread, real I/O)."""
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0
        self._wall_offset = 0.0
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._autojump = autojump
        self._autojump_delay = autojump_delay
        self._jumper: asyncio.Task[None] | None = None

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._mono + self._wall_offset)

    def monotonic(self) -> float:
        return self._mono

    @property
    def sleepers(self) -> int:
        """How many tasks wait on this clock."""
        return sum(1 for _, _, f in self._heap if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (self._mono + seconds, next(self._seq), fut))
        if self._autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = loop.create_task(self._jump_while_idle())
        await fut

    def step(self, seconds: float) -> None:
        """Move time forward at once and wake every sleeper whose deadline has passed."""
        self._mono += max(0.0, seconds)
        self._wake()

    def set_wall(self, when: datetime) -> None:
        """Step the wall clock (as NTP does) without moving monotonic time."""
        self._wall_offset = (when - self._start).total_seconds() - self._mono

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, stopping at each deadline on the way so that
        periodic tasks tick once per period, and letting woken tasks run before returning."""
        target = self._mono + max(0.0, seconds)
        await settle()
        while True:
            nxt = self._next_deadline()
            if nxt is None or nxt > target:
                break
            self._mono = max(self._mono, nxt)
            self._wake()
            await settle()
        self._mono = target
        self._wake()
        await settle()

    def _pop_due(self) -> list[asyncio.Future[None]]:
        due: list[asyncio.Future[None]] = []
        while self._heap and self._heap[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                due.append(fut)
        return due

    def _next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _wake(self) -> None:
        for fut in self._pop_due():
            fut.set_result(None)

    async def _jump_while_idle(self) -> None:
        # asyncio cannot tell us "every task is blocked"; a run of bare loop iterations with
        # nothing new scheduled on this clock is the practical stand-in.
        while True:
            await settle()
            if self._autojump_delay > 0:
                await asyncio.sleep(self._autojump_delay)
                await settle()
            nxt = self._next_deadline()
            if nxt is None:
                return
            self._mono = max(self._mono, nxt)
            self._wake()
