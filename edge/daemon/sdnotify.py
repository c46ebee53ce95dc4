"""The systemd notify protocol (sd_notify(3)) without a dependency: where READY, WATCHDOG,
STATUS and STOPPING messages go, and the watchdog interval systemd asks for."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Protocol

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
