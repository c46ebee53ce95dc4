"""A BleManager wired to the simulator's in-process bleak double, a fake registry and sink, all
on one virtual clock (the simulator's ManualClock, which the gateway's Clock protocol fits);
and :func:`live_manager`: one on bleak's REAL backend with the daemon's adapter parts
(per-adapter factories, ``BluezAdapters``), for tests against the fake BlueZ."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone, tzinfo

from bleak.args.bluez import BlueZNotifyArgs
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakGATTProtocolError

from edge.ble.adapters import BluezAdapters
from edge.ble.ports import (
    BleClient,
    ClientFactory,
    DisconnectedCallback,
    GattServices,
    NotifyCallback,
    ScannerFactory,
    bleak_client_factory,
    bleak_scanner_factory,
)
from edge.ble.profiles import RACP
from edge.ble.state import DeviceState
from edge.ble.supervisor import BleManager, DeviceSupervisor
from edge.clock import SystemClock
from edge.config import BleConfig
from edge.testing import settle
from edge.testing.ble import FakeBinding, FakeRegistry, FakeSink
from firmware_sim.devices.base import SimDevice
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import Fleet, build_fleet
from firmware_sim.inprocess import SimBleak
from firmware_sim.model.clock import ManualClock

#: the simulated meters' clocks run in UTC+1 (their ``utc_offset_minutes`` default)
SIM_TZ = timezone(timedelta(minutes=60))

FAST = BleConfig(
    scan_seconds=5.0,
    connect_timeout_s=5.0,
    max_concurrent_connects=3,
    reconnect_base_s=1.0,
    reconnect_cap_s=8.0,
    stall_timeout_s=10.0,
    racp_timeout_s=5.0,
)


class _CountingClient:
    """Delegates to the double's client; counts connect attempts and their concurrency."""

    def __init__(self, inner: BleClient, counter: CountingClients) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def address(self) -> str:
        return self._inner.address

    @property
    def is_connected(self) -> bool:
        return self._inner.is_connected

    @property
    def services(self) -> GattServices:
        return self._inner.services

    async def connect(self) -> None:
        c = self._counter
        c.attempts.append((self._inner.address.upper(), c.clock.monotonic()))
        c.active += 1
        c.max_active = max(c.max_active, c.active)
        try:
            if c.fail_next > 0:
                c.fail_next -= 1
                raise BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"])
            if c.fail_with is not None:
                raise c.fail_with
            await self._inner.connect()
        finally:
            c.active -= 1

    async def disconnect(self) -> None:
        await self._inner.disconnect()

    async def pair(self) -> None:
        if self._counter.pair_fail_with is not None:
            raise self._counter.pair_fail_with
        await self._inner.pair()

    async def unpair(self) -> None:
        await self._inner.unpair()

    async def read_gatt_char(self, char: str, /) -> bytearray:
        if self._counter.read_fail_with is not None:
            raise self._counter.read_fail_with
        return await self._inner.read_gatt_char(char)

    async def write_gatt_char(
        self, char: str, data: bytes, response: bool | None = None, /
    ) -> None:
        c = self._counter
        if c.racp_busy > 0 and str(char).lower() == RACP and data[:1] == b"\x01":
            # as a meter answers a report request while its own procedure still runs
            c.racp_busy -= 1
            raise BleakGATTProtocolError(0x80)
        c.racp_writes.append(bytes(data))
        await self._inner.write_gatt_char(char, data, response)

    async def start_notify(
        self, char: str, callback: NotifyCallback, /, *, bluez: BlueZNotifyArgs | None = None
    ) -> None:
        if bluez is None:
            await self._inner.start_notify(char, callback)
        else:
            await self._inner.start_notify(char, callback, bluez=bluez)

    async def stop_notify(self, char: str, /) -> None:
        await self._inner.stop_notify(char)


