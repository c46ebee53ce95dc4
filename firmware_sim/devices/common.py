"""Services every simulated device carries: Battery 0x180F and Device Information 0x180A."""

from __future__ import annotations

import random
from dataclasses import dataclass

from firmware_sim import encoders as enc
from firmware_sim.devices.base import Char, Service
from firmware_sim.model.contract import uuid16

BATTERY_SERVICE = uuid16(0x180F)
BATTERY_LEVEL = uuid16(0x2A19)
DEVICE_INFORMATION = uuid16(0x180A)
MANUFACTURER_NAME = uuid16(0x2A29)
MODEL_NUMBER = uuid16(0x2A24)
SERIAL_NUMBER = uuid16(0x2A25)
FIRMWARE_REVISION = uuid16(0x2A26)

MANUFACTURER = "Simulated Devices Ltd"


@dataclass
class DeviceInfo:
    manufacturer: str
    model: str
    serial: str
    firmware: str

    @classmethod
    def simulated(
        cls, rng: random.Random, *, model: str, firmware: str, serial: str | None, prefix: str
    ) -> DeviceInfo:
        """A simulated device's information; without ``serial``, ``prefix`` and eight digits
        drawn from ``rng``."""
        return cls(
            manufacturer=MANUFACTURER,
            model=model,
            serial=serial or f"{prefix}{rng.randrange(10**8):08d}",
            firmware=firmware,
        )


def device_information_service(info: DeviceInfo) -> Service:
    """Device Information with manufacturer, model, serial number and firmware revision."""
    read = frozenset({"read"})
    return Service(
        DEVICE_INFORMATION,
        [
            Char(MANUFACTURER_NAME, read, on_read=lambda: enc.utf8(info.manufacturer)),
            Char(MODEL_NUMBER, read, on_read=lambda: enc.utf8(info.model)),
            Char(SERIAL_NUMBER, read, on_read=lambda: enc.utf8(info.serial)),
            Char(FIRMWARE_REVISION, read, on_read=lambda: enc.utf8(info.firmware)),
        ],
    )


class Battery:
    """A battery that drains slowly; level readable and notified on change."""

    def __init__(self, level: int, *, drain_every_s: float = 600.0) -> None:
        self.level = level
        self._drain_every = drain_every_s
        self._elapsed = 0.0
        self.char = Char(
            BATTERY_LEVEL, frozenset({"read", "notify"}), on_read=lambda: enc.uint8(self.level)
        )

    def service(self) -> Service:
        return Service(BATTERY_SERVICE, [self.char])

    def elapse(self, seconds: float) -> bool:
        """Let ``seconds`` pass; True when the level dropped (notify it)."""
        self._elapsed += seconds
        if self._elapsed >= self._drain_every and self.level > 5:
            self._elapsed = 0.0
            self.level -= 1
            return True
        return False
