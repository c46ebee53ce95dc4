"""Intake on an unsynchronised hub clock: readings held in the vault, corrected and released
once it is synchronised; readings of an earlier boot; a clock step mid-run."""

from __future__ import annotations

from datetime import datetime, timedelta

from edge.config import VaultConfig
from edge.hubclock import FakeSyncProbe, HubClock
from edge.intake import ConsentGate, Intake
from edge.intake.clockwatch import ClockWatch
from edge.readings import GlucoseReading, HeartRateReading, TimeSource, reading_from_json
from edge.testing.vault import MemoryVault
from tests.support.clock_support import BOOT, SAVED, STRAP, TRUE_START, Hub
from tests.support.vault_support import glucose

AnyReading = HeartRateReading | GlucoseReading


class Rig:
    def __init__(self, hub: Hub, vault: MemoryVault | None = None) -> None:
        self.hub = hub
        self.vault = vault or MemoryVault(VaultConfig(), clock=hub.clock)
        self.wakes = 0
        self.gate = ConsentGate(self.vault)
        self.intake = Intake(self.vault, self.gate, on_appended=self._wake, clock=hub.clock,
                             hub_clock=hub.hub_clock)
        self.watch = ClockWatch(hub.hub_clock, hub.clock, self.vault.release_held,
                                on_released=self._wake)

    def _wake(self) -> None:
        self.wakes += 1

    async def start(self) -> Rig:
        await self.gate.grant("pt-alpha", scope="vitals", actor="test")
        return self

    async def forwardable(self) -> list[AnyReading]:
        return [p.reading() for p in await self.vault.next_batch(1000)]


async def test_heart_rate_received_unsynchronised_is_held_then_corrected() -> None:
    rig = await Rig(Hub()).start()
    await rig.watch.check_once()
    rig.hub.clock.step(20)
    true_receipt = rig.hub.true_now()
    r = rig.hub.strap()
    assert r.effective_time == SAVED + timedelta(seconds=20)  # the wrong clock
    await rig.intake.submit([r])
    assert await rig.forwardable() == []
    assert (await rig.vault.stats()).held == 1
    assert rig.intake.stats()["held_for_clock"] == 1
    rig.hub.clock.step(60)
    rig.hub.ntp_sync()
    assert await rig.watch.check_once() is None  # the sync step itself: one more look
    rig.hub.clock.step(10)
    released = await rig.watch.check_once()
    assert released is not None and released.released == 1
    [out] = await rig.forwardable()
    assert isinstance(out, HeartRateReading)
    assert out.effective_time == out.received_at == true_receipt
    assert out.clock_hold is None
    assert out.id != r.id  # the held id carries the boot ...
    stored = (await rig.vault.next_batch(10))[0]
    assert stored.id == out.id  # ... and does not change with the correction
    assert (await rig.vault.stats()).held == 0
    assert rig.wakes == 2


async def test_a_clock_step_mid_run_leaves_every_forwarded_reading_with_a_correct_time() -> None:
    rig = await Rig(Hub()).start()
    truth: dict[int, datetime] = {}
    for second in range(0, 300, 7):
        rig.hub.clock.step(7)
        if second == 140:
            rig.hub.ntp_sync()  # NTP: the wall clock jumps four months forward
        if second % 21 == 0:
            await rig.watch.check_once()
        bpm = 40 + second // 7
        truth[bpm] = rig.hub.true_now()
        await rig.intake.submit([rig.hub.strap(bpm)])
    await rig.watch.check_once()
    out = await rig.forwardable()
    assert len(out) == len(truth)
    for r in out:
        assert isinstance(r, HeartRateReading)
        assert r.effective_time == r.received_at == truth[r.bpm], r.bpm
    assert len({r.id for r in out}) == len(out)


