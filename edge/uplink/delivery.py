"""Delivery marks: readings whose PUBACK arrived are marked delivered in the vault, batched.

Only the bookkeeping waits: a reading leaves the outbox only after the PUBACK of the message
that carried it, and a crash before its mark only sends it again (at-least-once). Marks ride in
the same writer-thread handoff as the forwarder's next outbox read, or go at the latest
``ACK_FLUSH_DELAY_S`` after the PUBACK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from edge.errors import EdgeError
from edge.log import get_logger
from edge.uplink.ports import Outbox
from edge.uplink.stats import Counters

log = get_logger("edge.uplink.forwarder")

#: acknowledged ids wait at most this long for the next outbox read to carry their marks
ACK_FLUSH_DELAY_S = 0.1


class DeliveryMarks:
    """Acknowledged reading ids, marked delivered in batches."""

    def __init__(
        self,
        outbox: Outbox,
        counters: Counters,
        on_delivered: Callable[[Sequence[str]], None] | None = None,
        delay_s: float = ACK_FLUSH_DELAY_S,
    ) -> None:
        self._outbox = outbox
        self._delay_s = delay_s
        self._counters = counters
        self._on_delivered = on_delivered
        self._acked: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    def acknowledged(self, ids: Sequence[str]) -> None:
        """The PUBACK of a message carrying ``ids`` arrived: mark them soon."""
        self._acked.extend(ids)
        if self._timer is None and not self._running():
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.soon)

    def soon(self) -> None:
        """Start marking what was acknowledged, unless a flush already runs (it takes them)."""
        self._cancel_timer()
        if self._acked and not self._running():
            self._task = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Mark every acknowledged reading delivered; PUBACKs arriving meanwhile are batched
        into the next outbox transaction."""
        self._cancel_timer()
        async with self._lock:
            while self._acked:
                ids, self._acked = self._acked, []
                try:
                    await self._outbox.mark_delivered(ids)
                except EdgeError as exc:
                    # They stay pending and are sent again: a duplicate, never a loss.
                    log.error("uplink.mark_delivered_failed", n=len(ids), error=type(exc).__name__)
                    continue
                self._counters.readings_delivered += len(ids)
                if self._on_delivered is not None:
                    self._on_delivered(ids)

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
