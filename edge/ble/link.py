"""One live connection: the client, a "link dropped" event, and clock-driven timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from edge.ble.errors import BLE_EXCEPTIONS, BleOperationError, ble_error
from edge.ble.ports import BleClient
from edge.clock import cancel_and_wait, with_timeout

T = TypeVar("T")

__all__ = ["Link", "cancel_and_wait", "with_timeout"]


class Link:
    """A connected client plus an event set when the link drops."""

    def __init__(self, client: BleClient, dropped: asyncio.Event) -> None:
        self.client = client
        self.dropped = dropped

    async def wait_dropped(self) -> None:
        """Return when the link drops."""
        await self.dropped.wait()

    async def call(self, operation: str, aw: Awaitable[T]) -> T:
        """``aw``, with bleak's errors translated (address-free) and a drop noticed at once."""
        task = asyncio.ensure_future(aw)
        drop = asyncio.ensure_future(self.dropped.wait())
        try:
            await asyncio.wait({task, drop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            drop.cancel()
            raise
        drop.cancel()
        if not task.done():
            await cancel_and_wait(task)
            raise BleOperationError(operation, "link_lost")
        try:
            return task.result()
        except BLE_EXCEPTIONS as exc:
            raise ble_error(operation, exc) from exc

    async def close(self) -> None:
        """Disconnect, ignoring errors (the link may already be gone)."""
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await self.client.disconnect()
