"""Where the pool places a device as BlueZ's adapters and bonds change (a fake control): bonds
are per adapter, so a device goes to the adapter holding its bond, leaves an adapter where it
has none when its bonding adapter is present again, and otherwise stays where it was."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bleak.backends.device import BLEDevice

from edge.ble.adapter_pool import AdapterPool
from edge.ble.adapters import Snapshot
from edge.ble.ports import (
    BleClient,
    ClientFactory,
    DetectionCallback,
    DisconnectedCallback,
    Scanner,
    ScannerFactory,
)
from edge.config import BleConfig
from edge.testing import ManualClock, eventually

METER = "AA:BB:CC:DD:EE:01"
WAIT = 5.0


class IdleScanner:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def idle_scanners(_name: str) -> ScannerFactory:
    def make(_callback: DetectionCallback, /) -> Scanner:
        return IdleScanner()

    return make


def no_clients(_name: str) -> ClientFactory:
    def make(device: BLEDevice | str, /, *, disconnected_callback: DisconnectedCallback | None
             = None, timeout: float = 20.0) -> BleClient:
        raise AssertionError("placement connects nothing")

    return make


class FakeControl:
    """BlueZ's adapters as a test sets them."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        #: the last snapshot the pool took (it applies it in the same step)
        self.served: Snapshot | None = None
        self._changed = asyncio.Event()
        self._changed.set()

    def set(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self._changed.set()

    async def start(self) -> None:
        return None

    async def snapshot(self) -> Snapshot:
        self.served = self.current
        return self.current

    async def wait_changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    async def power_cycle(self, adapter: str) -> None:
        return None

    async def close(self) -> None:
        return None


def snap(present: set[str], bonded: set[str]) -> Snapshot:
    return Snapshot(frozenset(present), {METER: frozenset(bonded)} if bonded else {})


@asynccontextmanager
async def pool_with(control: FakeControl) -> AsyncIterator[AdapterPool]:
    pool = AdapterPool(
        BleConfig(adapters=("hci0", "hci1")),
        scanners_for=idle_scanners, clients_for=no_clients,
        control=control, clock=ManualClock(), counters=Counter(),
    )
    task = asyncio.create_task(pool.run())
    try:
        yield pool
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def settled(pool: AdapterPool, control: FakeControl) -> None:
    want = control.current
    await eventually(lambda: control.served is want, within_s=WAIT, what="snapshot taken")
    assert {n for n, lane in pool.lanes.items() if lane.present} == set(want.present)


async def test_a_device_goes_where_its_bond_is_not_to_the_first_adapter() -> None:
    control = FakeControl(snap({"hci0", "hci1"}, {"hci1"}))
    async with pool_with(control) as pool:
        await settled(pool, control)
        assert (await pool.place(METER)).name == "hci1"


async def test_a_device_placed_without_a_bond_moves_to_its_bonding_adapter() -> None:
    control = FakeControl(snap({"hci0"}, {"hci1"}))  # its bonding dongle is away
    async with pool_with(control) as pool:
        await settled(pool, control)
        assert (await pool.place(METER)).name == "hci0"
        control.set(snap({"hci0", "hci1"}, {"hci1"}))  # the same dongle is back
        await settled(pool, control)
        assert (await pool.place(METER)).name == "hci1"


async def test_a_placement_stays_while_its_adapter_holds_the_bond_or_none_does() -> None:
    control = FakeControl(snap({"hci0", "hci1"}, set()))
    async with pool_with(control) as pool:
        await settled(pool, control)
        assert (await pool.place(METER)).name == "hci0"
        control.set(snap({"hci0", "hci1"}, {"hci0", "hci1"}))
        await settled(pool, control)
        assert (await pool.place(METER)).name == "hci0"  # sticky: its adapter has a bond
