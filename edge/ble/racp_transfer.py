"""One RACP transfer over a live link: the pure :class:`edge.gatt.racp_client.RacpSync` driven
with bleak and the clock.

The session's notification callbacks put ``(characteristic, value, receive time)`` on a queue;
:func:`run_transfer` writes what the machine asks for and feeds it what arrives, until it
finishes. It never raises for a transfer that did not complete: the result holds what arrived
(the caller keeps that progress), and a link that went mid-transfer is handed back as
:attr:`Transfer.error` for the caller to raise once the progress is kept.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime

from edge.ble.errors import BleOperationError, att_code
from edge.ble.link import Link, with_timeout
from edge.ble.profiles import GLUCOSE_CONTEXT, GLUCOSE_MEASUREMENT, RACP
from edge.clock import Clock
from edge.gatt.racp_client import Action, Finished, RacpSync, SyncResult, Write

#: (characteristic UUID, value, receive time) as the notification callbacks queue it
Event = tuple[str, bytes, datetime]


@dataclass(frozen=True)
class Transfer:
    """What one transfer produced."""

    result: SyncResult
    #: each record's receive time, by sequence number (the first arrival)
    received: dict[int, datetime]
    #: the link error that cut the transfer short (raise it once the progress is kept)
    error: BleOperationError | None = None


async def run_transfer(
    link: Link,
    clock: Clock,
    events: asyncio.Queue[Event],
    from_sequence: int | None,
    *,
    timeout_s: float,
    busy_retries: int,
) -> Transfer:
    """Drive :class:`RacpSync` from ``from_sequence`` (None: all) to its end."""
    client = link.client
    sync = RacpSync(from_sequence, timeout_s, max_busy_retries=busy_retries)
    received: dict[int, datetime] = {}
    try:
        action: Action = sync.start(clock.monotonic())
        while not isinstance(action, Finished):
            if isinstance(action, Write):
                try:
                    await link.call(
                        "racp_write", client.write_gatt_char(RACP, action.payload, True)
                    )
                except BleOperationError as exc:
                    code = att_code(exc.__cause__) if exc.__cause__ else None
                    if code is None:
                        raise
                    action = sync.write_failed(code, clock.monotonic())
                    continue
            event = await _next_event(link, clock, events, action.deadline)
            now = clock.monotonic()
            if event is None:
                action = sync.tick(now)
                continue
            uuid, data, at = event
            if uuid == GLUCOSE_MEASUREMENT:
                if len(data) >= 3:
                    received.setdefault(int.from_bytes(data[1:3], "little"), at)
                action = sync.measurement(data, now)
            elif uuid == GLUCOSE_CONTEXT:
                action = sync.context(data, now)
            else:
                action = sync.indication(data, now)
    except BleOperationError as exc:
        # the link went mid-transfer: what arrived is kept all the same
        return Transfer(_cut_short(sync, clock.monotonic()), received, exc)
    return Transfer(action.result, received)


async def _next_event(
    link: Link, clock: Clock, events: asyncio.Queue[Event], deadline: float
) -> Event | None:
    if not events.empty():
        return events.get_nowait()
    remaining = max(0.0, deadline - clock.monotonic())
    try:
        return await link.call("racp", with_timeout(clock, remaining, events.get()))
    except BleOperationError as exc:
        if exc.reason == "timeout":
            return None
        raise


def _cut_short(sync: RacpSync, now: float) -> SyncResult:
    """The result of a transfer whose link went: what arrived, status aborted."""
    action = sync.abort(now)
    if not isinstance(action, Finished):
        # nothing can be written or received any more: run the abort's wait out at once
        action = sync.tick(math.inf)
    assert isinstance(action, Finished)
    return action.result
