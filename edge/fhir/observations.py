"""Readings -> FHIR R4 Observations (pure), as JSON text from fragments encoded once: the
heart-rate and glucose bodies, special values as ``dataAbsentReason``, the meter's HI / LO as
``interpretation``, UTC times with the meter's ``tz-offset``. The mapping is described in
:mod:`edge.fhir`; :mod:`edge.fhir.bundles` puts these texts into transaction Bundles.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from json.encoder import encode_basestring as _s

from edge.fhir.codes import (
    ABSENT_REASONS,
    DATA_ABSENT_REASON,
    GATEWAY_EXTENSION,
    GLUCOSE_MDC,
    GLUCOSE_UNITS,
    INTERPRETATION,
    LOINC,
    MDC,
    RANGE_STATUS,
    RFC3986,
    TZ_OFFSET_EXTENSION,
    UCUM,
    UNKNOWN_REASON,
    category,
    coding,
)
from edge.fhir.jsontext import Resource, compact, loads
from edge.readings import GlucoseReading, HeartRateReading

# --- pre-encoded fragments -----------------------------------------------------------------------


def _glucose_head(unit: str, sample_type: str | None) -> str:
    loinc, display, _, _ = GLUCOSE_UNITS[unit]
    mdc, ref_id = GLUCOSE_MDC[sample_type]
    code = {"coding": [coding(LOINC, loinc, display), coding(MDC, mdc, ref_id)],
            "text": "Blood glucose"}
    return f'"category":{compact(category("laboratory", "Laboratory"))},"code":{compact(code)},'


_HR_HEAD = (
    f'"category":{compact(category("vital-signs", "Vital Signs"))},'
    '"code":' + compact({
        "coding": [coding(LOINC, "8867-4", "Heart rate"),
                   coding(MDC, "147842", "MDC_ECG_HEART_RATE")],
        "text": "Heart rate",
    }) + ","
)
_GLUCOSE_HEADS = {(u, st): _glucose_head(u, st) for u in GLUCOSE_UNITS for st in GLUCOSE_MDC}
_RR_OPEN = (
    '{"code":' + compact({"coding": [coding(MDC, "147240", "MDC_ECG_TIME_PD_RR_GL")],
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
    k: '"dataAbsentReason":' + compact({"coding": [coding(DATA_ABSENT_REASON, code, display)]})
    for k, (code, display) in [*ABSENT_REASONS.items(), (None, UNKNOWN_REASON)]
}
_INTERPRETATION = {
    status: (compact({"coding": [coding(INTERPRETATION, code, display)]}), compact({"text": note}))
    for status, (code, display, note) in RANGE_STATUS.items()
}
_OBS_OPEN = (
    '{"resourceType":"Observation","extension":[{"url":"' + GATEWAY_EXTENSION
    + '","valueReference":{"reference":'
)
_IDENTIFIER_OPEN = f'}}}}],"identifier":[{{"system":"{RFC3986}","value":"urn:uuid:'


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


def observation_text(
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


def observation(
    reading: HeartRateReading | GlucoseReading, *, sensor_id: str, gateway_id: str
) -> Resource:
    """The R4 Observation of one reading; non-integer numbers are Decimal (see to_json)."""
    text = observation_text(
        reading, _s("Device/" + sensor_id), _s("Device/" + gateway_id), _s(reading.id)[1:-1]
    )
    return loads(text)
