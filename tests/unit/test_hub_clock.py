"""The hub clock's pure logic: synchronised or not, steps, boot ids, corrections."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.hubclock import (
    AssumeSynchronised,
    ClockState,
    FakeSyncProbe,
    FlagFileSyncProbe,
    HubClock,
    SystemSyncProbe,
    read_boot_id,
    sync_probe,
)
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


def test_the_flag_file_probe_follows_its_file_and_only_it(tmp_path: Path) -> None:
    flag = tmp_path / "synchronised"
    probe = FlagFileSyncProbe(flag)
    assert probe.synchronised() is False
    flag.touch()
    assert probe.synchronised() is True
    flag.unlink()
    assert probe.synchronised() is False
    # a path that cannot even be looked at (ENAMETOOLONG) is not synchronised
    assert FlagFileSyncProbe(tmp_path / ("x" * 300)).synchronised() is False


def test_a_hub_on_the_flag_file_holds_until_the_file_appears_and_the_step_settles(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "synchronised"
    hub = Hub()
    hub_clock = HubClock(hub.clock, FlagFileSyncProbe(flag), boot_id=BOOT)
    hub_clock.check()
    hub.clock.step(60)
    assert not hub_clock.stamp().trusted
    hub.clock.set_wall(hub.true_now())  # NTP steps the clock; its hook creates the file
    flag.touch()
    assert hub_clock.check() is False
    assert hub_clock.state is ClockState.STEPPED
    hub.clock.step(10)
    assert hub_clock.check() is True
    assert hub_clock.correct(BOOT, 30.0) == TRUE_START + timedelta(seconds=30)
    assert hub_clock.snapshot()["source"] == "flag-file"


def test_each_configured_source_gets_its_probe(tmp_path: Path) -> None:
    assert isinstance(sync_probe("system"), SystemSyncProbe)
    assert isinstance(sync_probe("assume-synchronised"), AssumeSynchronised)
    probe = sync_probe("flag-file", tmp_path / "f")
    assert isinstance(probe, FlagFileSyncProbe) and probe.flag == tmp_path / "f"
    sources = {p.source for p in (sync_probe("system"), sync_probe("assume-synchronised"), probe)}
    assert sources == {"system", "assume-synchronised", "flag-file"}
    for source, flag in (("flag-file", None), ("ntp", None)):
        with pytest.raises(ConfigError) as err:
            sync_probe(source, flag)
        assert err.value.problems[0].startswith("clock.source: no probe for")


def test_the_status_snapshot_names_the_source() -> None:
    hub = HubClock(ManualClock(), AssumeSynchronised(), boot_id=BOOT)
    hub.check()
    assert hub.snapshot() == {"state": "synchronised", "source": "assume-synchronised",
                              "steps": 0, "last_step_s": None}


def _timex(maxerror_us: int, status: int = 0, long_size: int = 8) -> bytes:
    """A ``struct timex`` as adjtimex fills it: modes, offset, freq, maxerror, esterror, status."""
    import sys
    head = max(4, long_size)
    raw = bytearray(512)
    at = head + 2 * long_size
    raw[at:at + long_size] = maxerror_us.to_bytes(long_size, sys.byteorder, signed=True)
    st = head + 4 * long_size
    raw[st:st + 4] = status.to_bytes(4, sys.byteorder)
    return bytes(raw)


@pytest.mark.parametrize("long_size", [4, 8])
def test_the_kernel_clock_is_judged_by_its_maximum_error_as_systemd_does(long_size: int) -> None:
    from edge.hubclock import timex_synchronised

    sta_unsync = 0x0040
    # chrony without rtcsync: synchronised (small maxerror) with STA_UNSYNC still set
    assert timex_synchronised(_timex(250_000, sta_unsync, long_size), long_size)
    # nothing disciplines the clock: the kernel has grown maxerror to its 16 s cap
    assert not timex_synchronised(_timex(16_000_000, 0, long_size), long_size)
    assert not timex_synchronised(_timex(-1, 0, long_size), long_size)
    assert not timex_synchronised(b"\x00" * 8, long_size)
