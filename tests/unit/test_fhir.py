"""edge.fhir: Observations and transaction Bundles, validated as R4 by a real FHIR model library."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import fhir
from edge.fhir import Resource
from edge.readings import (
    PSEUDONYM_PATTERN,
    GlucoseReading,
    HeartRateReading,
    TimeSource,
    stable_reading_id,
)

HR_ADDR = "AA:BB:CC:DD:EE:01"
GLU_ADDR = "C0:FF:EE:12:34:56"
PATIENT = "pt-7f3a9c"
HUB = "hub-0001"
T0 = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)
UNITS = {"kg/L": "mg/dL", "mol/L": "mmol/L"}


def hr(bpm: int = 72, rr: tuple[Decimal, ...] = (), **kw: Any) -> HeartRateReading:
    fields: dict[str, Any] = {
        "id": stable_reading_id(HR_ADDR, "2a37", "2026-03-15T08:30:00"),
        "device_id": HR_ADDR,
        "patient": PATIENT,
        "effective_time": T0,
        "time_source": TimeSource.GATEWAY,
        "received_at": T0,
        "bpm": bpm,
        "sensor_contact": "detected",
        "rr_intervals_s": rr,
    }
    fields.update(kw)
    return HeartRateReading(**fields)


def glucose(
    concentration: Decimal | None = Decimal("0.00095"),
    unit: str = "kg/L",
    special: str | None = None,
    status: tuple[str, ...] = (),
    sample_type: str | None = "capillary_whole_blood",
    seq: int = 7,
    **kw: Any,
) -> GlucoseReading:
    mg = mmol = None
    if concentration is not None:
        mg = concentration.scaleb(5) if unit == "kg/L" else concentration * Decimal("18015.6")
        mmol = concentration.scaleb(3) if unit == "mol/L" else mg / Decimal("18.0156")
    fields: dict[str, Any] = {
        "id": stable_reading_id(GLU_ADDR, "2a18", str(seq)),
        "device_id": GLU_ADDR,
        "patient": PATIENT,
        "effective_time": T0,
        "time_source": TimeSource.DEVICE_CORRECTED,
        "received_at": T0 + timedelta(minutes=5, microseconds=250_000),
        "sequence_number": seq,
        "device_time": datetime(2026, 3, 15, 9, 30),
        "concentration": concentration,
        "concentration_special": special,
        "unit": unit,
        "mg_dl": mg,
        "mmol_l": mmol,
        "sample_type": sample_type,
        "sample_location": "finger",
        "status": status,
    }
    fields.update(kw)
    return GlucoseReading(**fields)


def validate_observation(obs: Resource) -> None:
    Observation.model_validate(obs)
    # obs-6: a value and a dataAbsentReason never together, and one of them always
    has_value = "valueQuantity" in obs
    assert has_value != ("dataAbsentReason" in obs)


def parse_bundle(data: bytes) -> Resource:
    """Parse as JSON (Decimal numbers) and validate every resource as R4."""
    doc: Resource = json.loads(data, parse_float=Decimal)
    Bundle.model_validate(doc)
    for entry in doc["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Observation":
            validate_observation(res)
        else:
            Device.model_validate(res)
    return doc


def codings(obs: Resource) -> dict[str, str]:
    return {c["system"]: c["code"] for c in obs["code"]["coding"]}


def observations(doc: Resource) -> list[Resource]:
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation"]


# --- Observation ---------------------------------------------------------------------------------


def test_heart_rate_observation_shape() -> None:
    obs = fhir.observation(hr(72), sensor_id="s-1", gateway_id="g-1")
    validate_observation(obs)
    assert obs["status"] == "final"
    assert codings(obs) == {fhir.LOINC: "8867-4", fhir.MDC: "147842"}
    cats = {c["coding"][0]["code"] for c in obs["category"]}
    assert cats == {"vital-signs", "phd-observation"}
    assert obs["valueQuantity"] == {
        "value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min",
    }
    assert obs["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert obs["device"] == {"reference": "Device/s-1"}
    assert obs["extension"] == [{
        "url": "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice",
        "valueReference": {"reference": "Device/g-1"},
    }]
    assert obs["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{hr().id}"}]
    assert obs["effectiveDateTime"] == "2026-03-15T08:30:00Z"
    assert "component" not in obs


def test_times_are_utc_with_z_and_issued_is_receive_time() -> None:
    plus2 = timezone(timedelta(hours=2))
    r = glucose(effective_time=datetime(2026, 3, 15, 10, 30, tzinfo=plus2))
    obs = fhir.observation(r, sensor_id="s", gateway_id="g")
    assert obs["effectiveDateTime"] == "2026-03-15T08:30:00Z"
    assert obs["issued"] == "2026-03-15T08:35:00.250Z"


def test_rr_intervals_are_components_in_ms() -> None:
    rr = (Decimal(1024) / 1024, Decimal(800) / 1024, Decimal(1) / 1024)
    obs = fhir.observation(hr(60, rr), sensor_id="s", gateway_id="g")
    validate_observation(obs)
    comps = obs["component"]
    assert [c["code"]["coding"][0]["code"] for c in comps] == ["147240"] * 3
    assert all(c["code"]["coding"][0]["system"] == fhir.MDC for c in comps)
    assert all(c["valueQuantity"]["code"] == "ms" for c in comps)
    assert [c["valueQuantity"]["value"] for c in comps] == [
        1000, Decimal("781.25"), Decimal("0.9765625"),
    ]


@pytest.mark.parametrize(
    ("unit", "concentration", "loinc", "ucum", "text"),
    [
        ("kg/L", Decimal("0.00095"), "41653-7", "mg/dL", "95"),
        ("kg/L", Decimal("0.000950"), "41653-7", "mg/dL", "95.0"),
        ("mol/L", Decimal("0.00550"), "14743-9", "mmol/L", "5.50"),
        ("mol/L", Decimal("0.0055"), "14743-9", "mmol/L", "5.5"),
        ("kg/L", Decimal("1E-3"), "41653-7", "mg/dL", "100"),
    ],
)
def test_glucose_code_unit_and_precision_follow_the_device(
    unit: str, concentration: Decimal, loinc: str, ucum: str, text: str
) -> None:
    r = glucose(concentration, unit)
    obs = fhir.observation(r, sensor_id="s", gateway_id="g")
    validate_observation(obs)
    assert codings(obs) == {fhir.LOINC: loinc, fhir.MDC: "160184"}
    assert obs["valueQuantity"]["code"] == ucum
    assert obs["valueQuantity"]["unit"] == ucum
    assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    cats = {c["coding"][0]["code"] for c in obs["category"]}
    assert cats == {"laboratory", "phd-observation"}
    # Precision survives serialisation, in the Bundle bytes and via to_json alike.
    assert f'"value":{text},"unit":"{ucum}"' in fhir.bundle_bytes([r], hub_id=HUB).decode()
    assert f'"value":{text},"unit":"{ucum}"' in fhir.to_json(obs).decode()


def test_five_fifty_stays_five_fifty_in_the_json_text() -> None:
    r = glucose(Decimal("0.00550"), "mol/L")
    data = fhir.bundle_bytes([r], hub_id=HUB)
    assert b'"value":5.50,' in data
    assert b"5.5," not in data
    doc = parse_bundle(data)
    assert observations(doc)[0]["valueQuantity"]["value"] == Decimal("5.50")
    assert str(observations(doc)[0]["valueQuantity"]["value"]) == "5.50"


@pytest.mark.parametrize(
    ("sample_type", "mdc"),
    [
        ("capillary_whole_blood", "160184"),
        ("capillary_plasma", "160188"),
        ("venous_plasma", "160196"),
        ("interstitial_fluid", "160212"),
        (None, "160020"),
    ],
)
def test_glucose_mdc_code_follows_sample_type(sample_type: str | None, mdc: str) -> None:
    obs = fhir.observation(glucose(sample_type=sample_type), sensor_id="s", gateway_id="g")
    assert codings(obs)[fhir.MDC] == mdc


@pytest.mark.parametrize(
    ("special", "reason"),
    [
        ("nan", "not-a-number"),
        ("nres", "error"),
        ("+inf", "positive-infinity"),
        ("-inf", "negative-infinity"),
        ("reserved", "error"),
        (None, "unknown"),
    ],
)
def test_special_values_become_data_absent_reason(special: str | None, reason: str) -> None:
    r = glucose(None, special=special)
    obs = fhir.observation(r, sensor_id="s", gateway_id="g")
    validate_observation(obs)
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"]["coding"] == [{
        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
        "code": reason,
        "display": obs["dataAbsentReason"]["coding"][0]["display"],
    }]
    data = fhir.bundle_bytes([r], hub_id=HUB)
    assert b"valueQuantity" not in data
    for token in (b":NaN", b":Infinity", b":-Infinity", b":null"):
        assert token not in data


def test_an_unknown_unit_sends_no_number() -> None:
    obs = fhir.observation(glucose(Decimal("0.00095"), unit="g/L"), sensor_id="s", gateway_id="g")
    validate_observation(obs)
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "error"


def test_a_non_finite_decimal_is_never_emitted_as_a_number() -> None:
    # The Reading models refuse non-finite Decimals; bypass them to test the mapping's own guard.
    nan = {"concentration": Decimal("NaN"), "concentration_special": "nan"}
    r = glucose().model_copy(update=nan)
    data = fhir.bundle_bytes([r], hub_id=HUB)
    obs = observations(parse_bundle(data))[0]
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    rr = hr().model_copy(update={"rr_intervals_s": (Decimal("Infinity"), Decimal(1))})
    (comp,) = fhir.observation(rr, sensor_id="s", gateway_id="g")["component"]
    assert comp["valueQuantity"]["value"] == 1000
    with pytest.raises(TypeError):
        fhir.to_json({"value": Decimal("NaN")})


@pytest.mark.parametrize(
    ("status", "code"), [("result_too_high", "H"), ("result_too_low", "L")]
)
def test_hi_lo_status_becomes_interpretation_and_note(status: str, code: str) -> None:
    r = glucose(Decimal("0.006"), status=(status,))
    obs = fhir.observation(r, sensor_id="s", gateway_id="g")
    validate_observation(obs)
    assert obs["interpretation"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": code,
        "display": "High" if code == "H" else "Low",
    }]}]
    assert len(obs["note"]) == 1
    assert ("HI" if code == "H" else "LO") in obs["note"][0]["text"]


def test_hi_with_special_value_keeps_interpretation_without_a_number() -> None:
    obs = fhir.observation(
        glucose(None, special="+inf", status=("result_too_high",)), sensor_id="s", gateway_id="g"
    )
    validate_observation(obs)
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "positive-infinity"


def test_other_status_bits_are_a_note_without_interpretation() -> None:
    obs = fhir.observation(
        glucose(status=("battery_low", "time_fault")), sensor_id="s", gateway_id="g"
    )
    validate_observation(obs)
    assert "interpretation" not in obs
    assert obs["note"] == [{"text": "Meter status: battery_low, time_fault."}]


def test_no_status_no_note() -> None:
    obs = fhir.observation(glucose(), sensor_id="s", gateway_id="g")
    assert "note" not in obs
    assert "interpretation" not in obs


# --- ids -----------------------------------------------------------------------------------------


def test_sensor_device_id_is_stable_pseudonymous_and_case_insensitive() -> None:
    a = fhir.sensor_device_id(HR_ADDR, HUB)
    assert a == fhir.sensor_device_id(HR_ADDR.lower(), HUB)
    assert a != fhir.sensor_device_id(GLU_ADDR, HUB)
    assert a != fhir.sensor_device_id(HR_ADDR, "hub-0002")
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", a)  # a valid FHIR id
    assert HR_ADDR.replace(":", "").lower() not in a.replace("-", "")
    assert fhir.gateway_device_id(HUB) == fhir.gateway_device_id(HUB)
    assert fhir.gateway_device_id(HUB) != a


# --- Bundle --------------------------------------------------------------------------------------


def test_bundle_is_a_valid_transaction_with_conditional_creates() -> None:
    readings: list[HeartRateReading | GlucoseReading] = [
        hr(70), glucose(seq=1), glucose(seq=2), hr(71, id="7d7c9a8e-0000-5000-8000-0000000000aa"),
    ]
    data = fhir.bundle_bytes(readings, hub_id=HUB)
    doc = parse_bundle(data)
    assert doc["resourceType"] == "Bundle"
    assert doc["type"] == "transaction"
    entries = doc["entry"]
    devices = [e for e in entries if e["resource"]["resourceType"] == "Device"]
    obs_entries = [e for e in entries if e["resource"]["resourceType"] == "Observation"]
    # one gateway + one per distinct sensor; one Observation per reading, in order
    assert len(devices) == 3
    assert [e["resource"]["identifier"][0]["value"] for e in obs_entries] == [
        f"urn:uuid:{r.id}" for r in readings
    ]
    for r, e in zip(readings, obs_entries, strict=True):
        urn = f"urn:uuid:{r.id}"
        assert e["fullUrl"] == urn
        assert e["request"] == {
            "method": "POST", "url": "Observation",
            "ifNoneExist": f"identifier=urn:ietf:rfc:3986|{urn}",
        }
        assert e["resource"]["subject"] == {"reference": f"Patient/{PATIENT}"}
    # Devices: conditional creates on their identifier, fullUrl = that identifier
    for d in devices:
        ident = d["resource"]["identifier"][0]
        assert ident["system"] == "urn:ietf:rfc:3986"
        assert d["fullUrl"] == ident["value"]
        assert d["request"] == {
            "method": "POST", "url": "Device",
            "ifNoneExist": f"identifier=urn:ietf:rfc:3986|{ident['value']}",
        }
    gateway_urn = f"urn:uuid:{fhir.gateway_device_id(HUB)}"
    (gateway,) = [d for d in devices if d["fullUrl"] == gateway_urn]
    assert gateway["resource"]["type"]["coding"][0] == {
        "system": fhir.MDC, "code": "531981", "display": "MDC_MOC_VMS_MDS_AHD",
    }
    # every Observation's references resolve within the Bundle
    urls = {d["fullUrl"] for d in devices}
    for e in obs_entries:
        res = e["resource"]
        assert res["device"]["reference"] in urls - {gateway_urn}
        assert res["extension"][0]["valueReference"]["reference"] == gateway_urn
    hr_sensor = f"urn:uuid:{fhir.sensor_device_id(HR_ADDR, HUB)}"
    assert obs_entries[0]["resource"]["device"]["reference"] == hr_sensor
    assert obs_entries[3]["resource"]["device"]["reference"] == hr_sensor


def test_no_bluetooth_address_in_the_bundle_text() -> None:
    data = fhir.bundle_bytes([hr(), glucose()], hub_id=HUB).decode().upper()
    for addr in (HR_ADDR, GLU_ADDR):
        assert addr not in data
        assert addr.replace(":", "") not in data
        assert addr.replace(":", "_") not in data
        assert addr.replace(":", "-") not in data


def test_bundle_bytes_are_deterministic_and_match_the_dict_form() -> None:
    readings: list[HeartRateReading | GlucoseReading] = [
        hr(80, (Decimal(900) / 1024,)), glucose(Decimal("0.00550"), "mol/L"),
    ]
    a = fhir.bundle_bytes(readings, hub_id=HUB)
    assert a == fhir.bundle_bytes(readings, hub_id=HUB)
    assert fhir.to_json(fhir.bundle(readings, hub_id=HUB)) == a
    assert "timestamp" not in fhir.bundle(readings, hub_id=HUB)


def test_observation_in_bundle_equals_stand_alone_observation_but_for_references() -> None:
    r = glucose(status=("result_too_low",))
    (entry,) = observations(fhir.bundle([r], hub_id=HUB))
    alone = fhir.observation(
        r, sensor_id=fhir.sensor_device_id(r.device_id, HUB),
        gateway_id=fhir.gateway_device_id(HUB),
    )
    alone["device"]["reference"] = alone["device"]["reference"].replace("Device/", "urn:uuid:")
    ext = alone["extension"][0]["valueReference"]
    ext["reference"] = ext["reference"].replace("Device/", "urn:uuid:")
    assert entry == alone


def test_strings_from_readings_are_escaped() -> None:
    # Pseudonyms cannot carry quotes (Reading refuses them); free-text status can.
    r = glucose(status=('weird"status\\x\u00e9',))
    data = fhir.bundle_bytes([r], hub_id=HUB)
    doc = parse_bundle(data)
    (obs,) = observations(doc)
    assert obs["note"] == [{"text": 'Meter status: weird"status\\x\u00e9.'}]


def test_to_json_markers_cannot_be_forged_by_input_strings() -> None:
    tricky = {"a": Decimal("1.10"), "b": '">x<"', "c": "<1>"}
    assert json.loads(fhir.to_json(tricky), parse_float=Decimal) == tricky


# --- property: any valid reading -> a valid Bundle ------------------------------------------------

_ids = st.from_regex(PSEUDONYM_PATTERN, fullmatch=True)
_macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02X}" for x in b)
)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5))]),
)
_sfloat = st.builds(
    lambda m, e: Decimal(m).scaleb(e), st.integers(-2048 + 3, 2047 - 3), st.integers(-8, 7)
)


@st.composite
def _heart_rates(draw: st.DrawFn) -> HeartRateReading:
    addr = draw(_macs)
    t = draw(_times)
    return HeartRateReading(
        id=stable_reading_id(addr, "2a37", t.isoformat()),
        device_id=addr,
        patient=draw(_ids),
        effective_time=t,
        time_source=TimeSource.GATEWAY,
        received_at=draw(_times),
        bpm=draw(st.integers(20, 300)),
        sensor_contact=draw(st.sampled_from(["not_supported", "not_detected", "detected"])),
        energy_expended_kj=draw(st.none() | st.integers(0, 65535)),
        rr_intervals_s=tuple(
            Decimal(x) / 1024 for x in draw(st.lists(st.integers(0, 65535), max_size=9))
        ),
    )


@st.composite
def _glucoses(draw: st.DrawFn) -> GlucoseReading:
    addr = draw(_macs)
    seq = draw(st.integers(0, 65535))
    unit = draw(st.sampled_from(["kg/L", "mol/L"]))
    special = draw(st.none() | st.sampled_from(["nan", "nres", "+inf", "-inf", "reserved"]))
    conc = None if special else draw(_sfloat)
    types = [t for t in fhir.GLUCOSE_MDC if t not in (None, "control_solution")]
    statuses = [
        "battery_low", "sensor_malfunction", "sample_size_insufficient", "strip_insertion_error",
        "strip_type_incorrect", "result_too_high", "result_too_low", "temperature_too_high",
        "temperature_too_low", "strip_pulled_too_soon", "device_fault", "time_fault",
    ]
    return GlucoseReading(
        id=stable_reading_id(addr, "2a18", str(seq)),
        device_id=addr,
        patient=draw(_ids),
        effective_time=draw(_times),
        time_source=TimeSource.DEVICE,
        received_at=draw(_times),
        sequence_number=seq,
        device_time=datetime(2026, 1, 1),
        concentration=conc,
        concentration_special=special,
        unit=unit,
        mg_dl=None if conc is None else conc.scaleb(5),
        mmol_l=None,
        sample_type=draw(st.none() | st.sampled_from(types)),
        sample_location=draw(st.none() | st.sampled_from(["finger", "earlobe"])),
        status=tuple(draw(st.lists(st.sampled_from(statuses), unique=True, max_size=4))),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_heart_rates() | _glucoses(), min_size=1, max_size=6), _ids)
def test_any_valid_readings_give_a_valid_bundle(
    readings: list[HeartRateReading | GlucoseReading], hub: str
) -> None:
    data = fhir.bundle_bytes(readings, hub_id=hub)
    doc = parse_bundle(data)
    obs = observations(doc)
    assert [o["identifier"][0]["value"] for o in obs] == [f"urn:uuid:{r.id}" for r in readings]
    text = data.decode().upper()
    for r, o in zip(readings, obs, strict=True):
        assert r.device_id not in text
        assert o["subject"]["reference"] == f"Patient/{r.patient}"
        if isinstance(r, GlucoseReading):
            if r.concentration is None:
                assert "dataAbsentReason" in o
            else:
                shift = 5 if r.unit == "kg/L" else 3
                value = o["valueQuantity"]["value"]
                # digit for digit, trailing zeros included
                assert str(value) == f"{r.concentration.scaleb(shift):f}"
                assert o["valueQuantity"]["code"] == UNITS[r.unit]
        else:
            assert o["valueQuantity"]["value"] == r.bpm
            assert len(o.get("component", [])) == len(r.rr_intervals_s)
    assert fhir.to_json(fhir.bundle(readings, hub_id=hub)) == data
