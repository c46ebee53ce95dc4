"""The adapters at run time: one lane per configured adapter (its allow-list watcher, its
client factory, its connection slots, its health), which of them BlueZ has now, where each
device connects, and power-cycling a wedged one.

- Presence follows BlueZ (:class:`~edge.ble.ports.AdapterControl`: ``InterfacesAdded`` /
  ``InterfacesRemoved``). An adapter that goes (an unplugged dongle) stops scanning; the
  supervisors waiting on it are woken and placed again, on the others; those connected through
  it lose their link (BlueZ drops it) and are placed again when they reconnect. A configured
  adapter that appears is scanned on and takes new placements. Unconfigured adapters are
  ignored. Without a control (tests with bleak doubles) every configured adapter is present.
- Placement (:func:`edge.ble.adapter_health.place`) is sticky: a device stays on its adapter
  while that is present, unless BlueZ holds its bond on another present adapter and not on
  this one; otherwise it goes where BlueZ holds its bond (bonds are per adapter), else to the
  least loaded adapter. A device whose bonding adapter went away is thus placed on another
  one, where its link is not encrypted: its encrypted GATT fails and it goes
  ``needs_pairing`` (``edge pair --adapter`` there fixes it), or back to its bonding adapter
  when that returns.
- Wedges: each watcher reports its scan windows to its lane's
  :class:`~edge.ble.adapter_health.AdapterHealth`; a decision to power-cycle runs
  ``Adapter1.Powered`` false -> true through the control, counted per adapter and audited.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from edge.ble.adapter_health import AdapterHealth, PowerCycle, WedgePolicy, place
from edge.ble.errors import BLE_EXCEPTIONS
from edge.ble.ports import AdapterControl, AdapterSnapshot, ClientFactory, ScannerFactory
from edge.ble.scanner import AllowListWatcher
from edge.clock import Clock
from edge.config import BleConfig
from edge.errors import BleError, EdgeError
from edge.log import get_logger

log = get_logger("edge.ble.adapters")

#: ``audit(action, subject)`` into the vault's audit chain
AuditFn = Callable[[str, str], Awaitable[None]]
#: what following BlueZ's adapters or a power-cycle may fail with (besides bugs)
_FAILURES: tuple[type[BaseException], ...] = (EdgeError, ValueError, *BLE_EXCEPTIONS)
#: how long to wait before following BlueZ's adapters again after losing the bus
FOLLOW_RETRY_S = 5.0


class AdapterGone(BleError):
    """The adapter a supervisor waited on went away (it is placed again)."""


@dataclass(eq=False)
class Lane:
    """One configured adapter."""

    name: str
    watcher: AllowListWatcher
    clients: ClientFactory
    slots: asyncio.Semaphore
    health: AdapterHealth
    present: bool = False
    cycling: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Placement(Protocol):
    """Where a supervisor connects (its lane)."""

    async def place(self, address: str) -> Lane: ...


class _Observer:
    """A lane's watcher reports to the pool through this."""

    def __init__(self, pool: AdapterPool, name: str) -> None:
        self._pool = pool
        self._name = name

    def scan_failed(self, reason: str) -> None:
        lane = self._pool.lanes[self._name]
        self._pool.decided(lane, lane.health.scan_failed(reason, self._pool.now()))

    def window_ended(self, heard: int, wanted: bool) -> None:
        lane = self._pool.lanes[self._name]
        self._pool.decided(lane, lane.health.window_ended(heard, wanted, self._pool.now()))


