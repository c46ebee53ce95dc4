"""Per-device state as ``edge status`` shows it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: the states a supervisor moves through; errors are ``error:<reason>``
IDLE = "idle"
CONNECTING = "connecting"
CONNECTED = "connected"
SYNCING = "syncing"
BACKOFF = "backoff"


@dataclass(frozen=True)
class DeviceState:
    """A snapshot of one bound device's supervisor. ``address`` is for the operator only."""

    address: str
    kind: str
    state: str
    last_seen: datetime | None = None
    connects: int = 0
    disconnects: int = 0
    last_error: str | None = None
    readings: int = 0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (``last_seen`` ISO 8601)."""
        return {
            "address": self.address,
            "kind": self.kind,
            "state": self.state,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "last_error": self.last_error,
            "readings": self.readings,
        }
