"""Shipped fakes for what the BLE layer talks to besides bleak: an in-memory
:class:`~edge.ble.ports.DeviceRegistry` (the vault's bindings and cursors) and an
:class:`~edge.ble.ports.IntakeSink` that records what it is given.

The sink commits glucose records and the cursor together, as the real intake does in one vault
transaction, and deduplicates by reading id like the vault's outbox. For bleak itself use the
simulator's in-process double (``firmware_sim.inprocess.SimBleak``) or its fake BlueZ.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from edge.readings import GlucoseReading, HeartRateReading


@dataclass(frozen=True)
class FakeBinding:
    """One allow-list entry, shaped like the vault's ``Binding``."""

    address: str
    kind: str
    patient: str
    bonded: bool = True
    bound_at: datetime | None = None
    bound_by: str = "test"
    last_seen: datetime | None = None


@dataclass(frozen=True)
class FakeCursor:
    """A glucose meter's sync cursor, shaped like the vault's ``GlucoseCursor``."""

    last_sequence: int
    last_device_time: datetime | None
    clock_offset_s: int
    updated_at: datetime | None = None


class FakeRegistry:
    """The vault calls :class:`~edge.ble.supervisor.BleManager` makes, in memory."""

    def __init__(self, bindings: Sequence[FakeBinding] = ()) -> None:
        self._bindings = {b.address.upper(): b for b in bindings}
        self.cursors: dict[str, FakeCursor] = {}
        self.touched: list[tuple[str, datetime]] = []

    async def bindings(self) -> list[FakeBinding]:
        return list(self._bindings.values())

    def bind(self, b: FakeBinding) -> None:
        self._bindings[b.address.upper()] = b

    def unbind(self, address: str) -> None:
        self._bindings.pop(address.upper(), None)

    async def cursor(self, address: str) -> FakeCursor | None:
        return self.cursors.get(address.upper())

    async def touch_device(self, address: str, seen_at: datetime) -> None:
        self.touched.append((address.upper(), seen_at))


class FakeSink:
    """Records submissions; ``wait_for`` blocks until a predicate over the sink holds."""

    def __init__(self, registry: FakeRegistry | None = None) -> None:
        self.registry = registry
        self.readings: dict[str, HeartRateReading | GlucoseReading] = {}
        self.submissions: list[list[HeartRateReading | GlucoseReading]] = []
        self.glucose_commits: list[tuple[str, list[GlucoseReading], int, datetime | None, int]] = []
        self.refused: Counter[str] = Counter()
        self.duplicates = 0
        self._changed = asyncio.Event()

    def _store(self, readings: Sequence[HeartRateReading | GlucoseReading]) -> None:
        for r in readings:
            if r.id in self.readings:
                self.duplicates += 1
            self.readings[r.id] = r
        self._changed.set()

    async def submit(self, readings: Sequence[HeartRateReading | GlucoseReading]) -> None:
        self.submissions.append(list(readings))
        self._store(readings)

    async def submit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> None:
        self.glucose_commits.append(
            (address, list(readings), last_sequence, last_device_time, clock_offset_s)
        )
        self._store(readings)
        if self.registry is not None:
            self.registry.cursors[address.upper()] = FakeCursor(
                last_sequence, last_device_time, clock_offset_s
            )

    async def refuse(self, reason: str, n: int = 1) -> None:
        self.refused[reason] += n
        self._changed.set()

    def of_kind(self, kind: str) -> list[HeartRateReading | GlucoseReading]:
        return [r for r in self.readings.values() if r.kind == kind]

    async def wait_for(
        self, predicate: Callable[[FakeSink], bool], within_s: float = 20.0
    ) -> None:
        """Wait (bounded, real seconds) until ``predicate(self)`` holds; woken by every
        submission, so it needs no polling."""

        async def loop() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), within_s)
