"""A small consumer of fuzz bytes (what atheris' FuzzedDataProvider does, without atheris, so
the targets run in the unit tests too). Reading past the end yields zeros / empty bytes: every
input is usable, and a shorter input is a prefix of a longer one's choices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Data:
    """Takes fields from the front of ``raw``."""

    __slots__ = ("_pos", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._pos = 0

    @property
    def remaining(self) -> int:
        return max(0, len(self._raw) - self._pos)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer at the end)."""
        chunk = self._raw[self._pos : self._pos + max(0, n)]
        self._pos += len(chunk)
        return chunk

    def uint(self, n: int) -> int:
        """An unsigned little-endian integer of ``n`` bytes (missing bytes are 0)."""
        return int.from_bytes(self.take(n).ljust(n, b"\0"), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def sint(self, n: int) -> int:
        """A signed little-endian integer of ``n`` bytes."""
        return int.from_bytes(self.take(n).ljust(n, b"\0"), "little", signed=True)

    def flag(self) -> bool:
        return bool(self.u8() & 1)

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options`` (chosen by one byte)."""
        return options[self.u8() % len(options)]

    def sized(self, max_len: int = 255) -> bytes:
        """A length byte (mod ``max_len + 1``), then that many bytes."""
        return self.take(self.u8() % (max_len + 1))

    def rest(self) -> bytes:
        """Everything not taken yet."""
        return self.take(self.remaining)

    def text(self, max_len: int = 255) -> str:
        """A short string: ``sized`` bytes as UTF-8 where valid, else Latin-1 (any code point
        up to U+00FF, and through UTF-8 any code point at all)."""
        raw = self.sized(max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
