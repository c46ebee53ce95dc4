"""Glucose sessions against the simulator's in-process double: first sync gets the history,
later syncs only what is new, a meter that restarts its numbering is resynced without loss or
duplicates, records and cursor are handed over together, failed transfers move nothing."""

from __future__ import annotations

import pytest

from edge.gatt.to_reading import glucose_reading_id
from edge.readings import GlucoseReading, TimeSource
from firmware_sim.devices.glucose import GlucoseMeter
from tests.support.ble_rig import Rig, ble_rig

pytestmark = pytest.mark.timeout(60)


def _glucose(rig: Rig) -> list[GlucoseReading]:
    return [r for r in rig.sink.readings.values() if isinstance(r, GlucoseReading)]


def _ids_on_meter(rig: Rig, meter: GlucoseMeter) -> set[str]:
    """The stable ids of every record the meter holds now (computed from its own store)."""
    from edge.gatt.glucose import decode_glucose_measurement

    return {
        glucose_reading_id(meter.address, decode_glucose_measurement(rec.measurement_bytes()))
        for rec in meter.records
    }


async def _synced(rig: Rig, meter: GlucoseMeter, n: int) -> None:
    await rig.wait_state(meter, lambda s: s.state == "connected" and s.connects >= n)


async def test_first_sync_gets_all_history_then_only_new_records() -> None:
    async with ble_rig("glucose:1", seed=3) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-g")
        history = meter.records
        assert len(history) >= 20
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.of_kind("glucose")) == len(history))
        first = rig.sink.glucose_commits[0]
        assert len(rig.sink.glucose_commits) == 1
        # records and the cursor in one hand-over; the cursor is the newest record
        address, readings, last_seq, last_time, offset = first
        assert address == meter.address and len(readings) == len(history)
        assert last_seq == history[-1].sequence
        assert last_time == readings[-1].device_time
        assert {r.id for r in _glucose(rig)} == _ids_on_meter(rig, meter)
        # the meter's clock is off by minutes; the offset is measured and applied
        skew_s = meter.clock_skew_minutes * 60
        assert abs(offset - skew_s) <= 2
        assert all(r.clock_offset_s == offset for r in readings)
        assert all(r.time_source is TimeSource.DEVICE_CORRECTED for r in readings)

        # second connection: only the new records
        new = [meter.add_glucose_record(mg_dl_value=100 + i) for i in range(3)]
        meter.drop_link()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 2)
        _, second, last_seq, _, _ = rig.sink.glucose_commits[1]
        assert [r.sequence_number for r in second] == new
        assert last_seq == new[-1]
        assert rig.sink.duplicates == 0
        assert {r.id for r in _glucose(rig)} == _ids_on_meter(rig, meter)

        # nothing new: a third connection commits nothing and stores nothing twice
        meter.drop_link()
        await _synced(rig, meter, 3)
        assert len(rig.sink.glucose_commits) == 2
        assert rig.sink.duplicates == 0


async def test_cursor_survives_a_new_session_and_sync_resumes_from_it() -> None:
    async with ble_rig("glucose:1", seed=4) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-g")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1)
        # a fresh manager (a daemon restart) on the same registry: only new records
        seq = meter.add_glucose_record(mg_dl_value=140)
        await rig.restart()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 2)
        assert [r.sequence_number for r in rig.sink.glucose_commits[1][1]] == [seq]
        assert rig.sink.duplicates == 0


@pytest.mark.parametrize("more_than_cursor", [False, True])
async def test_meter_that_restarts_numbering_is_resynced_without_loss(
    more_than_cursor: bool,
) -> None:
    async with ble_rig("glucose:1", seed=5) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-g")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1)
        cursor_before = await rig.registry.cursor(meter.address)
        assert cursor_before is not None
        history = len(meter.records)
        meter.inject_fault({"reset_sequence": True})
        assert meter.records[0].sequence == 1
        if more_than_cursor:
            # renumbered from 1 and then measured so much that a record again carries the
            # cursor's number — with another base time
            while meter.next_sequence <= cursor_before.last_sequence + 2:
                meter.add_glucose_record()
        else:
            meter.add_glucose_record(mg_dl_value=111)
        meter.drop_link()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 2)
        # every record now on the meter arrived, none twice — not even under its new number:
        # the renumbered history keeps its ids, so the stored set is exactly the meter's
        assert {r.id for r in _glucose(rig)} == _ids_on_meter(rig, meter)
        assert len(_glucose(rig)) == len(meter.records)
        # the report-all resync re-sent the renumbered history; the ids absorbed all of it
        assert rig.sink.duplicates >= history
        cursor = await rig.registry.cursor(meter.address)
        assert cursor is not None and cursor.last_sequence == meter.records[-1].sequence
        assert rig.manager.counters["error:racp"] == 0


