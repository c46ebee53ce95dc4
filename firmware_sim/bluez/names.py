"""Names as bluetoothd spells them: the bus name, object paths, and UUIDs in 128-bit form."""

from __future__ import annotations

from firmware_sim.model.contract import uuid16

BLUEZ_SERVICE = "org.bluez"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
CCCD_UUID = uuid16(0x2902)
DEFAULT_ADAPTER_ADDRESS = "00:1A:7D:DA:71:13"


def norm_uuid(value: str) -> str:
    """``value`` as a lower-case 128-bit UUID (16- and 32-bit SIG forms expanded)."""
    value = value.lower()
    if len(value) == 4:
        return uuid16(int(value, 16))
    if len(value) == 8:
        return f"{value}-0000-1000-8000-00805f9b34fb"
    return value


def device_path(adapter_path: str, address: str) -> str:
    """The object path bluetoothd gives the device with ``address`` under ``adapter_path``."""
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"
