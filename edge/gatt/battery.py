"""Battery Level 0x2A19."""

from __future__ import annotations

from edge.gatt._reader import Reader

BL = "battery_level"


def decode_battery_level(data: bytes | bytearray | memoryview) -> int:
    """Decode 0x2A19: percent, 0-100."""
    r = Reader(BL, data)
    level = r.u8("level")
    r.finish()
    if level > 100:
        raise r.malformed("battery level above 100 percent")
    return level
