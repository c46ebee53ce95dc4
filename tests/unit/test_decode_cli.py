"""``edge decode``: the JSON contract, names and UUIDs, hex forms, errors, --fhir."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from edge.cli import main

GLUCOSE_MOL = "0E 3412 EA07 01 02 03 04 05 26B2 24 2000"  # 5.50 mmol/L, venous plasma, HI
GLUCOSE_KG = "1B 0100 EA07 03 0F 08 1E 00 FBFF 5FB0 11 4000"  # 95 mg/dL, -5 min, LO, context


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["decode", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def decoded(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1  # one JSON object
    obj: dict[str, Any] = json.loads(out, parse_float=Decimal)
    return obj, out


def test_heart_rate(capsys: pytest.CaptureFixture[str]) -> None:
    obj, _ = decoded(capsys, "2a37", "19 2C01 E803 0004 0002")
    assert obj["heart_rate_bpm"] == 300
    assert obj["sensor_contact"] == "not_supported"
    assert obj["energy_expended_kj"] == 1000
    assert obj["rr_intervals_s"] == [1, Decimal("0.5")]
    obj, _ = decoded(capsys, "heart_rate_measurement", "04:48")
    assert obj["sensor_contact"] == "not_detected"
    assert obj["energy_expended_kj"] is None and obj["rr_intervals_s"] == []


@pytest.mark.parametrize(
    "name",
    ["2a18", "0x2A18", "2A18", "glucose_measurement", "00002a18-0000-1000-8000-00805f9b34fb"],
)
def test_characteristic_by_name_or_uuid(capsys: pytest.CaptureFixture[str], name: str) -> None:
    obj, _ = decoded(capsys, name, GLUCOSE_MOL)
    assert obj["sequence_number"] == 0x1234


def test_glucose_contract_and_precision(capsys: pytest.CaptureFixture[str]) -> None:
    obj, out = decoded(capsys, "glucose_measurement", GLUCOSE_MOL)
    assert '"mmol_l": 5.50' in out  # printed as a JSON number with the device's digits
    assert obj["concentration"] == Decimal("0.00550") and '"concentration": 0.00550' in out
    assert obj["unit"] == "mol/L"
    assert obj["mg_dl"] == Decimal("99.1")
    assert obj["base_time"] == obj["device_time"] == "2026-01-02T03:04:05"
    assert obj["time_offset_min"] is None
    assert obj["concentration_special"] is None
    assert obj["type"] == "venous_plasma" and obj["sample_location"] == "alternate_site"
    assert obj["status"] == ["result_too_high"]
    assert obj["context_follows"] is False
    obj, out = decoded(capsys, "2a18", GLUCOSE_KG)
    assert obj["time_offset_min"] == -5
    assert obj["base_time"] == "2026-03-15T08:30:00" and obj["device_time"] == "2026-03-15T08:25:00"
    assert obj["mg_dl"] == 95 and obj["mmol_l"] == Decimal("5.27")
    assert obj["unit"] == "kg/L" and obj["status"] == ["result_too_low"]
    assert obj["context_follows"] is True
    assert set(obj) >= {
        "sequence_number", "base_time", "device_time", "time_offset_min", "concentration",
        "concentration_special", "unit", "mg_dl", "mmol_l", "type", "sample_location", "status",
        "context_follows",
    }


def test_glucose_special(capsys: pytest.CaptureFixture[str]) -> None:
    obj, _ = decoded(capsys, "2a18", "02 0100 EA07 03 0F 08 1E 00 0008 11")
    assert obj["concentration"] is None and obj["concentration_special"] == "nres"
    assert obj["mg_dl"] is None and obj["mmol_l"] is None


def test_glucose_context(capsys: pytest.CaptureFixture[str]) -> None:
    obj, out = decoded(capsys, "glucose_context", "7F 0700 01 32D0 03 51 0807 32 01 05D0 41F0")
    assert obj["sequence_number"] == 7 and obj["meal"] == "fasting"
    assert obj["carbohydrate_id"] == "breakfast" and '"carbohydrate_kg": 0.050' in out
    assert obj["tester"] == "self" and obj["health"] == "no_health_issues"
    assert obj["exercise_duration_s"] == 1800 and obj["exercise_intensity_percent"] == 50
    assert obj["medication_id"] == "rapid_acting_insulin" and obj["medication_unit"] == "L"
    assert obj["hba1c_percent"] == Decimal("6.5")
    obj, _ = decoded(capsys, "2a34", "82 0100 00 02")
    assert obj["meal"] == "postprandial" and obj["extended_flags"] == 0


def test_feature_location_racp(capsys: pytest.CaptureFixture[str]) -> None:
    obj, _ = decoded(capsys, "glucose_feature", "2004")
    assert obj["features"] == ["sensor_result_high_low_detection", "multiple_bond_supported"]
    obj, _ = decoded(capsys, "body_sensor_location", "01")
    assert obj["body_sensor_location"] == "chest"
    obj, _ = decoded(capsys, "racp", "06 00 01 06")
    assert obj["opcode"] == "response_code"
    assert obj["request_opcode"] == "report_stored_records"
    assert obj["response"] == "no_records_found"
    obj, _ = decoded(capsys, "0x2a52", "05000A00")
    assert obj["number_of_records"] == 10
    obj, _ = decoded(capsys, "racp", "0103010500")
    assert obj["opcode"] == "report_stored_records"
    assert obj["operator"] == "greater_than_or_equal_to" and obj["operand"] == [5]
    obj, _ = decoded(capsys, "2a2b", "EA07 03 0F 08 1E 0F 07 80 01")
    assert obj["date_time"] == "2026-03-15T08:30:15" and obj["day_of_week"] == 7


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["2a37", "1048000400"], "malformed heart_rate_measurement: odd number"),
        (["2a18", "03 0100 EA07 0D 0F 08 1E 00 FBFF 5FB0 11"], "invalid base time"),
        (["2a18", GLUCOSE_MOL + " 00"], "trailing"),
        (["2a34", "40 0100 FF07"], "HbA1c is an SFLOAT special"),
        (["racp", "0600"], "malformed racp: truncated"),
        (["2a37", ""], "truncated"),
    ],
)
def test_malformed_exit_2_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and reason in err


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["2a99", "00"], "unknown characteristic"),
        (["pulse_oximeter", "00"], "unknown characteristic"),
        (["2a37", "0G48"], "hex digits"),
        (["2a37", "048"], "hex digits"),
        (["racp", "06000106", "--fhir"], "--fhir needs"),
        (["2a18", GLUCOSE_MOL, "--fhir", "--tz", "Mars/Olympus"], "unknown time zone"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and reason in err


def test_fhir_heart_rate(capsys: pytest.CaptureFixture[str]) -> None:
    obj, _ = decoded(capsys, "2a37", "0648", "--fhir")
    assert obj["resourceType"] == "Observation"
    assert obj["subject"] == {"reference": "Patient/example-patient"}
    assert obj["device"] == {"reference": "Device/example-sensor"}
    assert "Device/example-hub" in json.dumps(obj["extension"])
    assert obj["valueQuantity"]["value"] == 72
    Observation.model_validate(obj)


def test_fhir_glucose_keeps_precision_and_references(capsys: pytest.CaptureFixture[str]) -> None:
    obj, out = decoded(capsys, "2a18", GLUCOSE_MOL, "--fhir", "--patient", "pt-9",
                       "--device", "dev-3", "--tz", "+01:00")
    assert obj["subject"] == {"reference": "Patient/pt-9"}
    assert obj["device"] == {"reference": "Device/dev-3"}
    assert obj["valueQuantity"]["value"] == Decimal("5.50") and '"value": 5.50' in out
    assert obj["effectiveDateTime"].startswith("2026-01-02T02:04:05")
    Observation.model_validate(json.loads(out))  # valid R4


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["2a18", "02 0100 EA07 03 0F 08 1E 00 5FB0 4A"], "not forwarded (control_solution)"),
        (["2a37", "0605"], "not forwarded (heart_rate_out_of_range)"),
    ],
)
def test_fhir_refuses_what_intake_would_refuse(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    rc, out, err = run(capsys, *argv, "--fhir")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and reason in err
    assert decoded(capsys, *argv)[0]  # without --fhir it still decodes


def test_fhir_never_carries_a_bluetooth_address(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.fhir import sensor_device_id

    obj, out = decoded(capsys, "2a37", "0648", "--fhir", "--device", "aa:bb:cc:dd:ee:ff")
    assert "aa:bb" not in out.lower()
    expected = sensor_device_id("AA:BB:CC:DD:EE:FF", "example-hub")
    assert obj["device"] == {"reference": f"Device/{expected}"}
    Observation.model_validate(obj)
