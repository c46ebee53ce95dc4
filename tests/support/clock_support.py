"""A hub whose clock booted from an old saved time, for the hub-clock tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge.gatt.heart_rate import decode_heart_rate_measurement
from edge.gatt.to_reading import heart_rate_reading
from edge.hubclock import FakeSyncProbe, HubClock
from edge.readings import HeartRateReading
from edge.testing import ManualClock

#: the true time at monotonic 0 of this boot
TRUE_START = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
#: what the hub's wall clock said at monotonic 0 (the time it saved before a power cut)
SAVED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
BOOT = "11111111-2222-3333-4444-555555555555"
STRAP = "AA:BB:CC:DD:EE:01"


class Hub:
    """ManualClock + fake probe + HubClock; ``true_now()`` is what the time really is."""

    def __init__(self, *, synced: bool = False, boot_id: str = BOOT) -> None:
        self.clock = ManualClock(TRUE_START)
        if not synced:
            self.clock.set_wall(SAVED)
        self.probe = FakeSyncProbe(synced)
        self.hub_clock = HubClock(self.clock, self.probe, boot_id=boot_id)

    def true_now(self) -> datetime:
        return TRUE_START + timedelta(seconds=self.clock.monotonic())

    def ntp_sync(self) -> None:
        """What NTP does: the wall clock jumps to the true time, the flag appears."""
        self.clock.set_wall(self.true_now())
        self.probe.value = True

    def strap(self, bpm: int = 70, patient: str = "pt-alpha") -> HeartRateReading:
        """A heart-rate notification received now (the BLE layer stamps the wall clock)."""
        m = decode_heart_rate_measurement(bytes([0x00, bpm]))
        return heart_rate_reading(m, device_id=STRAP, patient=patient,
                                  received_at=self.clock.now())
