"""A :class:`~firmware_sim.model.contract.PeripheralEvents` sink that records what it is told.
For tests of devices and transports (shipped in the package, like structlog's test helpers)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingEvents:
    """Every notification, link drop and advertisement change, in order."""

    notifications: list[tuple[int, bytes]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    advertisement_changes: int = 0

    def notify(self, handle: int, value: bytes) -> None:
        self.notifications.append((handle, bytes(value)))

    def disconnected(self, reason: str) -> None:
        self.disconnects.append(reason)

    def advertisement_changed(self) -> None:
        self.advertisement_changes += 1

    def values(self, handle: int) -> list[bytes]:
        """The notified values of one characteristic handle."""
        return [v for h, v in self.notifications if h == handle]

    def clear(self) -> None:
        self.notifications.clear()
        self.disconnects.clear()
        self.advertisement_changes = 0
