"""edge.ble.resume.resume_point (pure): after a transfer that ended early, the cursor may move
to the newest record only when nothing older can still be missing."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from edge.ble.resume import resume_point
from edge.gatt import racp
from edge.gatt.glucose import GlucoseMeasurement, encode_glucose_measurement
from edge.gatt.racp import RacpOpcode, RacpResponse
from edge.gatt.racp_client import Finished, RacpSync, SyncResult

T0 = datetime(2026, 3, 15, 8, 0)
NOT_COMPLETED = racp.encode_response_code(
    RacpOpcode.REPORT_STORED_RECORDS, RacpResponse.PROCEDURE_NOT_COMPLETED
)


def gm(seq: int, minutes: int | None = None) -> bytes:
    base = T0 + timedelta(minutes=seq if minutes is None else minutes)
    return encode_glucose_measurement(GlucoseMeasurement(sequence_number=seq, base_time=base))


def ended_early(cursor: int | None, arrivals: list[bytes]) -> SyncResult:
    """What the machine returns when the meter sends ``arrivals`` and then answers
    "procedure not completed"."""
    sync = RacpSync(cursor, 10.0)
    sync.start(0.0)
    for data in arrivals:
        sync.measurement(data, 0.0)
    action = sync.indication(NOT_COMPLETED, 0.0)
    assert isinstance(action, Finished)
    assert not action.result.complete and action.result.reason == "procedure_not_completed"
    return action.result


def _seq(result: SyncResult) -> int | None:
    point = resume_point(result)
    return None if point is None else point.measurement.sequence_number


def test_oldest_first_moves_to_the_newest() -> None:
    assert _seq(ended_early(None, [gm(s) for s in (10, 11, 12, 13, 14)])) == 14
    assert _seq(ended_early(10, [gm(s) for s in (10, 11, 12, 13, 14)])) == 14


def test_gaps_in_the_numbering_are_fine_when_the_order_is() -> None:
    assert _seq(ended_early(10, [gm(s) for s in (10, 12, 15)])) == 15


def test_across_the_wrap() -> None:
    assert _seq(ended_early(65534, [gm(s) for s in (65534, 65535, 0, 1)])) == 1
    assert _seq(ended_early(None, [gm(s) for s in (65534, 65535, 0, 1)])) == 1


def test_newest_first_keeps_the_cursor() -> None:
    assert _seq(ended_early(None, [gm(s) for s in (24, 23, 22, 21, 20)])) is None
    assert _seq(ended_early(10, [gm(s) for s in (12, 11, 10)])) is None
    # two records newest first are "ascending" only the long way round the circle
    assert _seq(ended_early(None, [gm(24), gm(23)])) is None
    # the record at the cursor arriving after a newer one vouches for nothing
    assert _seq(ended_early(10, [gm(11), gm(10)])) is None


def test_duplicates_and_records_before_the_cursor_do_not_count() -> None:
    arrivals = [gm(8), gm(10), gm(10), gm(11), gm(11), gm(12)]
    assert _seq(ended_early(10, arrivals)) == 12


def test_nothing_arrived() -> None:
    assert resume_point(ended_early(10, [])) is None
    assert resume_point(ended_early(None, [])) is None


def test_two_records_with_one_number_vouch_for_no_order() -> None:
    assert _seq(ended_early(None, [gm(5), gm(5, minutes=500), gm(6)])) is None


@given(st.lists(st.integers(0, 200), min_size=1, max_size=30, unique=True))
def test_property_the_point_is_newest_and_only_for_ascending_arrivals(order: list[int]) -> None:
    result = ended_early(None, [gm(s) for s in order])
    point = _seq(result)
    ascending = order == sorted(order)
    # numbers 0-200 never wrap: only a sorted arrival may move the cursor, to its newest
    assert point == (order[-1] if ascending else None)