async def test_glucose_held_keeps_the_meters_time_or_corrects_a_hub_derived_one() -> None:
    rig = await Rig(Hub()).start()
    rig.hub.clock.step(5)
    lag = rig.hub.true_now() - rig.hub.clock.now()  # how wrong the hub clock is
    device = glucose(1, start=TRUE_START - timedelta(hours=1)).model_copy(
        update={"received_at": rig.hub.clock.now()})
    # offset measured against the wrong hub clock: effective = device time - offset
    offset = round(lag.total_seconds()) + 120  # the meter is also 2 min fast
    derived = glucose(2, start=TRUE_START - timedelta(hours=1)).model_copy(update={
        "received_at": rig.hub.clock.now(),
        "time_source": TimeSource.DEVICE_CORRECTED, "clock_offset_s": offset,
        "effective_time": TRUE_START - timedelta(hours=1, minutes=-2) - timedelta(
            seconds=offset)})
    # the meter's time is far "in the future" for the hub: not refused while unsynchronised
    await rig.intake.submit_glucose("AA:BB:CC:DD:EE:02", [device, derived], last_sequence=2,
                                    last_device_time=None, clock_offset_s=offset)
    assert rig.intake.refused["implausible_time"] == 0
    assert await rig.forwardable() == []
    rig.hub.ntp_sync()
    rig.hub.hub_clock.check()
    rig.hub.clock.step(1)
    await rig.watch.check_once()
    got = {r.id: r for r in await rig.forwardable()}
    d, c = got[device.id], got[derived.id]
    assert isinstance(d, GlucoseReading) and isinstance(c, GlucoseReading)
    assert d.effective_time == device.effective_time
    assert d.received_at == TRUE_START + timedelta(seconds=5)
    assert c.effective_time == TRUE_START - timedelta(hours=1)  # 2 minutes after device 1,
    assert c.clock_offset_s == 120                               # less the meter's 2 min
    assert c.received_at == TRUE_START + timedelta(seconds=5)


async def test_readings_held_in_an_earlier_boot() -> None:
    """Heart rate and hub-derived glucose times are refused ``unknown_time`` (counted,
    audited); a glucose record timed by the meter alone is forwarded, issued at release."""
    earlier = Hub(boot_id="earlier-boot")
    vault = MemoryVault(VaultConfig(), clock=earlier.clock)
    first = await Rig(earlier, vault).start()
    earlier.clock.step(3)
    meter = glucose(1).model_copy(update={"received_at": earlier.clock.now()})
    derived = glucose(2).model_copy(update={"received_at": earlier.clock.now(),
                                            "time_source": TimeSource.DEVICE_CORRECTED,
                                            "clock_offset_s": 60})
    await first.intake.submit([first.hub.strap()])
    await first.intake.submit_glucose("AA:BB:CC:DD:EE:02", [meter, derived], last_sequence=2,
                                      last_device_time=None, clock_offset_s=60)
    assert (await vault.stats()).held == 3
    # power cut; the next boot synchronises
    now = Hub(synced=True)
    rig = Rig(now, vault)
    now.clock.step(50)
    released = await rig.watch.check_once()
    assert released is not None and (released.released, released.unknown_time) == (1, 2)
    [out] = await rig.forwardable()
    assert out.id == meter.id and out.effective_time == meter.effective_time
    assert out.received_at == now.clock.now()
    stats = await vault.stats()
    assert stats.refusals["unknown_time"] == 2 and stats.held == 0 and stats.pending == 1
    assert (await vault.audit_tail(1))[0].action == "clock.unknown_time"


async def test_a_trusted_clock_holds_nothing() -> None:
    rig = await Rig(Hub(synced=True)).start()
    await rig.watch.check_once()
    r = rig.hub.strap()
    await rig.intake.submit([r])
    [out] = await rig.forwardable()
    assert out == r


def test_the_held_strap_id_names_the_boot() -> None:
    from edge.intake.timing import hold

    hub = Hub()
    r = hub.strap()
    a = hold(r, hub.hub_clock.stamp())
    b = hold(r, HubClock(hub.clock, FakeSyncProbe(), boot_id="other").stamp())
    assert a.id != b.id != r.id
    assert reading_from_json(a.model_dump_json()) == a
    assert a.clock_hold is not None and a.clock_hold.boot_id == BOOT
    assert a.device_id == STRAP



async def test_edge_status_shows_the_clock_state_and_the_readings_held() -> None:
    from edge.cli.run_cmd import format_status

    rig = await Rig(Hub()).start()
    await rig.watch.check_once()
    await rig.intake.submit([rig.hub.strap()])
    stats = await rig.vault.stats()
    text = format_status({"source": "daemon", "intake": rig.intake.stats(),
                          "vault": {"held": stats.held}})
    assert "clock:      unsynchronised (source " in text
    assert "; 1 reading(s) held back" in text
    offline = format_status({"source": "vault", "vault": {"held": 0}})
    assert "clock:      daemon not running; 0 reading(s)" in offline
