"""UUIDs the BLE shell talks to, and device kinds from advertised or resolved services."""

from __future__ import annotations

from collections.abc import Iterable


def uuid16(short: int) -> str:
    """The 128-bit form (as bleak reports it) of a Bluetooth SIG 16-bit UUID."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


HEART_RATE_SERVICE = uuid16(0x180D)
GLUCOSE_SERVICE = uuid16(0x1808)
DEVICE_INFORMATION_SERVICE = uuid16(0x180A)
CURRENT_TIME_SERVICE = uuid16(0x1805)

HEART_RATE_MEASUREMENT = uuid16(0x2A37)
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)
RACP = uuid16(0x2A52)
CURRENT_TIME = uuid16(0x2A2B)

MANUFACTURER_NAME = uuid16(0x2A29)
MODEL_NUMBER = uuid16(0x2A24)
SERIAL_NUMBER = uuid16(0x2A25)
FIRMWARE_REVISION = uuid16(0x2A26)

#: Device Information fields read at pairing, by the name the binding report uses
DEVICE_INFORMATION = {
    "manufacturer": MANUFACTURER_NAME,
    "model": MODEL_NUMBER,
    "serial": SERIAL_NUMBER,
    "firmware": FIRMWARE_REVISION,
}

KIND_SERVICES = {"heart_rate": HEART_RATE_SERVICE, "glucose": GLUCOSE_SERVICE}
KINDS = tuple(KIND_SERVICES)


def normalize_uuid(uuid: str) -> str:
    """Lower-case 128-bit form; a bare 16-bit UUID (``180d``) is expanded."""
    u = uuid.strip().lower()
    if len(u) == 4:
        return uuid16(int(u, 16))
    if len(u) == 6 and u.startswith("0x"):
        return uuid16(int(u[2:], 16))
    return u


def kind_from_services(uuids: Iterable[str]) -> str:
    """``heart_rate`` | ``glucose`` | ``other`` from a list of service UUIDs."""
    present = {normalize_uuid(u) for u in uuids}
    for kind, service in KIND_SERVICES.items():
        if service in present:
            return kind
    return "other"


def normalize_address(address: str) -> str:
    """``aa-bb-…`` / ``aa_bb_…`` → ``AA:BB:…``; raises ValueError (no address in it) when not an
    address."""
    a = address.strip().upper().replace("-", ":").replace("_", ":")
    parts = a.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789ABCDEF" for c in p)
                                  for p in parts):
        raise ValueError("not a Bluetooth address (expected AA:BB:CC:DD:EE:FF)")
    return a
