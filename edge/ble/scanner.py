"""Scanning: ``edge scan`` (everything nearby) and the allow-list watcher (bound devices only).

The watcher hands a bound device's latest sighting (bleak's ``BLEDevice``) to the supervisor
waiting for it; an advertisement from any other device is only counted, as a number — its
address is not kept, it is never connected to, and nothing from it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from edge.ble.errors import BLE_EXCEPTIONS, ble_error, stack_error
from edge.ble.ports import Scanner, ScannerFactory
from edge.ble.profiles import kind_from_services, normalize_address
from edge.clock import Clock
from edge.log import get_logger

log = get_logger("edge.ble.scanner")


@dataclass(frozen=True)
class Nearby:
    """One device seen by ``edge scan``."""

    name: str | None
    address: str
    kind: str
    rssi: int
    service_uuids: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "kind": self.kind,
            "rssi": self.rssi,
            "service_uuids": list(self.service_uuids),
        }


async def scan_nearby(factory: ScannerFactory, clock: Clock, seconds: float) -> list[Nearby]:
    """Scan for ``seconds``; every device seen, strongest signal first."""
    seen: dict[str, Nearby] = {}

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        try:
            address = normalize_address(device.address)
        except ValueError:
            address = device.address
        previous = seen.get(address)
        uuids = tuple(dict.fromkeys([*(previous.service_uuids if previous else ()),
                                     *(u.lower() for u in adv.service_uuids)]))
        name = adv.local_name or device.name or (previous.name if previous else None)
        seen[address] = Nearby(name, address, kind_from_services(uuids), adv.rssi, uuids)

    scanner = factory(on_adv)
    try:
        await scanner.start()
    except BLE_EXCEPTIONS as exc:
        raise stack_error("scan", exc) from exc
    try:
        await clock.sleep(seconds)
    finally:
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await scanner.stop()
    return sorted(seen.values(), key=lambda n: (-n.rssi, n.address))


async def scan_for(
    factory: ScannerFactory, clock: Clock, address: str, seconds: float
) -> BLEDevice | None:
    """Scan until ``address`` advertises (its ``BLEDevice``) or ``seconds`` pass (None)."""
    wanted = normalize_address(address)
    loop = asyncio.get_running_loop()
    found: asyncio.Future[BLEDevice] = loop.create_future()

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        try:
            addr = normalize_address(device.address)
        except ValueError:
            return
        if addr == wanted and not found.done():
            found.set_result(device)

    scanner = factory(on_adv)
    try:
        await scanner.start()
    except BLE_EXCEPTIONS as exc:
        raise stack_error("scan", exc) from exc
    deadline = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((found, deadline), return_when=asyncio.FIRST_COMPLETED)
    finally:
        deadline.cancel()
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await scanner.stop()
    if found.done():
        return found.result()
    found.cancel()
    return None


class ScanObserver(Protocol):
    """Told how each scan window went (the adapter's wedge detection listens)."""

    def scan_failed(self, reason: str) -> None:
        """Starting the scan failed with ``reason`` (``dbus:InProgress`` …)."""

    def window_ended(self, heard: int, wanted: bool) -> None:
        """A window heard ``heard`` advertisements; ``wanted``: devices were missing
        throughout."""


class AllowListWatcher:
    """Scans in windows while some supervisor waits for its device; bound devices only.

    ``wait_for(address)`` returns the ``BLEDevice`` of the next sighting (or a recent one).
    """

    def __init__(self, factory: ScannerFactory, clock: Clock, *, window_s: float,
                 observer: ScanObserver | None = None) -> None:
        self._factory = factory
        self._observer = observer
        self._heard = 0
        self._clock = clock
        self._window_s = window_s
        self._allowed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[BLEDevice]]] = {}
        self._latest: dict[str, BLEDevice] = {}
        self._wanted = asyncio.Event()
        #: advertisements from devices not on the allow-list (a number only)
        self.unknown_sightings = 0
        self._unknown_seen_this_window: set[int] = set()
        self.scan_errors = 0

    def set_allowed(self, addresses: Iterable[str]) -> None:
        """Replace the allow-list (normalised addresses)."""
        self._allowed = {normalize_address(a) for a in addresses}
        for gone in [a for a in self._latest if a not in self._allowed]:
            del self._latest[gone]

    def forget(self, address: str) -> None:
        """Drop a cached sighting (e.g. BlueZ no longer knows the device)."""
        self._latest.pop(normalize_address(address), None)

    def cached(self, address: str) -> BLEDevice | None:
        """The last sighting of a bound device, if any."""
        return self._latest.get(normalize_address(address))

    async def wait_for(self, address: str) -> BLEDevice:
        """Wait until the scanner sees ``address`` (which must be on the allow-list)."""
        addr = normalize_address(address)
        fut: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(addr, []).append(fut)
        self._wanted.set()
        try:
            return await fut
        finally:
            waiters = self._waiters.get(addr, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(addr, None)

    def fail_waiters(self, exc: BaseException) -> None:
        """Every ``wait_for`` raises ``exc`` (the adapter went away); sightings are dropped."""
        self._latest.clear()
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)

    def _on_adv(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._heard += 1
        try:
            addr = normalize_address(device.address)
        except ValueError:
            addr = ""
        if addr not in self._allowed:
            # Count each unknown device once per window, by a hash that dies with the window.
            token = hash(addr)
            if token not in self._unknown_seen_this_window:
                self._unknown_seen_this_window.add(token)
                self.unknown_sightings += 1
            return
        self._latest[addr] = device
        for fut in self._waiters.get(addr, []):
            if not fut.done():
                fut.set_result(device)

    def _has_waiters(self) -> bool:
        return any(not f.done() for fs in self._waiters.values() for f in fs)

    async def run(self) -> None:
        """Scan windows while anyone waits; idle otherwise. Runs until cancelled."""
        while True:
            if not self._has_waiters():
                self._wanted.clear()
                await self._wanted.wait()
                continue
            await self._one_window()

    async def _one_window(self) -> None:
        self._unknown_seen_this_window.clear()
        self._heard = 0
        scanner: Scanner = self._factory(self._on_adv)
        try:
            await scanner.start()
        except BLE_EXCEPTIONS as exc:
            self.scan_errors += 1
            reason = ble_error("scan", exc).reason
            log.warning("ble.scan_failed", reason=reason)
            if self._observer is not None:
                self._observer.scan_failed(reason)
            await self._clock.sleep(self._window_s)
            return
        whole = False
        try:
            # End the window early once nobody waits any more (no clock needed to stop).
            deadline = asyncio.ensure_future(self._clock.sleep(self._window_s))
            try:
                while not deadline.done() and self._has_waiters():
                    self._wanted.clear()
                    waiter = asyncio.ensure_future(self._wanted.wait())
                    done_any = asyncio.ensure_future(self._any_waiter_done())
                    await asyncio.wait({deadline, waiter, done_any},
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    done_any.cancel()
                whole = deadline.done()
            finally:
                deadline.cancel()
        finally:
            with contextlib.suppress(*BLE_EXCEPTIONS):
                await scanner.stop()
        if self._observer is not None:
            self._observer.window_ended(self._heard, whole and self._has_waiters())

    async def _any_waiter_done(self) -> None:
        futs = [f for fs in self._waiters.values() for f in fs if not f.done()]
        if futs:
            await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
