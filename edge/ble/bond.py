"""A device that lost its bond: ``needs_pairing`` instead of a reconnect storm.

A meter that was reset or had its battery changed forgets the bond; the hub still holds its
half, so every connection's encryption fails (BlueZ: ``Connect`` fails with
``le-connection-key-missing``, or encrypted reads with an authentication error — see
:func:`edge.ble.errors.is_bond_lost`). Retrying does not fix that; only a new pairing does.
So the device's supervisor stops reconnecting: its state becomes ``needs_pairing`` and it
waits until the allow-list is re-read (``edge pair`` does that) or, in case the error was not
what it seemed, ``BleConfig.needs_pairing_retry_s`` passes (one attempt an hour by default, not
a storm). Each episode — from the first such error until a session does useful work again — is
reported once (counted, audited by the manager with the device's hash only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge.clock import Clock


class BondWatch:
    """One device's ``needs_pairing`` episode."""

    def __init__(self, *, retry_s: float, clock: Clock, on_lost: Callable[[], None]) -> None:
        self._retry_s = retry_s
        self._clock = clock
        self._on_lost = on_lost
        self._repaired = asyncio.Event()
        #: in an episode: the bond no longer works
        self.lost = False
        #: episodes reported (each once)
        self.episodes = 0

    def mark_lost(self) -> None:
        """A bond-lost error; the first of an episode is reported."""
        self._repaired.clear()
        if not self.lost:
            self.lost = True
            self.episodes += 1
            self._on_lost()

    def works(self) -> None:
        """A session did useful work: the episode (if any) is over."""
        self.lost = False

    def repaired(self) -> None:
        """The allow-list was re-read (the device may have been paired again): try now."""
        self._repaired.set()

    async def wait(self) -> None:
        """Until :meth:`repaired` or ``retry_s`` passes."""
        nap = asyncio.ensure_future(self._clock.sleep(self._retry_s))
        woken = asyncio.ensure_future(self._repaired.wait())
        try:
            await asyncio.wait({nap, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            nap.cancel()
            woken.cancel()
        self._repaired.clear()
