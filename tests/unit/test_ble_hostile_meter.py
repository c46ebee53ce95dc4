"""Issue 14, "the hub trusts BLE devices too far": hostile glucose meters from the simulator
(records with arbitrary times, a skewed clock, reports that always stop early, links that drop
mid-transfer) against the real BleManager, on a virtual clock.

1. records dated 1582, 1970, 2100 and 9999 never reach the outbox: refused (``implausible_time``),
   counted and audited once per sync;
2. a year-9999 record on a meter whose clock is behind no longer crash-loops the meter's task:
   that record is a counted refusal, the others arrive and the cursor moves past it;
3. a meter that always aborts after 5 records delivers all of them, a few per attempt, the
   cursor committed at each abort; without progress the capped backoff grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import pytest

from edge.ble.manager import BleManager
from edge.gatt.glucose import decode_glucose_measurement
from edge.gatt.to_reading import glucose_reading_id
from edge.intake import ConsentGate, Intake
from edge.log import configure_logging
from edge.readings import GlucoseReading, reading_from_json
from edge.testing.vault import MemoryVault
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import build_fleet
from firmware_sim.inprocess import SimBleak
from firmware_sim.model.clock import ManualClock
from tests.support.ble_rig import FAST, SIM_TZ, Rig, ble_rig

pytestmark = pytest.mark.timeout(120)

PATIENT = "p-glu"
HOSTILE_TIMES = [
    datetime(1582, 10, 15, 12, 0),
    datetime(1970, 1, 1, 0, 0),
    datetime(2100, 1, 1, 0, 0),
    datetime(9999, 6, 1, 0, 0),
]


async def run_until(clock: ManualClock, done: Callable[[], bool], *, virtual_s: float,
                    step_s: float = 0.5) -> bool:
    """Advance the virtual clock in steps until ``done()`` or ``virtual_s`` have passed."""
    for _ in range(round(virtual_s / step_s)):
        if done():
            return True
        await clock.advance(step_s)
    return done()


# --- a BleManager over the real intake and an in-memory vault (the daemon's shape) -----------


@dataclass
class IntakeRig:
    clock: ManualClock
    meter: GlucoseMeter
    vault: MemoryVault
    intake: Intake
    manager: BleManager

    async def stored(self) -> list[GlucoseReading]:
        out = []
        for p in await self.vault.next_batch(10_000):
            r = reading_from_json(p.payload)
            assert isinstance(r, GlucoseReading)
            out.append(r)
        return out

    async def audits(self, action: str) -> int:
        return sum(1 for e in await self.vault.audit_tail(1000) if e.action == action)


@contextlib.asynccontextmanager
async def intake_rig(seed: int) -> AsyncIterator[IntakeRig]:
    clock = ManualClock()
    fleet = build_fleet(devices="glucose:1", seed=seed, clock=clock)
    sim = SimBleak(fleet)
    meter = fleet.devices[0]
    assert isinstance(meter, GlucoseMeter)
    vault = MemoryVault(clock=clock)
    await vault.bind_device(meter.address, "glucose", PATIENT, bonded=True, actor="test")
    await vault.grant_consent(PATIENT, scope="vitals", actor="test")
    gate = ConsentGate(vault)
    await gate.load()
    vault.use_consent(gate)
    intake = Intake(vault, gate, on_appended=lambda: None, clock=clock)
    manager = BleManager(FAST, vault, intake, scanner_factory=sim.Scanner,
                         client_factory=sim.Client, clock=clock, local_tz=SIM_TZ,
                         rng=random.Random(seed))
    rig = IntakeRig(clock, meter, vault, intake, manager)
    await fleet.start()
    task = asyncio.create_task(manager.run())
    try:
        yield rig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fleet.stop()


async def _cursor_at(rig: IntakeRig, sequence: int) -> bool:
    cursor = await rig.vault.cursor(rig.meter.address)
    return cursor is not None and cursor.last_sequence == sequence


async def test_records_with_implausible_times_never_reach_the_outbox() -> None:
    async with intake_rig(seed=21) as rig:
        meter = rig.meter
        history = len(meter.records)
        hostile = [meter.add_glucose_record(mg_dl_value=110, base_time=t) for t in HOSTILE_TIMES]
        # (a record the meter stamps itself would follow the last one's time: stamp "now")
        newest = meter.add_glucose_record(mg_dl_value=120, base_time=meter.now())
        synced = False
        for _ in range(240):
            if await _cursor_at(rig, newest):
                synced = True
                break
            await rig.clock.advance(0.5)
        assert synced, "the meter was not synced"
        stored = await rig.stored()
        assert stored, "the plausible records must arrive"
        assert all(2000 <= r.effective_time.year <= 2027 for r in stored)
        assert not {r.sequence_number for r in stored} & set(hostile)
        assert newest in {r.sequence_number for r in stored}
        refusals = (await rig.vault.stats()).refusals
        assert refusals["implausible_time"] == len(HOSTILE_TIMES)
        # every record of the meter is accounted for: stored or refused under a named reason
        assert len(stored) + sum(refusals.values()) == history + len(hostile) + 1
        # one audit entry for that sync
        assert await rig.audits("device.implausible_time") == 1
        # the next sync does not see them again (the cursor moved past): no second audit
        later = meter.add_glucose_record(mg_dl_value=121, base_time=meter.now())
        meter.drop_link()
        for _ in range(120):
            if await _cursor_at(rig, later):
                break
            await rig.clock.advance(0.5)
        assert later in {r.sequence_number for r in await rig.stored()}
        assert (await rig.vault.stats()).refusals["implausible_time"] == len(HOSTILE_TIMES)
        assert await rig.audits("device.implausible_time") == 1


async def test_a_year_9999_record_on_a_slow_meter_is_refused_and_the_sync_goes_on() -> None:
    async with intake_rig(seed=22) as rig:
        meter = rig.meter
        meter.clock_skew_minutes = -600  # the meter's clock runs ten hours slow
        history = len(meter.records)
        end_of_time = meter.add_glucose_record(mg_dl_value=110,
                                               base_time=datetime(9999, 12, 31, 23, 0))
        after = meter.add_glucose_record(mg_dl_value=130, base_time=meter.now())
        synced = False
        for _ in range(240):
            if await _cursor_at(rig, after):
                synced = True
                break
            await rig.clock.advance(0.5)
        assert synced, "the meter's sync never completed (crash loop?)"
        assert rig.manager.counters["supervisor_crash"] == 0
        stored = {r.sequence_number for r in await rig.stored()}
        assert end_of_time not in stored and after in stored
        refusals = (await rig.vault.stats()).refusals
        assert refusals["implausible_time"] == 1
        assert len(stored) + sum(refusals.values()) == history + 2
        # and the meter keeps syncing afterwards
        later = meter.add_glucose_record(mg_dl_value=140, base_time=meter.now())
        meter.drop_link()
        for _ in range(120):
            if await _cursor_at(rig, later):
                break
            await rig.clock.advance(0.5)
        assert later in {r.sequence_number for r in await rig.stored()}
        assert (await rig.vault.stats()).refusals["implausible_time"] == 1
        assert rig.manager.counters["supervisor_crash"] == 0


# --- partial transfers (the FakeSink rig: commits and cursors are visible as handed over) ----


def _ids_on_meter(meter: GlucoseMeter) -> set[str]:
    return {
        glucose_reading_id(meter.address, decode_glucose_measurement(rec.measurement_bytes()))
        for rec in meter.records
    }


def _stored_ids(rig: Rig) -> set[str]:
    return {r.id for r in rig.sink.readings.values() if isinstance(r, GlucoseReading)}


def _report_requests(rig: Rig) -> list[bytes]:
    return [w for w in rig.clients.racp_writes if w[:1] == b"\x01"]


async def test_a_meter_that_always_aborts_after_5_records_delivers_them_all() -> None:
    async with ble_rig("glucose:1", seed=6, autojump=False) as rig:
        meter = rig.meter()
        meter.inject_fault({"racp_interrupt_after_records": 5})
        rig.bind(meter, PATIENT)
        await rig.start()
        everything = _ids_on_meter(meter)
        assert len(everything) >= 20
        assert await run_until(rig.clock, lambda: _stored_ids(rig) == everything,
                               virtual_s=600), "the records never all arrived"
        # progress was committed at each abort, never more than one report's worth at a time
        commits = rig.sink.glucose_commits
        assert len(commits) >= len(everything) // 5
        assert all(len(readings) <= 5 for _, readings, *_ in commits)
        cursors = [last_seq for _, _, last_seq, _, _ in commits]
        assert cursors == sorted(cursors), "the cursor only moves forward"
        # each attempt resumed from the committed cursor: "report >= cursor" requests
        requests = _report_requests(rig)
        assert requests[0] == b"\x01\x01"
        assert all(r[:3] == b"\x01\x03\x01" for r in requests[1:])
        assert rig.sink.duplicates == 0
        cursor = await rig.registry.cursor(meter.address)
        assert cursor is not None and cursor.last_sequence == meter.records[-1].sequence
        # then it is synced like any meter: a new record comes in one short report
        meter.add_glucose_record(mg_dl_value=101)
        meter.drop_link()
        everything = _ids_on_meter(meter)
        assert await run_until(rig.clock, lambda: _stored_ids(rig) == everything, virtual_s=120)


async def test_a_link_that_drops_mid_transfer_keeps_what_arrived() -> None:
    async with ble_rig("glucose:1", seed=13, autojump=False) as rig:
        meter = rig.meter()
        # every connection drops after 12 notifications (records and their contexts)
        meter.inject_fault({"drop_link_after_notifications": 12, "drop_link_times": 0})
        rig.bind(meter, PATIENT)
        await rig.start()
        everything = _ids_on_meter(meter)
        assert await run_until(rig.clock, lambda: _stored_ids(rig) == everything,
                               virtual_s=900), "the records never all arrived"
        assert rig.sink.duplicates <= len(rig.sink.glucose_commits)
        cursor = await rig.registry.cursor(meter.address)
        assert cursor is not None and cursor.last_sequence == meter.records[-1].sequence


async def test_records_that_came_newest_first_are_stored_but_move_no_cursor() -> None:
    async with ble_rig("glucose:1", seed=14, autojump=False) as rig:
        meter = rig.meter()
        meter.inject_fault({"racp_interrupt_after_records": 5, "out_of_order_records": True})
        rig.bind(meter, PATIENT)
        await rig.start()
        assert await run_until(rig.clock, lambda: len(_stored_ids(rig)) >= 5, virtual_s=60)
        newest_five = {
            glucose_reading_id(meter.address, decode_glucose_measurement(r.measurement_bytes()))
            for r in meter.records[-5:]
        }
        assert _stored_ids(rig) == newest_five
        # the older records are still to come: the cursor must not skip them
        assert await rig.registry.cursor(meter.address) is None
        assert rig.sink.glucose_commits == []
        meter.clear_faults()
        everything = _ids_on_meter(meter)
        assert await run_until(rig.clock, lambda: _stored_ids(rig) == everything, virtual_s=120)


async def test_a_meter_that_never_delivers_is_retried_with_a_growing_capped_backoff() -> None:
    async with ble_rig("glucose:1", seed=15, autojump=False) as rig:
        meter = rig.meter()
        meter.inject_fault({"racp_interrupt_after_records": 0})
        rig.bind(meter, PATIENT)
        await rig.start()
        await run_until(rig.clock, lambda: len(rig.clients.attempts) >= 8, virtual_s=300)
        times = [t for _, t in rig.clients.attempts]
        assert len(times) >= 8
        gaps = [b - a for a, b in itertools.pairwise(times)]
        cap = FAST.reconnect_cap_s
        # jittered downwards by up to half: each gap lies under its ceiling, none above the cap
        for attempt, gap in enumerate(gaps):
            ceiling = min(cap, FAST.reconnect_base_s * 2**attempt)
            assert gap >= ceiling * 0.5 - 1e-6, (attempt, gap)
        assert max(gaps) <= cap + FAST.racp_timeout_s + 1.0
        assert gaps[-1] > gaps[0]
        assert rig.sink.glucose_commits == [] and not rig.sink.readings


def test_the_hostile_times_are_valid_on_the_wire() -> None:
    """The decoder takes years 1582-9999, so it is intake's window, not the codec, that must
    refuse these times."""
    from firmware_sim import encoders as enc

    for t in HOSTILE_TIMES:
        assert decode_glucose_measurement(enc.glucose_measurement(1, t)).base_time == t


async def test_what_the_hostile_meter_causes_in_the_logs_carries_no_address_or_phi() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        async with intake_rig(seed=23) as rig:
            meter = rig.meter
            meter.inject_fault({"racp_interrupt_after_records": 5})
            for t in HOSTILE_TIMES:
                meter.add_glucose_record(mg_dl_value=110, base_time=t)
            newest = meter.add_glucose_record(mg_dl_value=120, base_time=meter.now())
            for _ in range(600):
                if await _cursor_at(rig, newest):
                    break
                await rig.clock.advance(0.5)
            assert await _cursor_at(rig, newest)
    finally:
        logging.getLogger().handlers.clear()
    text = out.getvalue()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    names = {e.get("event") for e in events}
    assert {"ble.glucose_partial_kept", "intake.refused"} <= names
    assert meter.address not in text and meter.address.replace(":", "_") not in text
    assert PATIENT not in text
    # no record time either (device hashes and the log's own timestamps left aside)
    shown = re.sub(r"dev-[0-9a-f]{8}", "",
                   json.dumps([{k: v for k, v in e.items() if k != "timestamp"}
                               for e in events]))
    for year in ("1582", "1970", "2100", "9999"):
        assert year not in shown
