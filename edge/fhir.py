"""Readings -> FHIR R4 Observations and transaction Bundles (pure, no I/O).

Shape per the HL7 Personal Health Device IG (see shared/reference/fhir-mapping.md):

- Every Observation carries a LOINC and an IEEE 11073 MDC coding, UCUM units, the pseudonymous
  subject ``Patient/<pseudonym>``, ``device`` pointing at the sensor, and the gateway linked by
  the ``observation-gatewayDevice`` extension.
- The identifier is the reading's stable id (``urn:uuid:<id>``); in a Bundle each Observation
  is a conditional create on it (``ifNoneExist``), so at-least-once duplicates are absorbed.
- A special value (NaN, NRes, +/-INF, reserved) is sent as ``dataAbsentReason``, never as a
  number; the glucose meter's HI / LO status becomes ``interpretation`` H / L plus a note.
- The device's decimal precision is kept digit for digit (``5.50`` stays ``5.50``).

Decisions worth knowing:

- RR intervals are components coded MDC 147240 ``MDC_ECG_TIME_PD_RR_GL`` (partition 2, term
  16168) in ``ms``, one per interval, oldest first. (The reference's "16323" does not match the
  nomenclature; 147240 is the code published IGs use.)
- Glucose: LOINC by the unit the *device* reported (kg/L -> 41653-7 in mg/dL, mol/L -> 14743-9
  in mmol/L; the conversion is an exact power-of-ten shift), MDC by the sample type (capillary
  whole blood 160184, ...; MDC_CONC_GLU_GEN 160020 when the meter sent no type). Other meter
  status bits are listed in a note.
- dataAbsentReason: ``nan`` -> not-a-number, ``+inf`` -> positive-infinity, ``-inf`` ->
  negative-infinity (all in the R4 code system); ``nres`` and ``reserved`` -> error (the device
  produced a value it could not represent; also a unit other than kg/L or mol/L, which is never
  guessed); anything else -> unknown.
- Devices are pseudonymous: the sensor's Device id is a name-based UUID of (hub id, address),
  the gateway's one of the hub id; no Bluetooth address appears in the output. Pseudonymous, not
  anonymous: someone who knows the hub id can confirm a guessed address.
- In a Bundle, Devices are conditional creates on their identifier and Observations refer to
  them by ``urn:uuid:`` fullUrl, so a FHIR server resolves the references to the existing or
  the newly created Device. A stand-alone :func:`observation` refers to ``Device/<id>``.
- The Bundle has no ``timestamp`` (not required for a transaction): the same readings always
  give the same bytes, so a re-sent batch is identical. The receive time is ``issued``.
- Times are UTC (``Z``). A glucose meter keeps local time: the UTC offset its local time had
  at the measurement (e.g. ``+02:00`` in summer, ``+01:00`` in winter) rides along as the
  standard ``tz-offset`` extension on ``_effectiveDateTime``, so a clinician can see the
  time the patient saw on the meter. Derived from the reading itself (local time = device
  time - clock offset; minus the UTC effective time); omitted for heart rate (no device
  time) and for an offset no zone has (beyond +/-14 h, or not whole minutes).

Speed: the forwarder serialises tens of thousands of readings a second, so Bundles are written
straight to JSON text from pre-encoded constant fragments (a few microseconds per reading); the
dict forms (:func:`observation`, :func:`bundle`) are parsed back from that same text, with
``Decimal`` numbers, so there is one mapping, not two.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from json.encoder import encode_basestring as _s
from typing import Any

from edge.readings import GlucoseReading, HeartRateReading

#: a FHIR resource as parsed JSON (``Decimal`` numbers). ``Any`` because it is what
#: ``json.loads`` gives and callers walk it by key; the typed, validated form is
#: ``fhir.resources``' models, which the hub does not load.
Resource = dict[str, Any]

RFC3986 = "urn:ietf:rfc:3986"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PHD_CATEGORY = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
TZ_OFFSET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/tz-offset"

# Fixed namespaces: changing one would change every Device id ever sent.
SENSOR_NAMESPACE = uuid.UUID("0b6f3f62-5f5e-5c8e-9a55-6a3d0e7d2c41")
GATEWAY_NAMESPACE = uuid.UUID("7c2a9e10-3d4b-5f61-8e0a-1b9c4d2e6f73")

#: sample type -> (MDC code, MDC reference id); None: the meter sent no type
GLUCOSE_MDC: dict[str | None, tuple[str, str]] = {
    "capillary_whole_blood": ("160184", "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
    "capillary_plasma": ("160188", "MDC_CONC_GLU_CAPILLARY_PLASMA"),
    "venous_whole_blood": ("160192", "MDC_CONC_GLU_VENOUS_WHOLEBLOOD"),
    "venous_plasma": ("160196", "MDC_CONC_GLU_VENOUS_PLASMA"),
    "arterial_whole_blood": ("160200", "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"),
    "arterial_plasma": ("160204", "MDC_CONC_GLU_ARTERIAL_PLASMA"),
    "control_solution": ("160208", "MDC_CONC_GLU_CONTROL"),
    "interstitial_fluid": ("160212", "MDC_CONC_GLU_ISF"),
    "undetermined_whole_blood": ("160364", "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD"),
    "undetermined_plasma": ("160368", "MDC_CONC_GLU_UNDETERMINED_PLASMA"),
    None: ("160020", "MDC_CONC_GLU_GEN"),
}

#: wire unit -> (LOINC code, LOINC display, UCUM code, power of ten from the wire unit)
GLUCOSE_UNITS: dict[str, tuple[str, str, str, int]] = {
    "kg/L": ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer", "mg/dL", 5),
    "mol/L": ("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer", "mmol/L", 3),
}

#: concentration_special -> data-absent-reason (code, display); anything else is "unknown"
ABSENT_REASONS: dict[str, tuple[str, str]] = {
    "nan": ("not-a-number", "Not a Number (NaN)"),
    "+inf": ("positive-infinity", "Positive Infinity (PINF)"),
    "-inf": ("negative-infinity", "Negative Infinity (NINF)"),
    "nres": ("error", "Error"),
    "reserved": ("error", "Error"),
}
_UNKNOWN_REASON = ("unknown", "Unknown")

#: meter status -> (interpretation code, display, note)
RANGE_STATUS: dict[str, tuple[str, str, str]] = {
    "result_too_high": (
        "H", "High", "The meter reported the result as higher than it can measure (HI).",
    ),
    "result_too_low": (
        "L", "Low", "The meter reported the result as lower than it can measure (LO).",
    ),
}


# --- ids -----------------------------------------------------------------------------------------


def sensor_device_id(device_id: str, hub_id: str) -> str:
    """The sensor's stable, pseudonymous Device id (a UUID); never contains the address."""
    return str(uuid.uuid5(SENSOR_NAMESPACE, f"{hub_id}|{device_id.upper()}"))


