"""The glucose meter's RACP server: the pure decision through every opcode, operator and
response code, then the meter's async shell (pacing, ATT errors, abort, delete, wrap)."""

import random
import struct

import pytest

from firmware_sim import encoders as enc
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.devices.racp import Action, decide
from firmware_sim.faults import FaultPlan
from firmware_sim.model.clock import ManualClock
from firmware_sim.model.contract import PeripheralError, SimErrorCode
from firmware_sim.model.recorder import RecordingEvents

SEQS = [10, 11, 12, 13, 14]


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("request_hex", "selected"),
    [
        ("01 01", (0, 1, 2, 3, 4)),
        ("01 02 01 0c00", (0, 1, 2)),
        ("01 03 01 0c00", (2, 3, 4)),
        ("01 04 01 0b00 0d00", (1, 2, 3)),
        ("01 04 01 0c00 0c00", (2,)),
        ("01 05", (0,)),
        ("01 06", (4,)),
    ],
)
def test_report_operators_select_records(request_hex: str, selected: tuple[int, ...]) -> None:
    d = decide(h(request_hex), SEQS)
    assert d.action is Action.REPORT
    assert d.selected == selected


@pytest.mark.parametrize(
    ("request_hex", "count"),
    [("04 01", 5), ("04 03 01 0d00", 2), ("04 02 01 0900", 0), ("04 06", 1)],
)
def test_report_number_of_records(request_hex: str, count: int) -> None:
    d = decide(h(request_hex), SEQS)
    assert d.action is Action.COUNT
    assert d.response == bytes([5, 0]) + struct.pack("<H", count)


def test_delete_selects_and_answers_success() -> None:
    d = decide(h("02 02 01 0b00"), SEQS)
    assert d.action is Action.DELETE
    assert d.selected == (0, 1)
    assert d.response == h("06 00 02 01")


@pytest.mark.parametrize(
    ("request_hex", "response_hex"),
    [
        ("", "06 00 00 02"),  # empty write: opcode not supported
        ("07 01", "06 00 07 02"),  # reserved opcode
        ("05 00", "06 00 05 02"),  # a response opcode sent by the client
        ("06 00", "06 00 06 02"),
        ("01", "06 00 01 03"),  # no operator
        ("01 00", "06 00 01 03"),  # null operator with report: invalid operator
        ("02 00", "06 00 02 03"),
        ("04 00", "06 00 04 03"),
        ("03 01", "06 00 03 03"),  # abort needs the null operator
        ("01 07", "06 00 01 04"),  # reserved operator: operator not supported
        ("04 ff", "06 00 04 04"),
        ("01 01 00", "06 00 01 05"),  # 'all' takes no operand: invalid operand
        ("01 05 01", "06 00 01 05"),
        ("01 03", "06 00 01 05"),  # missing operand
        ("01 03 01 0c", "06 00 01 05"),  # short operand
        ("01 04 01 0c00", "06 00 01 05"),  # range needs two values
        ("01 04 01 0d00 0b00", "06 00 01 05"),  # min > max
        ("03 00 00", "06 00 03 05"),
        ("01 03 02 0c00", "06 00 01 09"),  # user facing time filter: operand not supported
        ("01 03 07 0c00", "06 00 01 09"),  # reserved filter type
        ("01 03 01 ff00", "06 00 01 06"),  # nothing >= 255: no records found
        ("02 02 01 0100", "06 00 02 06"),
    ],
)
def test_error_and_empty_responses(request_hex: str, response_hex: str) -> None:
    d = decide(h(request_hex), SEQS)
    assert d.action is Action.RESPOND
    assert d.response == h(response_hex)


def test_abort_decision() -> None:
    assert decide(h("03 00"), SEQS).action is Action.ABORT


def test_delete_not_supported_by_this_meter() -> None:
    assert decide(h("02 01"), SEQS, delete_supported=False).response == h("06 00 02 02")