async def test_interrupted_transfer_keeps_its_progress_and_loses_nothing() -> None:
    async with ble_rig("glucose:1", seed=6) as rig:
        meter = rig.meter()
        meter.inject_fault({"racp_interrupt_after_records": 5})
        rig.bind(meter, "p-g")
        await rig.start()
        await rig.wait_state(meter, lambda s: s.last_error == "racp")
        # what arrived before the meter stopped is committed, the cursor at its newest
        assert len(rig.sink.glucose_commits) == 1
        _, readings, last_seq, _, _ = rig.sink.glucose_commits[0]
        assert [r.sequence_number for r in readings] == [r.sequence for r in meter.records[:5]]
        cursor = await rig.registry.cursor(meter.address)
        assert cursor is not None
        assert cursor.last_sequence == last_seq == readings[-1].sequence_number
        meter.clear_faults()
        await rig.sink.wait_for(lambda s: len(_glucose(rig)) == len(meter.records))
        assert {r.id for r in _glucose(rig)} == _ids_on_meter(rig, meter)
        assert rig.sink.duplicates == 0


async def test_silent_meter_times_out_and_is_retried_later() -> None:
    async with ble_rig("glucose:1", seed=7) as rig:
        meter = rig.meter()
        # slower than the RACP inactivity timeout (5 s)
        meter.inject_fault({"slow_response_seconds": 6.0})
        rig.bind(meter, "p-g")
        await rig.start()
        state = await rig.wait_state(meter, lambda s: s.state.startswith("error:"))
        assert state.last_error is not None
        assert await rig.registry.cursor(meter.address) is None
        meter.clear_faults()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1, within_s=20)
        assert rig.sink.duplicates == 0


async def test_duplicate_and_out_of_order_records_are_stored_once() -> None:
    async with ble_rig("glucose:1", seed=8) as rig:
        meter = rig.meter()
        meter.inject_fault({"duplicate_records": True, "out_of_order_records": True})
        rig.bind(meter, "p-g")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1)
        _, readings, last_seq, _, _ = rig.sink.glucose_commits[0]
        assert len(readings) == len({r.id for r in readings}) == len(meter.records)
        assert last_seq == meter.records[-1].sequence


async def test_malformed_glucose_notifications_are_counted() -> None:
    async with ble_rig("glucose:1", seed=9) as rig:
        meter = rig.meter()
        meter.inject_fault({"malformed": "truncated", "malformed_every": 4})
        rig.bind(meter, "p-g")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) >= 1)
        assert rig.sink.refused["malformed"] >= 1
        assert rig.manager.counters["malformed"] == rig.sink.refused["malformed"]


async def test_procedure_already_in_progress_is_aborted_and_retried() -> None:
    async with ble_rig("glucose:1", seed=10) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-g")
        rig.clients.racp_busy = 2
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1)
        assert rig.clients.racp_busy == 0
        # two aborts (03 00) went out before the request that succeeded
        assert [w[:1] for w in rig.clients.racp_writes[:3]] == [b"\x03", b"\x03", b"\x01"]
        assert {r.id for r in _glucose(rig)} == _ids_on_meter(rig, meter)
        assert rig.manager.device_states()[meter.address].connects == 1


async def test_meter_that_stays_busy_fails_the_sync_boundedly() -> None:
    async with ble_rig("glucose:1", seed=10) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-g")
        rig.clients.racp_busy = 4  # more than the 3 retries of one sync
        await rig.start()
        await rig.wait_state(meter, lambda s: s.last_error == "racp")
        assert rig.sink.glucose_commits == []
        # the next connection gets through
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1)
        assert rig.manager.device_states()[meter.address].connects == 2


async def test_connected_meter_is_polled_for_silently_stored_records() -> None:
    async with ble_rig("glucose:1", seed=11, autojump=False) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-g")
        await rig.start()
        while not rig.sink.glucose_commits:
            await rig.clock.advance(0.5)
        seq = meter.add_glucose_record(mg_dl_value=99)
        await rig.clock.advance(30)
        assert len(rig.sink.glucose_commits) == 1, "polled before the interval"
        await rig.clock.advance(31)
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 2)
        assert [r.sequence_number for r in rig.sink.glucose_commits[1][1]] == [seq]
        assert rig.manager.device_states()[meter.address].connects == 1


async def test_meter_refusing_to_bond_is_an_error_state_and_counted() -> None:
    async with ble_rig("glucose:1", seed=12) as rig:
        meter = rig.meter()
        meter.inject_fault({"pairing_refused": "rejected"})
        rig.bind(meter, "p-g")
        await rig.start()
        state = await rig.wait_state(meter, lambda s: s.state == "error:pairing")
        assert state.last_error == "pairing"
        await rig.sink.wait_for(lambda s: s.refused["pairing_refused"] >= 2)
        assert rig.sink.glucose_commits == [] and not meter.paired
        meter.clear_faults()
        await rig.sink.wait_for(lambda s: len(s.glucose_commits) == 1)
        assert meter.paired
