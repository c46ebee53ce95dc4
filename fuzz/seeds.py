"""The seed corpus: valid and near-valid inputs for every target, written to
``fuzz/corpus/<target>/<name>`` by ``python -m fuzz.seeds``. Deterministic: rerunning it
rewrites the same files (the envelope's seeds aside, which carry a fresh key — they are only
a starting point for the fuzzer, and the committed ones stay valid inputs either way).
Inputs that ``python -m fuzz --merge`` adds from fuzzing live beside these, named by SHA-1."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from edge.gatt import racp
from edge.gatt.current_time import encode_current_time
from edge.gatt.glucose import (
    GlucoseMeasurement,
    GlucoseUnit,
    SampleLocation,
    SampleType,
    encode_glucose_measurement,
)
from edge.gatt.glucose_context import (
    Carbohydrate,
    GlucoseContext,
    Health,
    Meal,
    Medication,
    MedicationUnit,
    Tester,
    encode_glucose_context,
)
from edge.gatt.glucose_feature import GlucoseFeatureBit, encode_glucose_feature
from edge.gatt.heart_rate import (
    BodySensorLocation,
    HeartRateMeasurement,
    SensorContact,
    encode_body_sensor_location,
    encode_heart_rate_measurement,
    encode_reset_energy_expended,
)
from edge.gatt.racp import RacpOpcode, RacpResponse
from edge.gatt.sfloat import SfloatSpecial, sfloat_bytes

CORPUS = Path(__file__).resolve().parent / "corpus"

_GM = GlucoseMeasurement(
    sequence_number=7, base_time=datetime(2025, 3, 1, 7, 30), time_offset_min=-15,
    concentration=Decimal("0.00095"), sample_type=SampleType.CAPILLARY_PLASMA,
    sample_location=SampleLocation.FINGER, status_bits=0, context_follows=True,
)
_GM_MOL = GlucoseMeasurement(
    sequence_number=65535, base_time=datetime(2024, 12, 31, 23, 59, 59),
    concentration=Decimal("5.50").scaleb(-3), unit=GlucoseUnit.MOL_PER_L,
    sample_type=SampleType.VENOUS_WHOLE_BLOOD, sample_location=SampleLocation.NOT_AVAILABLE,
)
_GM_HI = GlucoseMeasurement(
    sequence_number=8, base_time=datetime(2025, 3, 1, 8, 0),
    concentration_special=SfloatSpecial.PLUS_INF, sample_type=SampleType.CONTROL_SOLUTION,
    sample_location=SampleLocation.CONTROL_SOLUTION, status_bits=0b110_0000,
)
_GM_9999 = GlucoseMeasurement(sequence_number=9, base_time=datetime(9999, 12, 31, 23, 0),
                              time_offset_min=59)
_GM_1582 = GlucoseMeasurement(sequence_number=10, base_time=datetime(1582, 1, 1),
                              time_offset_min=-1)
_CTX_FULL = GlucoseContext(
    sequence_number=7, extended_flags=0, carbohydrate_id=Carbohydrate.BREAKFAST,
    carbohydrate_kg=Decimal("0.050"), meal=Meal.PREPRANDIAL, tester=Tester.SELF,
    health=Health.NO_HEALTH_ISSUES, exercise_duration_s=1800, exercise_intensity_percent=40,
    medication_id=Medication.RAPID_ACTING_INSULIN, medication=Decimal("0.004"),
    medication_unit=MedicationUnit.LITRES, hba1c_percent=Decimal("6.5"),
)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


def gatt() -> dict[str, dict[str, bytes]]:
    hrm = {
        "uint8": HeartRateMeasurement(72, SensorContact.DETECTED),
        "uint16-energy-rr": HeartRateMeasurement(180, SensorContact.NOT_DETECTED, 1234,
                                                 (800, 812, 799), True),
        "rr-many": HeartRateMeasurement(60, SensorContact.NOT_SUPPORTED,
                                        rr_intervals_raw=tuple(range(900, 909))),
    }
    return {
        "sfloat": {
            "plain": sfloat_bytes(Decimal("5.50")) + b"5.50",
            "nan": sfloat_bytes(SfloatSpecial.NAN) + b"NaN",
            "neg-exp": _hex("fff7") + b"-1E-8",
            "big": _hex("ff07") + b"20470000000",
            "tiny": _hex("0180") + b"0.00000001",
            "minus-one": _hex("ff0f") + b"-1",
        },
        "heart_rate_measurement": {
            **{k: encode_heart_rate_measurement(m) for k, m in hrm.items()},
            "rr-flag-no-rr": _hex("1048"),
            "rr-odd": _hex("104801"),
            "reserved-flags": _hex("e648"),
        },
        "body_sensor_location": {
            "chest": encode_body_sensor_location(BodySensorLocation.CHEST), "reserved": b"\x07",
        },
        "heart_rate_control_point": {"reset": encode_reset_energy_expended(), "other": b"\x02"},
        "glucose_measurement": {
            "kg-context": encode_glucose_measurement(_GM),
            "mol-wrap": encode_glucose_measurement(_GM_MOL),
            "hi-control": encode_glucose_measurement(_GM_HI),
            "year-9999": encode_glucose_measurement(_GM_9999),
            "year-1582": encode_glucose_measurement(_GM_1582),
            "bad-date": _hex("0001001407020e000000"),
        },
        "glucose_context": {
            "full": encode_glucose_context(_CTX_FULL),
            "meal": encode_glucose_context(GlucoseContext(7, meal=Meal.FASTING)),
            "special-hba1c": _hex("400700ff07"),
        },
        "glucose_feature": {
            "all": encode_glucose_feature(tuple(GlucoseFeatureBit)), "reserved": b"\x00\xf8",
        },
        "current_time": {
            "now": encode_current_time(datetime(2025, 3, 1, 7, 30, 15, 500_000), 0b0001),
            "unknown-dow": _hex("e907030107300f000000"),
            "max": encode_current_time(datetime(9999, 12, 31, 23, 59, 59, 999_999), 0xFF),
        },
        "racp": {
            "report-all": racp.report_all(), "report-from": racp.report_from(65534),
            "range": racp.report_range(1, 2), "up-to": racp.report_up_to(32767),
            "last": racp.report_last(), "abort": racp.abort(),
            "count": racp.number_of_records_from(3), "delete": racp.delete_all(),
            "n-records": racp.encode_number_of_records(12),
            "response": racp.encode_response_code(RacpOpcode.REPORT_STORED_RECORDS,
                                                  RacpResponse.SUCCESS),
            "time-range": _hex("010402") + _hex("e907030107300f") * 2,
        },
        "battery_level": {"full": b"\x64", "over": b"\x65"},
        "device_information": {"name": b"SIM-GLU-1\x00\x00", "bad-utf8": b"\xc3\x28"},
    }


# --- structured targets: their inputs follow the byte layouts their drivers read -----------

def _u16(n: int) -> bytes:
    return n.to_bytes(2, "little")


def _racp_event(event: int, args: bytes = b"", dt: int = 8) -> bytes:
    return bytes([dt, event]) + args


def _racp_client() -> dict[str, bytes]:
    # header: cursor flag (0 = a cursor follows), cursor, timeout, busy retries, check reset,
    # max notifications
    def header(cursor: int | None, max_notifications: int = 299) -> bytes:
        head = b"\x01" if cursor is None else b"\x00" + _u16(cursor)
        return head + bytes([29, 3, 1]) + _u16(max_notifications)

    def measurement(seq: int, context: bool = False) -> bytes:
        return _racp_event(1, _u16(seq) + bytes([0, int(context)]))

    def response(opcode: int, code: int) -> bytes:  # indices into RacpOpcode / RacpResponse
        return _racp_event(4, bytes([1, opcode, code]))

    ok = response(0, 0)
    abort_ok = response(2, 0)
    return {
        "complete": header(10) + measurement(10, True) + _racp_event(3, b"\x01" + _u16(10))
        + measurement(11) + ok,
        "first-sync": header(None) + measurement(0) + measurement(1) + ok,
        "wrap": header(65534) + measurement(65534) + measurement(65535) + ok
        + measurement(0) + ok,
        "busy": header(5) + _racp_event(0, b"\x00") + abort_ok + measurement(5) + ok,
        "timeout": header(5) + measurement(5) + _racp_event(6, dt=255) * 40 + abort_ok,
        "no-records-probe": header(5) + response(0, 5) + measurement(3) + ok,
        "chatty": header(0, 3) + measurement(0) * 6 + abort_ok,
        "abort": header(1) + _racp_event(7, b"\x00") + abort_ok,
        "malformed": header(1) + _racp_event(2, b"\x03\x00\x01\x02") + _racp_event(5, b"\x03"
                                                                                    b"\x02\x06\x00"),
    }


def _to_reading() -> dict[str, bytes]:
    def glucose(m: GlucoseMeasurement, ctx: bytes = b"", *, zone: int = 60,
                offset: int = 0) -> bytes:
        raw = encode_glucose_measurement(m)
        return (b"\x00" + zone.to_bytes(2, "little", signed=True) + b"\x00"
                + offset.to_bytes(4, "little", signed=True) + bytes([len(raw)]) + raw + ctx)

    ct = encode_current_time(datetime(2025, 6, 1, 13, 0, 5))
    raw = encode_glucose_measurement(_GM)
    return {
        "hr": b"\x01" + b"\x00\x00\x00\x00" + encode_heart_rate_measurement(
            HeartRateMeasurement(72, SensorContact.DETECTED, 10, (800,))),
        "hr-zero": b"\x01" + b"\x00\x00\x00\x00" + _hex("0000"),
        "glucose-ctx": glucose(_GM, encode_glucose_context(GlucoseContext(7, meal=Meal.CASUAL))),
        "glucose-mol": glucose(_GM_MOL, offset=-3600),
        "glucose-hi": glucose(_GM_HI),
        "year-9999-skewed": glucose(_GM_9999, zone=-600, offset=-86400),
        "year-1582": glucose(_GM_1582, zone=1439),
        "current-time": b"\x00\x3c\x00\x01" + ct + bytes([len(raw)]) + raw,
    }


def _control() -> dict[str, bytes]:
    lines = {
        "status": {"op": "status"},
        "grant": {"op": "consent.grant", "patient": "p-0002", "scope": "vitals and more"},
        "revoke": {"op": "consent.revoke", "patient": "p-0001"},
        "revoke-never": {"op": "consent.revoke", "patient": "p-9999"},
        "list": {"op": "consent.list"},
        "refresh": {"op": "devices.refresh"},
        "extra-field": {"op": "status", "x": 1},
        "bad-scope": {"op": "consent.grant", "patient": "p-1", "scope": "\u2603\u0000"},
        "unknown-op": {"op": "reboot"},
    }
    out = {k: b"\x01" + json.dumps(v).encode() + b"\n" for k, v in lines.items()}
    out |= {
        "deep": b"\x01" + b"[" * 3000,
        "deep-in-string": b"\x01" + b'{"op":"status","s":"' + b"[" * 100 + b'"}',
        "long-number": b"\x01" + b'{"op":"status","n":' + b"9" * 100 + b"}",
        "float-inf": b"\x00" + b'{"op":"status","n":1e999}',
        "nan": b"\x00" + b'{"op":"status","n":NaN}',
        "dup-key": b"\x00" + b'{"op":"status","op":"status"}',
        "too-long": b"\x00" + b'{"op":"' + b"a" * 4100 + b'"}',
        "not-utf8": b"\x00" + b'{"op":"\xff"}',
        "structured": b"\x02\x01\x01\x02\x01\x00\x00\x03\x06p-0003",
    }
    return out


def _envelope() -> dict[str, bytes]:
    from fuzz.targets import envelope as env

    token = env.VALID.encode()
    return {
        "valid": b"\x00" + token,
        "valid-text": b"\x01" + token,
        "fields": b"\x02\x00" + b"\x00" * 40,
        "mutated": b"\x03\x02" + _u16(10) + b"\x00\x41",
        "inner-raw": b"\x04\x01" + b"not a jws",
        "inner-fields": b"\x04\x00\x00" + b"\x00" * 20,
        "seal": b"\x05" + b'{"resourceType":"Bundle"}',
        "not-ascii": b"\x00" + "é".encode() + b".a.b.c.d",
    }


def structured() -> dict[str, dict[str, bytes]]:
    return {
        "racp_client": _racp_client(),
        "to_reading": _to_reading(),
        "control_protocol": _control(),
        "envelope": _envelope(),
    }


def write(root: Path = CORPUS) -> int:
    n = 0
    for target, seeds in {**gatt(), **structured()}.items():
        d = root / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)
            n += 1
    return n


if __name__ == "__main__":
    print(f"wrote {write()} seed inputs under {CORPUS}")
