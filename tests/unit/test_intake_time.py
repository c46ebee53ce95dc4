"""Issue 14, "the hub trusts BLE devices too far" (1): glucose records dated 1582, 1970, 2100 and
9999 were forwarded. Intake refuses measurement times outside the plausible window around the
hub's now (from the injected clock), counts them as ``implausible_time`` and audits them once
per submission without PHI; the window is configurable; the cursor still moves past them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from edge.config import IntakeConfig
from edge.errors import Implausible
from edge.intake import ConsentGate, Intake, plausibility
from edge.intake.plausibility import TimeWindow, check_time
from edge.readings import GlucoseReading, HeartRateReading, TimeSource, stable_reading_id
from edge.testing import ManualClock
from edge.testing.vault import MemoryVault

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
METER = "AA:BB:CC:DD:EE:02"
STRAP = "AA:BB:CC:DD:EE:01"
PATIENT = "pt-alpha"


def glucose_at(when: datetime, seq: int, *, source: TimeSource = TimeSource.DEVICE
               ) -> GlucoseReading:
    """A plausible-valued glucose record the meter timed ``when`` (UTC)."""
    return GlucoseReading(
        id=stable_reading_id(METER, "2a18", f"{seq}|{when.isoformat()}"),
        device_id=METER,
        patient=PATIENT,
        effective_time=when,
        time_source=source,
        received_at=NOW,
        sequence_number=seq,
        device_time=when.replace(tzinfo=None),
        concentration=Decimal("0.00104"),
        unit="kg/L",
        mg_dl=Decimal(104),
        mmol_l=Decimal("5.8"),
    )


def hr_at(when: datetime) -> HeartRateReading:
    return HeartRateReading(
        id=stable_reading_id(STRAP, "2a37", when.isoformat()),
        device_id=STRAP,
        patient=PATIENT,
        effective_time=when,
        time_source=TimeSource.GATEWAY,
        received_at=when,
        bpm=72,
        sensor_contact="detected",
    )


HOSTILE = [
    datetime(1582, 10, 15, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2100, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
]
EDGES_REFUSED = [
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    NOW + timedelta(days=1, seconds=1),
]
EDGES_KEPT = [
    datetime(2000, 1, 1, tzinfo=UTC),
    NOW - timedelta(days=30),
    NOW + timedelta(days=1),
]


async def _intake(config: IntakeConfig | None = None) -> tuple[Intake, MemoryVault, ManualClock]:
    clock = ManualClock(NOW)
    vault = MemoryVault(clock=clock)
    await vault.grant_consent(PATIENT, scope="vitals", actor="test")
    gate = ConsentGate(vault)
    await gate.load()
    vault.use_consent(gate)
    return Intake(vault, gate, on_appended=lambda: None, clock=clock, config=config), vault, clock


async def _stored_ids(vault: MemoryVault) -> set[str]:
    return {p.id for p in await vault.next_batch(1000)}


async def test_records_outside_the_window_are_refused_counted_and_audited_once() -> None:
    intake, vault, _ = await _intake()
    times = HOSTILE + EDGES_REFUSED + EDGES_KEPT
    readings = [glucose_at(t, seq) for seq, t in enumerate(times, start=1)]
    await intake.submit_glucose(
        METER, readings, last_sequence=len(times), last_device_time=times[-1].replace(tzinfo=None),
        clock_offset_s=0,
    )
    kept = {r.id for r in readings[len(HOSTILE) + len(EDGES_REFUSED):]}
    assert await _stored_ids(vault) == kept
    refused = len(HOSTILE) + len(EDGES_REFUSED)
    assert (await vault.stats()).refusals["implausible_time"] == refused
    assert intake.stats()["refused"] == {"implausible_time": refused}
    # the cursor moved past the refused records all the same
    cursor = await vault.cursor(METER)
    assert cursor is not None and cursor.last_sequence == len(times)
    # one audit entry for the whole submission: the device by hash and a count, no PHI
    entries = [e for e in await vault.audit_tail(50) if e.action == "device.implausible_time"]
    assert len(entries) == 1
    (entry,) = entries
    assert entry.actor == "system:intake"
    assert f"{refused} record" in entry.subject
    assert METER not in entry.subject and PATIENT not in entry.subject
    for t in HOSTILE:
        assert str(t.year) not in entry.subject


async def test_the_window_follows_the_injected_clock() -> None:
    intake, vault, clock = await _intake()
    later = NOW + timedelta(days=3)
    r = glucose_at(later, 1)
    await intake.submit_glucose(METER, [r], last_sequence=1, last_device_time=None,
                                clock_offset_s=0)
    assert await _stored_ids(vault) == set()
    clock.step(timedelta(days=2).total_seconds())  # now the record is within a day of now
    r2 = glucose_at(later, 2)
    await intake.submit_glucose(METER, [r2], last_sequence=2, last_device_time=None,
                                clock_offset_s=0)
    assert await _stored_ids(vault) == {r2.id}


async def test_the_window_is_configurable() -> None:
    intake, vault, _ = await _intake(IntakeConfig(earliest_measurement_year=2026, max_future_s=0))
    old = glucose_at(datetime(2025, 12, 31, tzinfo=UTC), 1)
    ahead = glucose_at(NOW + timedelta(seconds=1), 2)
    fine = glucose_at(NOW - timedelta(hours=1), 3)
    await intake.submit_glucose(METER, [old, ahead, fine], last_sequence=3,
                                last_device_time=None, clock_offset_s=0)
    assert await _stored_ids(vault) == {fine.id}
    assert (await vault.stats()).refusals["implausible_time"] == 2


async def test_submit_applies_the_window_to_device_timed_readings_only() -> None:
    intake, vault, _ = await _intake()
    # a strap sends no time: its readings carry the hub's receive time, which is not judged
    strap = hr_at(datetime(1970, 1, 1, tzinfo=UTC))
    meter = glucose_at(datetime(1970, 1, 1, tzinfo=UTC), 9, source=TimeSource.DEVICE_CORRECTED)
    await intake.submit([strap, meter])
    assert await _stored_ids(vault) == {strap.id}
    assert (await vault.stats()).refusals == {"implausible_time": 1}
    # the audit names the one device the refused readings came from (by its hash)
    (entry,) = [e for e in await vault.audit_tail(50) if e.action == "device.implausible_time"]
    assert entry.subject.startswith("dev-") and METER not in entry.subject


async def test_a_refusal_the_session_makes_for_an_uncomputable_time_is_audited() -> None:
    intake, vault, _ = await _intake()
    await intake.refuse("implausible_time", 2)
    assert (await vault.stats()).refusals["implausible_time"] == 2
    entries = [e for e in await vault.audit_tail(50) if e.action == "device.implausible_time"]
    assert len(entries) == 1 and "2 record" in entries[0].subject
    await intake.refuse("malformed", 1)  # other reasons are counted, not audited
    assert [e.action for e in await vault.audit_tail(50)].count("device.implausible_time") == 1


# --- the pure rule -------------------------------------------------------------------------


@pytest.mark.parametrize("when", HOSTILE + EDGES_REFUSED)
def test_check_time_refuses_without_naming_the_time(when: datetime) -> None:
    with pytest.raises(Implausible) as exc:
        check_time(glucose_at(when, 1), NOW, TimeWindow())
    assert exc.value.reason == plausibility.REASON_TIME == "implausible_time"
    assert str(when.year) not in str(exc.value)


@pytest.mark.parametrize("when", EDGES_KEPT)
def test_check_time_keeps_the_window(when: datetime) -> None:
    check_time(glucose_at(when, 1), NOW, TimeWindow())


def test_a_hub_clock_near_the_end_of_the_calendar_does_not_overflow() -> None:
    end = datetime(9999, 12, 31, 12, tzinfo=UTC)
    check_time(glucose_at(end, 1), end, TimeWindow())


def test_window_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TimeWindow(earliest=datetime(2000, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        TimeWindow(max_future=timedelta(seconds=-1))
    w = TimeWindow.from_settings(2010, 60)
    assert w.earliest == datetime(2010, 1, 1, tzinfo=UTC)
    assert w.latest(NOW) == NOW + timedelta(minutes=1)
