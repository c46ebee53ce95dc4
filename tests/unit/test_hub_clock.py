"""The hub clock's pure logic: synchronised or not, steps, boot ids, corrections."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from edge.hubclock import ClockState, FakeSyncProbe, HubClock, SystemSyncProbe, read_boot_id
from edge.testing import ManualClock
from tests.support.clock_support import BOOT, SAVED, TRUE_START, Hub


def state(hub: Hub) -> ClockState:
    return hub.hub_clock.state


def test_unsynchronised_until_the_probe_says_so_then_anchored() -> None:
    hub = Hub()
    assert hub.hub_clock.check() is False
    assert state(hub) is ClockState.UNSYNCHRONISED
    stamp = hub.hub_clock.stamp()
    assert not stamp.trusted and stamp.wall == SAVED and stamp.boot_id == BOOT
    hub.clock.step(30)
    hub.ntp_sync()
    # the sync itself is a step: trusted only once a look sees no further step
    assert hub.hub_clock.check() is False
    assert state(hub) is ClockState.STEPPED
    hub.clock.step(10)
    assert hub.hub_clock.check() is True
    assert state(hub) is ClockState.SYNCHRONISED
    assert hub.hub_clock.anchor is not None
    assert hub.hub_clock.anchor.wall == TRUE_START + timedelta(seconds=40)
    assert hub.hub_clock.steps == 1
    assert hub.hub_clock.check() is False  # already trusted: nothing new


def test_a_step_while_synchronised_is_seen_at_the_next_stamp() -> None:
    hub = Hub(synced=True)
    assert hub.hub_clock.check() is True
    hub.clock.step(5)
    hub.clock.set_wall(hub.clock.now() + timedelta(seconds=3))
    stamp = hub.hub_clock.stamp()
    assert not stamp.trusted
    assert state(hub) is ClockState.STEPPED
    assert hub.hub_clock.snapshot()["last_step_s"] == 3.0
    hub.clock.step(5)
    assert hub.hub_clock.check() is True  # trusted again: a new anchor


def test_drift_below_the_threshold_is_not_a_step() -> None:
    hub = Hub(synced=True)
    hub.hub_clock.check()
    hub.clock.set_wall(hub.clock.now() + timedelta(seconds=1.5))
    assert hub.hub_clock.stamp().trusted
    assert hub.hub_clock.steps == 0


def test_a_correction_holds_only_within_the_same_boot() -> None:
    hub = Hub()
    hub.clock.step(100)
    hub.ntp_sync()
    hub.hub_clock.check()
    hub.clock.step(1)
    hub.hub_clock.check()
    assert hub.hub_clock.correct(BOOT, 20.0) == TRUE_START + timedelta(seconds=20)
    assert hub.hub_clock.correct("another-boot", 20.0) is None
    assert HubClock(ManualClock(), FakeSyncProbe(), boot_id=BOOT).correct(BOOT, 1.0) is None


def test_boot_id_and_the_system_probe_read_what_they_are_given(tmp_path: Path) -> None:
    f = tmp_path / "boot_id"
    f.write_text("abc-123\n")
    assert read_boot_id(f) == "abc-123"
    assert read_boot_id(tmp_path / "missing") == "unknown"
    flag = tmp_path / "synchronized"
    flag.touch()
    assert SystemSyncProbe(flag).synchronised() is True
