"""The orderly shutdown, in the order that loses nothing: the forwarder starts nothing new,
BLE stops (no new readings), in-flight publishes get until the deadline to be acknowledged,
then everything else stops."""

from __future__ import annotations

import asyncio

from edge.clock import Clock, with_timeout
from edge.daemon.ports import ForwarderLike
from edge.log import get_logger

log = get_logger("edge.daemon")

#: the part of the shutdown budget given to BLE before the forwarder drains
BLE_STOP_SHARE = 0.3
#: how often shutdown looks whether the forwarder's in-flight messages were acknowledged
DRAIN_POLL_S = 0.05
#: the order in which the remaining parts are stopped
LATER_PARTS = ("agent", "uplink", "purger", "control", "vault")


async def stop_part(clock: Clock, task: asyncio.Task[None], timeout_s: float) -> None:
    """Cancel one part and wait for it, at most ``timeout_s`` on ``clock``."""
    if task.done():
        return
    task.cancel()
    try:
        # asyncio.wait neither raises the part's outcome nor cancels it again on timeout
        await with_timeout(clock, timeout_s, asyncio.wait({task}))
    except TimeoutError:
        log.warning("daemon.part_slow_to_stop", part=task.get_name())


async def drain_forwarder(clock: Clock, forwarder: ForwarderLike | None, deadline: float) -> None:
    """Give the forwarder until ``deadline`` to get its in-flight messages acknowledged."""
    if forwarder is None:
        return
    while clock.monotonic() < deadline and forwarder.stats().in_flight > 0:
        await clock.sleep(DRAIN_POLL_S)


async def shutdown(
    clock: Clock, tasks: dict[str, asyncio.Task[None]], pets: asyncio.Task[None], *,
    forwarder: ForwarderLike | None, budget_s: float,
) -> None:
    """Stop every part within ``budget_s`` (the caller has already told the forwarder to
    begin draining)."""
    deadline = clock.monotonic() + budget_s
    await stop_part(clock, tasks["ble"], budget_s * BLE_STOP_SHARE)
    await drain_forwarder(clock, forwarder, deadline)
    for name in LATER_PARTS:
        if name in tasks:
            await stop_part(clock, tasks[name], max(0.1, deadline - clock.monotonic()))
    pets.cancel()