def gateway_device_id(hub_id: str) -> str:
    """The gateway's stable Device id (a UUID) for hub ``hub_id``."""
    return str(uuid.uuid5(GATEWAY_NAMESPACE, hub_id))


# --- pre-encoded fragments -----------------------------------------------------------------------


def _j(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _category(code: str, display: str) -> list[dict[str, object]]:
    return [
        {"coding": [_coding(OBSERVATION_CATEGORY, code, display)]},
        {"coding": [_coding(PHD_CATEGORY, "phd-observation", "PHD Observation")]},
    ]


def _glucose_head(unit: str, sample_type: str | None) -> str:
    loinc, display, _, _ = GLUCOSE_UNITS[unit]
    mdc, ref_id = GLUCOSE_MDC[sample_type]
    code = {"coding": [_coding(LOINC, loinc, display), _coding(MDC, mdc, ref_id)],
            "text": "Blood glucose"}
    return f'"category":{_j(_category("laboratory", "Laboratory"))},"code":{_j(code)},'


_HR_HEAD = (
    f'"category":{_j(_category("vital-signs", "Vital Signs"))},'
    '"code":' + _j({
        "coding": [_coding(LOINC, "8867-4", "Heart rate"),
                   _coding(MDC, "147842", "MDC_ECG_HEART_RATE")],
        "text": "Heart rate",
    }) + ","
)
_GLUCOSE_HEADS = {(u, st): _glucose_head(u, st) for u in GLUCOSE_UNITS for st in GLUCOSE_MDC}
_RR_OPEN = (
    '{"code":' + _j({"coding": [_coding(MDC, "147240", "MDC_ECG_TIME_PD_RR_GL")],
                     "text": "RR interval"})
    + ',"valueQuantity":{"value":'
)
_RR_CLOSE = f',"unit":"ms","system":"{UCUM}","code":"ms"}}}}'
_HR_VALUE_OPEN = '"valueQuantity":{"value":'
_HR_VALUE_CLOSE = f',"unit":"beats/minute","system":"{UCUM}","code":"/min"}}'
_GLUCOSE_VALUE_CLOSE = {
    unit: f',"unit":"{ucum}","system":"{UCUM}","code":"{ucum}"}}'
    for unit, (_, _, ucum, _) in GLUCOSE_UNITS.items()
}
_ABSENT: dict[str | None, str] = {
    k: '"dataAbsentReason":' + _j({"coding": [_coding(DATA_ABSENT_REASON, code, display)]})
    for k, (code, display) in [*ABSENT_REASONS.items(), (None, _UNKNOWN_REASON)]
}
_INTERPRETATION = {
    status: (_j({"coding": [_coding(INTERPRETATION, code, display)]}), _j({"text": note}))
    for status, (code, display, note) in RANGE_STATUS.items()
}
_GATEWAY_TYPE = {
    "coding": [_coding(MDC, "531981", "MDC_MOC_VMS_MDS_AHD")],
    "text": "Personal health gateway",
}
_SENSOR_TYPES: dict[str, dict[str, object]] = {
    kind: {"coding": [_coding(MDC, "65573", "MDC_MOC_VMS_MDS_SIMP")], "text": text}
    for kind, text in (("heart_rate", "Heart rate sensor"), ("glucose", "Glucose meter"))
}
_OBS_OPEN = (
    '{"resourceType":"Observation","extension":[{"url":"' + GATEWAY_EXTENSION
    + '","valueReference":{"reference":'
)
_IDENTIFIER_OPEN = f'}}}}],"identifier":[{{"system":"{RFC3986}","value":"urn:uuid:'
_OBS_REQUEST = (
    f'"request":{{"method":"POST","url":"Observation","ifNoneExist":"identifier={RFC3986}'
    '|urn:uuid:'
)


# --- values --------------------------------------------------------------------------------------


def _num(d: Decimal) -> str:
    """A Decimal as a JSON number with every digit the device sent (``5.50``), never exponent
    notation. Callers only pass finite values."""
    return f"{d:f}"


def _time(dt: datetime) -> str:
    """UTC, ``Z``-suffixed; milliseconds only when there are any."""
    utc = dt.astimezone(UTC)
    if utc.microsecond:
        return utc.isoformat(timespec="milliseconds")[:-6] + "Z"
    return utc.isoformat()[:-6] + "Z"


def device_utc_offset(r: GlucoseReading) -> str | None:
    """The UTC offset (``+hh:mm``) of the meter's local time at the measurement, or None."""
    local = r.device_time.replace(tzinfo=None) - timedelta(seconds=r.clock_offset_s)
    offset = local - r.effective_time.astimezone(UTC).replace(tzinfo=None)
    seconds = round(offset.total_seconds())
    if seconds % 60 or abs(seconds) > 14 * 3600:
        return None
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _tz_offset(r: HeartRateReading | GlucoseReading) -> str:
    """The ``_effectiveDateTime`` member (with its leading comma), or nothing."""
    if isinstance(r, HeartRateReading):
        return ""
    offset = device_utc_offset(r)
    if offset is None:
        return ""
    return (',"_effectiveDateTime":{"extension":[{"url":"' + TZ_OFFSET_EXTENSION
            + '","valueCode":"' + offset + '"}]}')


# --- Observation ---------------------------------------------------------------------------------


def _heart_rate_body(r: HeartRateReading) -> str:
    body = _HR_HEAD + _HR_VALUE_OPEN + str(int(r.bpm)) + _HR_VALUE_CLOSE
    rr = [_RR_OPEN + _num(s.scaleb(3)) + _RR_CLOSE for s in r.rr_intervals_s if s.is_finite()]
    if rr:
        body += ',"component":[' + ",".join(rr) + "]"
    return body


def _glucose_body(r: GlucoseReading) -> str:
    known_unit = r.unit in GLUCOSE_UNITS
    unit = r.unit if known_unit else "kg/L"
    sample_type = r.sample_type if r.sample_type in GLUCOSE_MDC else None
    body = _GLUCOSE_HEADS[unit, sample_type]
    c = r.concentration
    if not known_unit:
        # Never guess a unit: a wrong number is worse than none.
        body += _ABSENT["reserved"]
    elif c is not None and c.is_finite():
        # An exponent shift, not a multiplication: exact, and keeps the device's digits.
        shifted = c.scaleb(GLUCOSE_UNITS[unit][3])
        body += '"valueQuantity":{"value":' + _num(shifted) + _GLUCOSE_VALUE_CLOSE[unit]
    else:
        body += _ABSENT.get(r.concentration_special, _ABSENT[None])
    if r.status:
        interpretations = []
        notes = []
        other = []
        for status in r.status:
            hl = _INTERPRETATION.get(status)
            if hl is None:
                other.append(status)
            else:
                interpretations.append(hl[0])
                notes.append(hl[1])
        if other:
            notes.append('{"text":' + _s("Meter status: " + ", ".join(other) + ".") + "}")
        if interpretations:
            body += ',"interpretation":[' + ",".join(interpretations) + "]"
        body += ',"note":[' + ",".join(notes) + "]"
    return body


def _observation_text(
    r: HeartRateReading | GlucoseReading, sensor_ref: str, gateway_ref: str, id_text: str
) -> str:
    """The Observation as JSON text; ``*_ref`` are already JSON strings, ``id_text`` the
    JSON-escaped id without quotes."""
    body = _heart_rate_body(r) if isinstance(r, HeartRateReading) else _glucose_body(r)
    return (
        _OBS_OPEN + gateway_ref + _IDENTIFIER_OPEN + id_text + '"}],"status":"final",'
        + body
        + ',"subject":{"reference":' + _s("Patient/" + r.patient)
        + '},"effectiveDateTime":"' + _time(r.effective_time) + '"' + _tz_offset(r)
        + ',"issued":"' + _time(r.received_at)
        + '","device":{"reference":' + sensor_ref + "}}"
    )


def _loads(text: str | bytes) -> Resource:
    result: Resource = json.loads(text, parse_float=Decimal)
    return result


def observation(
    reading: HeartRateReading | GlucoseReading, *, sensor_id: str, gateway_id: str
) -> Resource:
    """The R4 Observation of one reading; non-integer numbers are Decimal (see to_json)."""
    text = _observation_text(
        reading, _s("Device/" + sensor_id), _s("Device/" + gateway_id), _s(reading.id)[1:-1]
    )
    return _loads(text)


# --- Bundle --------------------------------------------------------------------------------------


def _device_entry(device_id: str, device_type: Mapping[str, object]) -> str:
    urn = "urn:uuid:" + device_id
    return _j({
        "fullUrl": urn,
        "resource": {
            "resourceType": "Device",
            "identifier": [{"system": RFC3986, "value": urn}],
            "type": device_type,
        },
        "request": {
            "method": "POST", "url": "Device", "ifNoneExist": f"identifier={RFC3986}|{urn}",
        },
    })


@functools.lru_cache(maxsize=16)
def _gateway_parts(hub_id: str) -> tuple[str, str]:
    """(reference JSON string, Device entry) of the gateway: the same for every Bundle."""
    gateway = gateway_device_id(hub_id)
    return _s("urn:uuid:" + gateway), _device_entry(gateway, _GATEWAY_TYPE)


@functools.lru_cache(maxsize=1024)
def _sensor_parts(device_id: str, hub_id: str, kind: str) -> tuple[str, str]:
    """(reference JSON string, Device entry) of a sensor: the same for every Bundle (a hub
    has tens of devices, so a Bundle of a few readings is not dominated by its Devices)."""
    sensor = sensor_device_id(device_id, hub_id)
    return _s("urn:uuid:" + sensor), _device_entry(sensor, _SENSOR_TYPES[kind])


def bundle_bytes(readings: Iterable[HeartRateReading | GlucoseReading], *, hub_id: str) -> bytes:
    """The transaction Bundle of ``readings`` as compact UTF-8 JSON (what goes over MQTT):
    the gateway and sensor Devices, then one Observation per reading, each a conditional
    create on its identifier."""
    gateway_ref, gateway_entry = _gateway_parts(hub_id)
    devices = [gateway_entry]
    sensors: dict[str, str] = {}
    observations = []
    for r in readings:
        sensor_ref = sensors.get(r.device_id)
        if sensor_ref is None:
            sensor_ref, entry = _sensor_parts(r.device_id, hub_id, r.kind)
            sensors[r.device_id] = sensor_ref
            devices.append(entry)
        id_text = _s(r.id)[1:-1]
        observations.append(
            '{"fullUrl":"urn:uuid:' + id_text + '","resource":'
            + _observation_text(r, sensor_ref, gateway_ref, id_text)
            + "," + _OBS_REQUEST + id_text + '"}}'
        )
    text = (
        '{"resourceType":"Bundle","type":"transaction","entry":['
        + ",".join(devices + observations) + "]}"
    )
    return text.encode()


def bundle(readings: Iterable[HeartRateReading | GlucoseReading], *, hub_id: str) -> Resource:
    """The transaction Bundle as a dict (see :func:`bundle_bytes`); numbers are Decimal/int."""
    return _loads(bundle_bytes(readings, hub_id=hub_id))


# --- JSON ----------------------------------------------------------------------------------------


def to_json(obj: object) -> bytes:
    """Compact UTF-8 JSON of a dict from this module; Decimal values become JSON numbers with
    every digit kept (``5.50`` stays ``5.50``)."""
    # Decimals are first written as marked strings, then the quotes and markers are cut
    # away. The marker holds a per-call random UUID, so no input string can forge one.
    mark = uuid.uuid4().hex
    opened = False

    def default(o: object) -> str:
        nonlocal opened
        if isinstance(o, Decimal) and o.is_finite():
            opened = True
            return f"{mark}<{o:f}>{mark}"
        raise TypeError(f"{type(o).__name__} value cannot be written as FHIR JSON")

    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=default)
    if opened:
        text = text.replace(f'"{mark}<', "").replace(f'>{mark}"', "")
    return text.encode()
