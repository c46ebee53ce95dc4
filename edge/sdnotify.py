"""The systemd notify protocol (sd_notify(3)) without a dependency, and the health registry
that decides whether the watchdog may be petted.

``WATCHDOG=1`` is only sent while every registered part has reported recently: a hung event
loop cannot run the watchdog task, and a hung or dead part stops beating, so in both cases
systemd sees the pets stop and restarts the service.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edge.clock import Clock
from edge.log import get_logger

log = get_logger("edge.sdnotify")


class Notifier(Protocol):
    """Where the daemon's READY/WATCHDOG/STATUS/STOPPING messages go."""

    def notify(self, message: str) -> bool:
        """Send one notify message (``KEY=value`` lines); True when it was sent."""
        ...


def notify_socket_address(value: str | None) -> str | None:
    """The address to send to: ``@name`` means the abstract namespace (leading NUL)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # sd_notify(3) also allows vsock addresses; this daemon does not need them.
    return None


class SdNotifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``; a no-op when not run by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._address = notify_socket_address(environ.get("NOTIFY_SOCKET"))
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send ``message``; errors are logged once per call and never raised."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a receiver that stopped reading.
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            log.warning("sdnotify.send_failed", error=type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        """Close the sending socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NullNotifier:
    """Records nothing and sends nothing (not under systemd)."""

    def notify(self, message: str) -> bool:
        return False


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half the watchdog timeout from ``$WATCHDOG_USEC``, or None when no watchdog is set
    (or ``$WATCHDOG_PID`` names another process)."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1e6 / 2.0


def one_line(text: str, limit: int = 200) -> str:
    """A STATUS= value: one line (notify messages are newline-separated), bounded."""
    flat = " ".join(text.split())
    return flat[:limit]


@dataclass
class _PartHealth:
    stale_after_s: float
    last_beat: float
    note: str = "starting"


@dataclass
class Health:
    """Heartbeats of the daemon's parts on an injected clock.

    A part is healthy while its last beat is younger than its ``stale_after_s``. A part that
    never registered does not count; a registered part that stops beating makes the whole
    daemon unhealthy.
    """

    clock: Clock
    _parts: dict[str, _PartHealth] = field(default_factory=dict)

    def register(self, name: str, stale_after_s: float) -> None:
        """Start tracking ``name``; it counts as fresh from now."""
        self._parts[name] = _PartHealth(stale_after_s, self.clock.monotonic())

    def unregister(self, name: str) -> None:
        """Stop tracking ``name`` (the part was stopped on purpose)."""
        self._parts.pop(name, None)

    def beat(self, name: str, note: str = "ok") -> None:
        """``name`` made progress just now."""
        part = self._parts.get(name)
        if part is not None:
            part.last_beat = self.clock.monotonic()
            part.note = note

    def stale(self) -> list[str]:
        """Names of the parts that have not beaten recently enough."""
        now = self.clock.monotonic()
        return sorted(n for n, p in self._parts.items() if now - p.last_beat > p.stale_after_s)

    def healthy(self) -> bool:
        """True when every registered part is fresh."""
        return not self.stale()

    def snapshot(self) -> dict[str, dict[str, float | str]]:
        """Per part: seconds since the last beat and its note (for status)."""
        now = self.clock.monotonic()
        return {
            n: {"age_s": round(now - p.last_beat, 3), "note": p.note}
            for n, p in sorted(self._parts.items())
        }