class AdapterPool:
    """The lanes, their presence, the placement of devices, and wedge recovery."""

    def __init__(
        self,
        config: BleConfig,
        *,
        scanners_for: Callable[[str], ScannerFactory],
        clients_for: Callable[[str], ClientFactory],
        control: AdapterControl | None,
        clock: Clock,
        counters: Counter[str],
        audit: AuditFn | None = None,
        on_up: Callable[[str], None] | None = None,
    ) -> None:
        self._control = control
        #: told the name of each adapter that appears (a bond may live on it)
        self._on_up = on_up
        self._clock = clock
        self._counters = counters
        self._audit = audit
        policy = WedgePolicy(config.wedge_scan_failures, config.wedge_silent_windows,
                             config.power_cycle_min_interval_s)
        self.order = list(config.adapters)
        self.lanes = {
            name: Lane(
                name,
                AllowListWatcher(scanners_for(name), clock, window_s=config.scan_seconds,
                                 observer=_Observer(self, name)),
                clients_for(name),
                asyncio.Semaphore(config.max_concurrent_connects),
                AdapterHealth(name, policy),
            )
            for name in self.order
        }
        self._assigned: dict[str, str] = {}
        self._snapshot: AdapterSnapshot | None = None
        self._changed = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._ever_up = False

    def now(self) -> float:
        return self._clock.monotonic()

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the adapters and run their watchers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                if self._control is None:
                    for lane in self.lanes.values():
                        self._up(lane)
                else:
                    tg.create_task(self._follow(self._control), name="ble-adapters")
                await asyncio.Event().wait()
            finally:
                self._tg = None

    async def _follow(self, control: AdapterControl) -> None:
        while True:
            try:
                await control.start()
                while True:
                    await control.wait_changed()
                    self._apply(await control.snapshot())
            except _FAILURES as exc:
                self._counters["adapter_follow_failed"] += 1
                log.warning("ble.adapters_unreachable", error=type(exc).__name__)
                if not self._ever_up:
                    # BlueZ's adapters cannot be listed: use the configured ones as before
                    for lane in self.lanes.values():
                        self._up(lane)
            finally:
                await control.close()
            await self._clock.sleep(FOLLOW_RETRY_S)

    def _apply(self, snap: AdapterSnapshot) -> None:
        self._snapshot = snap
        for lane in self.lanes.values():
            if lane.name in snap.present and not lane.present:
                self._up(lane)
            elif lane.name not in snap.present and lane.present:
                self._down(lane)
        self._wake()

    def _up(self, lane: Lane) -> None:
        if lane.present or self._tg is None:
            return
        lane.present = True
        self._ever_up = True
        lane.task = self._tg.create_task(lane.watcher.run(), name=f"ble-watcher-{lane.name}")
        log.info("ble.adapter_up", adapter=lane.name)
        if self._on_up is not None:
            self._on_up(lane.name)
        self._wake()

    def _down(self, lane: Lane) -> None:
        lane.present = False
        if lane.task is not None:
            lane.task.cancel()
            lane.task = None
        lane.watcher.fail_waiters(AdapterGone(f"adapter {lane.name} went away"))
        moved = [a for a, n in self._assigned.items() if n == lane.name]
        for address in moved:
            del self._assigned[address]
        self._counters["adapter_removed"] += 1
        log.warning("ble.adapter_gone", adapter=lane.name, devices=len(moved))
        self.audit_later("ble.adapter_removed", f"{lane.name} devices {len(moved)}")
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- placement ---------------------------------------------------------------------------

    async def place(self, address: str) -> Lane:
        """The lane ``address`` connects through (waits while no adapter is present)."""
        while True:
            present = [n for n in self.order if self.lanes[n].present]
            load = Counter(n for a, n in self._assigned.items() if a != address)
            bonded = self._snapshot.bonded_on(address) if self._snapshot else frozenset()
            previous = self._assigned.get(address)
            if previous not in bonded and any(n in bonded for n in present):
                # the device is (re)connecting and holds a bond on another present adapter
                # (paired again there, or its dongle is back): only that link is encrypted
                previous = None
            name = place(previous, present, load, bonded)
            if name is not None:
                self._assigned[address] = name
                return self.lanes[name]
            await self._changed.wait()

    def release(self, address: str) -> None:
        """``address`` is no longer supervised."""
        self._assigned.pop(address, None)

    def set_allowed(self, addresses: Iterable[str]) -> None:
        wanted = list(addresses)
        for lane in self.lanes.values():
            lane.watcher.set_allowed(wanted)

    @property
    def unknown_sightings(self) -> int:
        return sum(lane.watcher.unknown_sightings for lane in self.lanes.values())

    # --- wedges ------------------------------------------------------------------------------

    def decided(self, lane: Lane, decision: PowerCycle | None) -> None:
        """A watcher's observation led to ``decision``: power-cycle now (when we can)."""
        if decision is None or self._control is None or self._tg is None:
            return
        if lane.cycling or not lane.present:
            return
        lane.health.started(decision, self.now())
        lane.cycling = True
        self._tg.create_task(self._power_cycle(self._control, lane, decision),
                             name=f"ble-power-cycle-{lane.name}")

    async def _power_cycle(self, control: AdapterControl, lane: Lane,
                           decision: PowerCycle) -> None:
        log.warning("ble.adapter_wedged", adapter=lane.name, reason=decision.reason)
        ok = True
        try:
            await control.power_cycle(lane.name)
        except _FAILURES as exc:
            ok = False
            log.warning("ble.adapter_power_cycle_failed", adapter=lane.name,
                        error=type(exc).__name__)
        finally:
            lane.cycling = False
        lane.health.finished(ok)
        self._counters["adapter_power_cycles" if ok else "adapter_power_cycle_failed"] += 1
        if ok:
            log.warning("ble.adapter_power_cycled", adapter=lane.name, reason=decision.reason)
        await self._write_audit(
            "ble.adapter_power_cycled" if ok else "ble.adapter_power_cycle_failed",
            f"{lane.name} {decision.reason}")

    # --- audit and status --------------------------------------------------------------------

    def audit_later(self, action: str, subject: str) -> None:
        if self._audit is not None and self._tg is not None:
            self._tg.create_task(self._write_audit(action, subject), name="ble-audit")

    async def _write_audit(self, action: str, subject: str) -> None:
        if self._audit is None:
            return
        try:
            await self._audit(action, subject)
        except Exception as exc:  # counted already; a failing audit must not stop BLE
            log.warning("ble.audit_failed", error=type(exc).__name__)

    def stats(self) -> dict[str, dict[str, object]]:
        """Per configured adapter: present, devices placed on it, power-cycles, suspicions."""
        load = Counter(self._assigned.values())
        return {
            name: {"present": lane.present, "devices": load.get(name, 0),
                   **lane.health.as_dict()}
            for name, lane in self.lanes.items()
        }