@dataclass
class CountingClients:
    """A client factory over the double that records every connect attempt and RACP write;
    ``fail_next`` makes the next N connects fail as BlueZ does, ``racp_busy`` the next N RACP
    report requests fail with ATT 0x80 (procedure already in progress)."""

    inner: ClientFactory
    clock: ManualClock
    attempts: list[tuple[str, float]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    fail_next: int = 0
    racp_busy: int = 0
    racp_writes: list[bytes] = field(default_factory=list)
    #: every connect (every read) raises this while set, as BlueZ does for a lost bond
    fail_with: BaseException | None = None
    read_fail_with: BaseException | None = None
    #: every pair() raises this while set (a meter reached through an adapter without its bond)
    pair_fail_with: BaseException | None = None

    def __call__(
        self,
        device: BLEDevice | str,
        /,
        *,
        disconnected_callback: DisconnectedCallback | None = None,
        timeout: float = 20.0,
    ) -> BleClient:
        inner = self.inner(device, disconnected_callback=disconnected_callback, timeout=timeout)
        return _CountingClient(inner, self)

    def addresses(self) -> set[str]:
        return {a for a, _ in self.attempts}


@dataclass
class Rig:
    fleet: Fleet
    clock: ManualClock
    registry: FakeRegistry
    sink: FakeSink
    clients: CountingClients
    scanners: ScannerFactory
    config: BleConfig
    local_tz: tzinfo
    manager: BleManager
    task: asyncio.Task[None] | None = None
    #: what the manager wrote to the audit chain: (action, subject)
    audits: list[tuple[str, str]] = field(default_factory=list)

    async def audit(self, action: str, subject: str) -> None:
        self.audits.append((action, subject))

    def new_manager(self) -> BleManager:
        """A fresh manager on the same registry, sink and simulator (a daemon restart)."""
        return BleManager(
            self.config,
            self.registry,
            self.sink,
            scanner_factory=self.scanners,
            client_factory=self.clients,
            clock=self.clock,
            local_tz=self.local_tz,
            rng=random.Random(0),
            audit=self.audit,
        )

    async def restart(self) -> None:
        """Stop the running manager and start a new one."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.manager = self.new_manager()
        await self.start()

    def device(self, kind: str, n: int = 1) -> SimDevice:
        return [d for d in self.fleet.devices if d.kind == kind][n - 1]

    def meter(self, n: int = 1) -> GlucoseMeter:
        """The ``n``-th simulated glucose meter (1-based)."""
        meter = self.device("glucose", n)
        assert isinstance(meter, GlucoseMeter)
        return meter

    def bind(self, dev: SimDevice, patient: str) -> FakeBinding:
        b = FakeBinding(dev.address, dev.kind, patient)
        self.registry.bind(b)
        return b

    def supervisor(self, dev: SimDevice) -> DeviceSupervisor:
        sup = self.manager.supervisor(dev.address)
        assert sup is not None
        return sup

    async def start(self) -> None:
        self.task = asyncio.create_task(self.manager.run())
        # let run() enter its TaskGroup and start the supervisors
        await settle(5)

    async def wait_state(
        self, dev: SimDevice, predicate: Callable[[DeviceState], bool], within_s: float = 10.0
    ) -> DeviceState:
        sup = self.supervisor(dev)
        return await asyncio.wait_for(sup.wait_until(predicate), within_s)


@contextlib.asynccontextmanager
async def ble_rig(
    devices: str,
    *,
    seed: int = 1,
    config: BleConfig = FAST,
    autojump: bool = True,
    start_fleet: bool = True,
    local_tz: tzinfo = SIM_TZ,
) -> AsyncIterator[Rig]:
    clock = ManualClock(autojump=autojump)
    fleet = build_fleet(devices=devices, seed=seed, clock=clock)
    sim = SimBleak(fleet)
    registry = FakeRegistry()
    sink = FakeSink(registry)
    clients = CountingClients(sim.Client, clock)
    audits: list[tuple[str, str]] = []

    async def audit(action: str, subject: str) -> None:
        audits.append((action, subject))

    manager = BleManager(
        config,
        registry,
        sink,
        scanner_factory=sim.Scanner,
        client_factory=clients,
        clock=clock,
        local_tz=local_tz,
        rng=random.Random(seed),
        audit=audit,
    )
    rig = Rig(fleet, clock, registry, sink, clients, sim.Scanner, config, local_tz, manager,
              audits=audits)
    if start_fleet:
        await fleet.start()
    try:
        yield rig
    finally:
        if rig.task is not None:
            rig.task.cancel()
            await asyncio.gather(rig.task, return_exceptions=True)
        if start_fleet:
            await fleet.stop()



@dataclass
class Live:
    """A running manager on the real backend and what it did."""

    manager: BleManager
    registry: FakeRegistry
    sink: FakeSink
    #: (adapter, kind of target) of every client made: one per connection attempt
    attempts: list[str] = field(default_factory=list)
    audits: list[tuple[str, str]] = field(default_factory=list)

    def state(self, address: str) -> str:
        return self.manager.device_states()[address.upper()].state

    def adapter_of(self, address: str) -> str | None:
        return self.manager.device_states()[address.upper()].adapter


@contextlib.asynccontextmanager
async def live_manager(config: BleConfig, bindings: list[FakeBinding]) -> AsyncIterator[Live]:
    registry = FakeRegistry(bindings)
    sink = FakeSink(registry)
    live = Live(None, registry, sink)  # type: ignore[arg-type]

    def clients_for(name: str) -> ClientFactory:
        inner = bleak_client_factory(name)

        def make(device: BLEDevice | str, /, *,
                 disconnected_callback: DisconnectedCallback | None = None,
                 timeout: float = 20.0) -> BleClient:
            live.attempts.append(name)
            return inner(device, disconnected_callback=disconnected_callback, timeout=timeout)

        return make

    async def audit(action: str, subject: str) -> None:
        live.audits.append((action, subject))

    live.manager = BleManager(
        config, registry, sink,
        scanner_factory=bleak_scanner_factory(), client_factory=bleak_client_factory(),
        scanners_for=bleak_scanner_factory, clients_for=clients_for,
        adapter_control=BluezAdapters(), audit=audit,
        clock=SystemClock(), local_tz=UTC, glucose_poll_s=3600.0,
    )
    task = asyncio.create_task(live.manager.run())
    try:
        yield live
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
