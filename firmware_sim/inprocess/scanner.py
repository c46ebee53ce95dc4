"""The scanner double, shaped like ``bleak.BleakScanner``."""

# bleak's own signatures take ``timeout`` arguments; the double keeps them.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from bleak.uuids import normalize_uuid_str

from edge.clock import with_timeout
from firmware_sim.devices.base import SimDevice
from firmware_sim.inprocess.events import Observer, plain_callback
from firmware_sim.inprocess.objects import advertisement_of, ble_device_of, device_path

if TYPE_CHECKING:
    from firmware_sim.inprocess.binding import SimBleak

DetectionCallback = Callable[[BLEDevice, AdvertisementData], Awaitable[None] | None]


class SimBleakScanner:
    """Shaped like ``bleak.BleakScanner``; use the fleet-bound ``SimBleak(f).Scanner``."""

    _sim: ClassVar[SimBleak | None] = None

    def __init__(
        self,
        detection_callback: DetectionCallback | None = None,
        service_uuids: list[str] | None = None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bluez: dict[str, Any] | None = None,
        sim: SimBleak | None = None,
        **kwargs: Any,
    ) -> None:
        bound = sim or type(self)._sim
        if bound is None:
            raise BleakError("SimBleakScanner is not bound to a fleet; use SimBleak(fleet).Scanner")
        self._bound = bound
        bluez = bluez or {}
        # the same checks as bleak's BlueZ scanner
        if scanning_mode == "passive" and service_uuids:
            raise BleakError(
                "service uuid filtering is not implemented for passive scanning, "
                "use bluez or_patterns as a workaround"
            )
        if scanning_mode == "passive" and not bluez.get("or_patterns"):
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self._service_uuids = (
            [normalize_uuid_str(u) for u in service_uuids] if service_uuids else None
        )
        self._callbacks: dict[object, Callable[[BLEDevice, AdvertisementData], None]] = {}
        if detection_callback is not None:
            self._register(detection_callback)
        self.seen_devices: dict[str, tuple[BLEDevice, AdvertisementData]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._scanning = False

    # bleak API ------------------------------------------------------------

    async def __aenter__(self) -> SimBleakScanner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start scanning: every visible device is reported now and on each advertisement."""
        if self._scanning:
            raise BleakError("Scanner is already running")  # mirrors BlueZ's InProgress
        self._scanning = True
        self.seen_devices = {}
        fleet = self._bound.fleet
        for dev in fleet.devices:
            self._watch(dev)
        fleet.on_added.append(self._on_added)
        self._unsubscribe.append(lambda: _discard(fleet.on_added, self._on_added))
        loop = asyncio.get_running_loop()
        for dev in list(fleet.devices):
            loop.call_soon(self._advertised, dev)

    async def stop(self) -> None:
        """Stop scanning."""
        self._scanning = False
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe.clear()

    @property
    def discovered_devices(self) -> list[BLEDevice]:
        return [d for d, _ in self.seen_devices.values()]

    @property
    def discovered_devices_and_advertisement_data(
        self,
    ) -> dict[str, tuple[BLEDevice, AdvertisementData]]:
        return {d.address: (d, a) for d, a in self.seen_devices.values()}

    async def advertisement_data(self) -> AsyncGenerator[tuple[BLEDevice, AdvertisementData]]:
        """Yield (device, advertisement) as they arrive; the scanner must be started."""
        queue: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()
        remove = self._register(lambda d, a: queue.put_nowait((d, a)))
        try:
            while True:
                yield await queue.get()
        finally:
            remove()

    @classmethod
    async def discover(
        cls,
        timeout: float = 5.0,
        *,
        return_adv: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Scan for ``timeout`` seconds (fleet clock); devices, or a dict address -> (device,
        advertisement) with ``return_adv=True``."""
        async with cls(**kwargs) as scanner:
            await scanner._bound.fleet.clock.sleep(timeout)
        if return_adv:
            return scanner.discovered_devices_and_advertisement_data
        return scanner.discovered_devices

    @classmethod
    async def find_device_by_filter(
        cls,
        filterfunc: Callable[[BLEDevice, AdvertisementData], bool],
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> BLEDevice | None:
        """The first device for which ``filterfunc`` is true within ``timeout``, else None."""
        async with cls(**kwargs) as scanner:

            async def first() -> BLEDevice:
                async for bd, ad in scanner.advertisement_data():
                    if filterfunc(bd, ad):
                        return bd
                raise AssertionError("unreachable")

            try:
                return await with_timeout(scanner._bound.fleet.clock, timeout, first())
            except TimeoutError:
                return None

    @classmethod
    async def find_device_by_address(
        cls,
        device_identifier: str,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> BLEDevice | None:
        wanted = device_identifier.lower()
        return await cls.find_device_by_filter(
            lambda d, _: d.address.lower() == wanted, timeout=timeout, **kwargs
        )

    @classmethod
    async def find_device_by_name(
        cls,
        name: str,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> BLEDevice | None:
        return await cls.find_device_by_filter(
            lambda _, a: a.local_name == name, timeout=timeout, **kwargs
        )

    # internals ------------------------------------------------------------

    def _register(self, callback: DetectionCallback) -> Callable[[], None]:
        token = object()
        self._callbacks[token] = plain_callback(callback)
        return lambda: self._callbacks.pop(token, None) and None

    def _on_added(self, dev: SimDevice) -> None:
        self._watch(dev)
        asyncio.get_running_loop().call_soon(self._advertised, dev)

    def _watch(self, dev: SimDevice) -> None:
        remove = dev.add_events(Observer(advertisement=functools.partial(self._advertised, dev)))
        self._unsubscribe.append(remove)

    def _advertised(self, dev: SimDevice) -> None:
        if not self._scanning or not dev.visible or dev not in self._bound.fleet.devices:
            return
        adv = advertisement_of(dev)
        if self._service_uuids is not None and not set(self._service_uuids) & set(
            adv.service_uuids
        ):
            return
        bd = ble_device_of(dev)
        self.seen_devices[device_path(dev.address)] = (bd, adv)
        for cb in list(self._callbacks.values()):
            cb(bd, adv)


def _discard(items: list[Any], item: Any) -> None:
    if item in items:
        items.remove(item)
