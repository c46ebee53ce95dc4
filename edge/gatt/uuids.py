"""Bluetooth SIG UUIDs the gateway uses, as 16-bit numbers with 128-bit helpers."""

from __future__ import annotations

import re
from enum import IntEnum

#: the Bluetooth Base UUID: 16-bit ``xxxx`` stands for ``0000xxxx-0000-1000-8000-00805f9b34fb``
BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

_FULL = re.compile(r"^0000([0-9a-f]{4})" + re.escape(BASE_UUID_SUFFIX) + r"$")
_SHORT = re.compile(r"^(?:0x)?([0-9a-f]{1,4})$")


def full_uuid(short: int) -> str:
    """The 128-bit UUID string (lower case) of a 16-bit SIG UUID."""
    if not 0 <= short <= 0xFFFF:
        raise ValueError("a 16-bit UUID is 0..0xFFFF")
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"


def short_uuid(uuid: str) -> int | None:
    """The 16-bit value of a UUID given as ``2a37``, ``0x2A37`` or 128-bit on the base UUID.

    None when ``uuid`` is a 128-bit UUID outside the Bluetooth base (vendor specific) or not a
    UUID at all.
    """
    text = uuid.strip().lower()
    m = _SHORT.match(text) or _FULL.match(text)
    return int(m.group(1), 16) if m else None


def uuid_key(short: int) -> str:
    """The 4-digit lower-case hex form used in reading ids (``2a37``)."""
    return f"{short:04x}"


class Service(IntEnum):
    """GATT services."""

    CURRENT_TIME = 0x1805
    GLUCOSE = 0x1808
    DEVICE_INFORMATION = 0x180A
    HEART_RATE = 0x180D
    BATTERY = 0x180F

    @property
    def uuid(self) -> str:
        """The 128-bit UUID string."""
        return full_uuid(self.value)


class Characteristic(IntEnum):
    """GATT characteristics."""

    GLUCOSE_MEASUREMENT = 0x2A18
    BATTERY_LEVEL = 0x2A19
    MODEL_NUMBER = 0x2A24
    SERIAL_NUMBER = 0x2A25
    FIRMWARE_REVISION = 0x2A26
    MANUFACTURER_NAME = 0x2A29
    CURRENT_TIME = 0x2A2B
    GLUCOSE_CONTEXT = 0x2A34
    HEART_RATE_MEASUREMENT = 0x2A37
    BODY_SENSOR_LOCATION = 0x2A38
    HEART_RATE_CONTROL_POINT = 0x2A39
    GLUCOSE_FEATURE = 0x2A51
    RACP = 0x2A52

    @property
    def uuid(self) -> str:
        """The 128-bit UUID string."""
        return full_uuid(self.value)

    @property
    def key(self) -> str:
        """``2a37`` form."""
        return uuid_key(self.value)

    @property
    def label(self) -> str:
        """Lower-case name used in errors and JSON (``heart_rate_measurement``)."""
        return self.name.lower()


#: Client Characteristic Configuration descriptor
CCCD = 0x2902

# ATT application error codes the profiles define.
#: RACP: a procedure is already in progress (an abort is still accepted)
ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0x80
#: RACP: the CCCD for indications is not configured
ATT_CCCD_IMPROPERLY_CONFIGURED = 0x81
#: Heart Rate Control Point: value not supported
ATT_CONTROL_POINT_NOT_SUPPORTED = 0x80
