"""A BleManager wired to the simulator's in-process bleak double, a fake registry and sink, all
on one virtual clock (the simulator's ManualClock, which the gateway's Clock protocol fits)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from typing import Any

from bleak.exc import BleakDBusError, BleakGATTProtocolError

from edge.ble.profiles import RACP
from edge.ble.state import DeviceState
from edge.ble.supervisor import BleManager, DeviceSupervisor
from edge.config import BleConfig
from firmware_sim.fleet import Fleet, build_fleet
from firmware_sim.inprocess import SimBleak
from firmware_sim.model.clock import ManualClock
from tests.support.ble_fakes import Binding, FakeRegistry, FakeSink

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

    def __init__(self, inner: Any, counter: CountingClients) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def connect(self, **kw: Any) -> None:
        c = self._counter
        c.attempts.append((self._inner.address.upper(), c.clock.monotonic()))
        c.active += 1
        c.max_active = max(c.max_active, c.active)
        try:
            if c.fail_next > 0:
                c.fail_next -= 1
                raise BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"])
            await self._inner.connect(**kw)
        finally:
            c.active -= 1

    async def write_gatt_char(self, char: Any, data: bytes, response: bool | None = None) -> None:
        c = self._counter
        if c.racp_busy > 0 and str(char).lower() == RACP and data[:1] == b"\x01":
            # as a meter answers a report request while its own procedure still runs
            c.racp_busy -= 1
            raise BleakGATTProtocolError(0x80)
        c.racp_writes.append(bytes(data))
        await self._inner.write_gatt_char(char, data, response)


@dataclass
class CountingClients:
    """A client factory over the double that records every connect attempt and RACP write;
    ``fail_next`` makes the next N connects fail as BlueZ does, ``racp_busy`` the next N RACP
    report requests fail with ATT 0x80 (procedure already in progress)."""

    inner: Any
    clock: ManualClock
    attempts: list[tuple[str, float]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    fail_next: int = 0
    racp_busy: int = 0
    racp_writes: list[bytes] = field(default_factory=list)

    def __call__(self, device: Any, **kwargs: Any) -> Any:
        return _CountingClient(self.inner(device, **kwargs), self)

    def addresses(self) -> set[str]:
        return {a for a, _ in self.attempts}


@dataclass
class Rig:
    fleet: Fleet
    clock: ManualClock
    registry: FakeRegistry
    sink: FakeSink
    clients: CountingClients
    scanners: Any
    config: BleConfig
    local_tz: tzinfo
    manager: BleManager
    task: asyncio.Task[None] | None = None

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
        )

    async def restart(self) -> None:
        """Stop the running manager and start a new one."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.manager = self.new_manager()
        await self.start()

    def device(self, kind: str, n: int = 1) -> Any:
        return [d for d in self.fleet if d.kind == kind][n - 1]

    def bind(self, dev: Any, patient: str) -> Binding:
        b = Binding(dev.address, dev.kind, patient)
        self.registry.bind(b)
        return b

    def supervisor(self, dev: Any) -> DeviceSupervisor:
        sup = self.manager.supervisor(dev.address)
        assert sup is not None
        return sup

    async def start(self) -> None:
        self.task = asyncio.create_task(self.manager.run())
        # let run() enter its TaskGroup and start the supervisors
        for _ in range(5):
            await asyncio.sleep(0)

    async def wait_state(
        self, dev: Any, predicate: Callable[[DeviceState], bool], within_s: float = 10.0
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
    manager = BleManager(
        config,
        registry,
        sink,
        scanner_factory=sim.Scanner,
        client_factory=clients,
        clock=clock,
        local_tz=local_tz,
        rng=random.Random(seed),
    )
    rig = Rig(fleet, clock, registry, sink, clients, sim.Scanner, config, local_tz, manager)
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
