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
#: the device lost its bond (reset, battery change): BlueZ's encryption with the old key
#: fails, retrying does not help; only pairing it again does (see edge.ble.bond)
NEEDS_PAIRING = "needs_pairing"


def pairing_fix(address: str) -> str:
    """What the operator does about a device in :data:`NEEDS_PAIRING` (local view only)."""
    return (f"`edge pair {address} --patient PSEUDONYM` again (the patient `edge devices` "
            "shows), with the device in pairing mode")


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
    #: the adapter (hciN) the device was last placed on; None before the first placement
    adapter: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (``last_seen`` ISO 8601)."""
        out: dict[str, object] = {
            "address": self.address,
            "kind": self.kind,
            "state": self.state,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "last_error": self.last_error,
            "readings": self.readings,
            "adapter": self.adapter,
        }
        if self.state == NEEDS_PAIRING:
            out["fix"] = pairing_fix(self.address)
        return out