def test_empty_store() -> None:
    assert decide(h("01 05"), []).response == h("06 00 01 06")
    assert decide(h("01 01"), []).response == h("06 00 01 06")
    assert decide(h("04 01"), []).response == h("05 00 00 00")


# ----------------------------------------------------------------------------- the meter


async def paired_meter(
    clock: ManualClock, faults: FaultPlan | None = None, **options: object
) -> tuple[GlucoseMeter, RecordingEvents]:
    options.setdefault("history", 20)
    meter = GlucoseMeter(
        name="SIM-GLU-1",
        address="00:11:22:33:44:55",
        clock=clock,
        rng=random.Random(5),
        faults=faults,
        **options,  # type: ignore[arg-type]
    )
    events = RecordingEvents()
    meter.set_events(events)
    await meter.connect()
    await meter.pair()
    return meter, events


async def subscribe_all(meter: GlucoseMeter) -> None:
    for ch in (meter.measurement, meter.context_char, meter.racp):
        await meter.start_notify(ch.handle)


def sequences(meter: GlucoseMeter, events: RecordingEvents) -> list[int]:
    return [struct.unpack_from("<H", v, 1)[0] for v in events.values(meter.measurement.handle)]


async def test_report_all_is_paced_and_ends_with_success() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, record_interval=0.5)
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("01 01"), with_response=True)
    assert events.notifications == []  # nothing synchronously inside the write
    await clock.advance(0.5)
    assert len(events.values(meter.measurement.handle)) == 1
    await clock.advance(20 * 0.5)
    assert sequences(meter, events) == [r.sequence for r in meter.records]
    assert events.values(meter.racp.handle) == [h("06 00 01 01")]
    # every record with a context has its 0x2A34 right after its 0x2A18
    with_ctx = [r.sequence for r in meter.records if r.context is not None]
    assert with_ctx
    ctx_seqs = [struct.unpack_from("<H", v, 1)[0] for v in events.values(meter.context_char.handle)]
    assert ctx_seqs == with_ctx
    for i, (handle, value) in enumerate(events.notifications):
        if handle == meter.context_char.handle:
            prev_handle, prev = events.notifications[i - 1]
            assert prev_handle == meter.measurement.handle
            assert prev[1:3] == value[1:3]
            assert prev[0] & enc.GLU_FLAG_CONTEXT


async def test_report_greater_or_equal_from_a_cursor() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock)
    await subscribe_all(meter)
    cursor = meter.records[15].sequence
    await meter.write(
        meter.racp.handle, bytes([1, 3, 1]) + struct.pack("<H", cursor), with_response=True
    )
    await clock.advance(5)
    assert sequences(meter, events) == [r.sequence for r in meter.records[15:]]
    assert events.values(meter.racp.handle)[-1] == h("06 00 01 01")


async def test_no_records_found_and_count() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock)
    await subscribe_all(meter)
    top = meter.records[-1].sequence
    await meter.write(
        meter.racp.handle, bytes([1, 3, 1]) + struct.pack("<H", top + 1), with_response=True
    )
    await clock.advance(1)
    await meter.write(meter.racp.handle, h("04 01"), with_response=True)
    await clock.advance(1)
    assert events.values(meter.racp.handle) == [h("06 00 01 06"), h("05 00 14 00")]
    assert events.values(meter.measurement.handle) == []


async def test_racp_write_without_indications_is_att_0x81() -> None:
    clock = ManualClock()
    meter, _ = await paired_meter(clock)
    await meter.start_notify(meter.measurement.handle)
    with pytest.raises(PeripheralError) as err:
        await meter.write(meter.racp.handle, h("01 01"), with_response=True)
    assert err.value.code is SimErrorCode.ATT_ERROR
    assert err.value.att_code == 0x81
    assert err.value.dbus_error_name == "org.bluez.Error.Failed"
    assert err.value.dbus_error_body == ["Operation failed with ATT error: 0x81"]


