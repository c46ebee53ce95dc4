"""Device Information 0x180A strings (manufacturer, model, serial, firmware …)."""

from __future__ import annotations

from edge.gatt._reader import Reader


def decode_utf8_string(characteristic: str, data: bytes | bytearray | memoryview) -> str:
    """A UTF-8 string characteristic (Device Information); trailing NULs are dropped."""
    r = Reader(characteristic, data)
    raw = r.take(r.remaining, "string")
    try:
        return raw.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        raise r.malformed("not valid UTF-8") from None
