from datetime import UTC, datetime, timedelta
from decimal import Decimal

from devtools.viewer import VitalsBoard
from edge.fhir import bundle_bytes
from edge.readings import GlucoseReading, HeartRateReading, TimeSource, stable_reading_id

T0 = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)
HR_DEV, GLU_DEV = "AA:BB:CC:DD:EE:01", "AA:BB:CC:DD:EE:02"


def hr(patient: str, bpm: int, at: datetime) -> HeartRateReading:
    return HeartRateReading(
        id=stable_reading_id(HR_DEV, "2a37", at.isoformat()), device_id=HR_DEV,
        patient=patient, effective_time=at, time_source=TimeSource.GATEWAY, received_at=at,
        bpm=bpm, sensor_contact="detected",
    )


def glucose(
    patient: str, seq: int, mg: str, at: datetime, status: tuple[str, ...] = ()
) -> GlucoseReading:
    return GlucoseReading(
        id=stable_reading_id(GLU_DEV, "2a18", str(seq)), device_id=GLU_DEV,
        patient=patient, effective_time=at, time_source=TimeSource.DEVICE, received_at=T0,
        sequence_number=seq, device_time=at.replace(tzinfo=None),
        concentration=Decimal(mg) / 100000,
        unit="kg/L", mg_dl=Decimal(mg), mmol_l=None, sample_type="capillary_whole_blood",
        sample_location="finger", status=status,
    )


def test_board_shows_latest_heart_rate_and_newest_glucose_per_patient() -> None:
    board = VitalsBoard()
    newer, older = T0 - timedelta(hours=1), T0 - timedelta(hours=5)
    board.ingest(bundle_bytes([hr("pt-a", 71, T0), glucose("pt-a", 2, "120", newer)], hub_id="h"))
    # history arrives after the newer record: the view keeps the newest measurement
    board.ingest(bundle_bytes([glucose("pt-a", 1, "95", older)], hub_id="h"))
    later = T0 + timedelta(seconds=1)
    board.ingest(bundle_bytes([hr("pt-b", 64, T0), hr("pt-a", 75, later)], hub_id="h"))
    a, b = board.patients["pt-a"], board.patients["pt-b"]
    assert a.heart_rate == "75 bpm" and a.glucose == "120 mg/dL" and a.observations == 4
    assert b.heart_rate == "64 bpm" and b.glucose == "-"
    table = board.render()
    assert "pt-a" in table and "75 bpm" in table and "120 mg/dL" in table
    assert board.messages == 3 and board.duplicates == 0


def test_board_absorbs_resent_observations_and_marks_hi() -> None:
    board = VitalsBoard()
    payload = bundle_bytes([glucose("pt-a", 7, "600", T0, ("result_too_high",))], hub_id="h")
    assert board.ingest(payload) == 1
    assert board.ingest(payload) == 0  # an at-least-once re-send
    assert board.duplicates == 1 and board.patients["pt-a"].observations == 1
    assert "(H)" in board.patients["pt-a"].glucose


def test_empty_board_says_it_is_waiting() -> None:
    assert "waiting" in VitalsBoard().render()