async def test_write_while_running_is_att_0x80_but_abort_is_accepted() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, record_interval=1.0)
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("01 01"), with_response=True)
    await clock.advance(3)
    for request in ("01 01", "04 01", "02 01"):
        with pytest.raises(PeripheralError) as err:
            await meter.write(meter.racp.handle, h(request), with_response=True)
        assert err.value.att_code == 0x80
    await meter.write(meter.racp.handle, h("03 00"), with_response=True)
    await clock.advance(30)
    sent = sequences(meter, events)
    assert 3 <= len(sent) < 20
    assert events.values(meter.racp.handle) == [h("06 00 03 01")]
    assert not meter.procedure_running
    # the meter takes new requests again
    await meter.write(meter.racp.handle, h("04 01"), with_response=True)
    await clock.advance(2)
    assert events.values(meter.racp.handle)[-1] == h("05 00 14 00")


async def test_abort_with_nothing_running_succeeds() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock)
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("03 00"), with_response=True)
    await clock.advance(1)
    assert events.values(meter.racp.handle) == [h("06 00 03 01")]


async def test_abort_unsuccessful() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(
        clock, FaultPlan(racp_abort_unsuccessful=True), record_interval=1.0
    )
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("01 01"), with_response=True)
    await clock.advance(2)
    await meter.write(meter.racp.handle, h("03 00"), with_response=True)
    await clock.advance(60)
    rsp = events.values(meter.racp.handle)
    assert rsp == [h("06 00 03 07"), h("06 00 01 01")]
    assert len(sequences(meter, events)) == 20  # the report ran to the end


async def test_procedure_not_completed() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, FaultPlan(racp_interrupt_after_records=5))
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("01 01"), with_response=True)
    await clock.advance(5)
    assert len(sequences(meter, events)) == 5
    assert events.values(meter.racp.handle) == [h("06 00 01 08")]


async def test_delete_then_count() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock)
    await subscribe_all(meter)
    cut = meter.records[9].sequence
    await meter.write(
        meter.racp.handle, bytes([2, 2, 1]) + struct.pack("<H", cut), with_response=True
    )
    await clock.advance(1)
    assert len(meter.records) == 10
    assert all(r.sequence > cut for r in meter.records)
    await meter.write(meter.racp.handle, h("04 01"), with_response=True)
    await clock.advance(1)
    assert events.values(meter.racp.handle) == [h("06 00 02 01"), h("05 00 0a 00")]


async def test_delete_unsupported_meter() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, delete_supported=False)
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("02 01"), with_response=True)
    await clock.advance(1)
    assert events.values(meter.racp.handle) == [h("06 00 02 02")]
    assert len(meter.records) == 20


async def test_sequence_numbers_wrap_at_65535() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, history=10, first_sequence=65530)
    assert [r.sequence for r in meter.records] == [
        65530,
        65531,
        65532,
        65533,
        65534,
        65535,
        0,
        1,
        2,
        3,
    ]
    assert meter.add_glucose_record(120) == 4
    await subscribe_all(meter)
    # a meter compares numerically: ">= 65534" does not include the wrapped records
    await meter.write(
        meter.racp.handle, bytes([1, 3, 1]) + struct.pack("<H", 65534), with_response=True
    )
    await clock.advance(2)
    assert sequences(meter, events) == [65534, 65535]


async def test_link_loss_ends_the_procedure_silently() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, record_interval=1.0)
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("01 01"), with_response=True)
    await clock.advance(3)
    assert meter.drop_link("test")
    await clock.advance(30)
    assert len(sequences(meter, events)) == 3
    assert events.values(meter.racp.handle) == []
    assert not meter.procedure_running


async def test_abort_while_a_count_is_pending_answers_the_abort() -> None:
    clock = ManualClock()
    meter, events = await paired_meter(clock, record_interval=1.0)
    await subscribe_all(meter)
    await meter.write(meter.racp.handle, h("04 01"), with_response=True)
    await meter.write(meter.racp.handle, h("03 00"), with_response=True)
    await clock.advance(5)
    assert events.values(meter.racp.handle) == [h("06 00 03 01")]
