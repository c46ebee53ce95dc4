"""``edge decode CHARACTERISTIC HEX [--fhir]``: the testers' tool.

Prints one JSON object on stdout. The field names are a contract other tooling relies on
(issue 2); numbers from the device are printed with every digit it sent (``5.50``). Malformed
input: exit 2 and one line on stderr naming the reason. With ``--fhir``, a reading intake would
refuse (control solution, impossible value) is reported the same way instead of an Observation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.errors import Implausible, MalformedPayload, UsageError
from edge.gatt.battery import decode_battery_level
from edge.gatt.current_time import decode_current_time
from edge.gatt.device_information import decode_utf8_string
from edge.gatt.glucose import decode_glucose_measurement
from edge.gatt.glucose_context import decode_glucose_context
from edge.gatt.glucose_feature import decode_glucose_feature
from edge.gatt.heart_rate import (
    decode_body_sensor_location,
    decode_heart_rate_control_point,
    decode_heart_rate_measurement,
)
from edge.gatt.racp import RacpNumberOfRecords, RacpResponseCode, decode_racp
from edge.gatt.to_reading import glucose_reading, heart_rate_reading
from edge.gatt.uuids import Characteristic, short_uuid
from edge.readings import GlucoseReading, HeartRateReading

if TYPE_CHECKING:
    from edge.fhir import Resource

EXIT_MALFORMED = 2

_ALIASES = {
    "glucose_context": Characteristic.GLUCOSE_CONTEXT,
    "glucose_measurement_context": Characteristic.GLUCOSE_CONTEXT,
    "racp": Characteristic.RACP,
    "record_access_control_point": Characteristic.RACP,
    "manufacturer_name_string": Characteristic.MANUFACTURER_NAME,
    "model_number_string": Characteristic.MODEL_NUMBER,
    "serial_number_string": Characteristic.SERIAL_NUMBER,
    "firmware_revision_string": Characteristic.FIRMWARE_REVISION,
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "decode",
        parents=[common],
        help="decode one GATT value (hex) to JSON",
        description="Decode one characteristic value. CHARACTERISTIC is a 16-bit UUID (2a37, "
        "0x2A18) or a name: " + ", ".join(sorted(_names())) + ".",
    )
    p.add_argument("characteristic", metavar="CHARACTERISTIC")
    p.add_argument("hex", nargs="+", metavar="HEX",
                   help="the value as hex; spaces, colons and dashes are ignored")
    p.add_argument("--fhir", action="store_true",
                   help="print the FHIR R4 Observation that would be forwarded (exit 2 if "
                   "it would be refused as implausible)")
    p.add_argument("--patient", default="example-patient", metavar="P",
                   help="patient pseudonym for --fhir (default example-patient)")
    p.add_argument("--device", default="example-sensor", metavar="D",
                   help="sensor device id for --fhir (default example-sensor)")
    p.add_argument("--gateway", default="example-hub", metavar="G",
                   help="gateway device id for --fhir (default example-hub)")
    p.add_argument("--tz", default="UTC", metavar="ZONE",
                   help="the glucose meter's time zone for --fhir: UTC, +02:00 or a zone name "
                   "(default UTC)")
    p.set_defaults(func=_decode)


def _names() -> dict[str, Characteristic]:
    names = {c.label: c for c in Characteristic}
    names.update(_ALIASES)
    return names


def parse_characteristic(text: str) -> Characteristic:
    """A characteristic from a name or a 16-bit UUID (``2a37``, ``0x2A37``, 128-bit form)."""
    key = text.strip().lower().replace("-", "_")
    by_name = _names().get(key)
    if by_name is not None:
        return by_name
    short = short_uuid(text)
    if short is not None:
        try:
            return Characteristic(short)
        except ValueError:
            pass
    raise UsageError(f"unknown characteristic {text!r}; try a name such as heart_rate_measurement")


def parse_hex(parts: list[str]) -> bytes:
    """Bytes from hex text; whitespace, ``:`` and ``-`` separators and a ``0x`` prefix allowed."""
    text = "".join(parts).strip()
    if text.lower().startswith("0x"):
        text = text[2:]
    text = re.sub(r"[\s:\-]", "", text)
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", text):
        raise UsageError("HEX must be pairs of hex digits (spaces and colons are allowed)")
    return bytes.fromhex(text)


def parse_zone(text: str) -> tzinfo:
    """``UTC``, a fixed offset (``+02:00``) or an IANA zone name (``Europe/Berlin``)."""
    if text.upper() in ("UTC", "Z"):
        return UTC
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if m:
        offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        return timezone(-offset if m.group(1) == "-" else offset)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {text!r}") from None


# --- JSON views (the contract) ----------------------------------------------------------------

#: one JSON object of the contract (values: str, int, Decimal, bool, None, lists of them)
JsonObject = dict[str, object]


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def _heart_rate(data: bytes) -> JsonObject:
    m = decode_heart_rate_measurement(data)
    return {
        "heart_rate_bpm": m.heart_rate_bpm,
        "sensor_contact": m.sensor_contact.value,
        "energy_expended_kj": m.energy_expended_kj,
        "rr_intervals_s": list(m.rr_intervals_s),
        "rr_intervals_raw": list(m.rr_intervals_raw),
        "value_format": "uint16" if m.uint16_format else "uint8",
    }


def _glucose(data: bytes) -> JsonObject:
    m = decode_glucose_measurement(data)
    return {
        "sequence_number": m.sequence_number,
        "base_time": _iso(m.base_time),
        "device_time": _iso(m.device_time),
        "time_offset_min": m.time_offset_min,
        "concentration": m.concentration,
        "concentration_special": m.concentration_special.value
        if m.concentration_special else None,
        "unit": m.unit.value,
        "mg_dl": m.mg_dl,
        "mmol_l": m.mmol_l,
        "type": m.sample_type.value if m.sample_type else None,
        "sample_location": m.sample_location.value if m.sample_location else None,
        "status": [s.value for s in m.status],
        "status_present": m.status_bits is not None,
        "context_follows": m.context_follows,
    }


def _enum(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def _context(data: bytes) -> JsonObject:
    c = decode_glucose_context(data)
    out = {
        name: _enum(getattr(c, name))
        for name in (
            "sequence_number", "meal", "carbohydrate_id", "carbohydrate_kg", "tester", "health",
            "exercise_duration_s", "exercise_intensity_percent", "medication_id", "medication",
            "medication_unit", "hba1c_percent", "extended_flags",
        )
    }
    return out


def _feature(data: bytes) -> JsonObject:
    f = decode_glucose_feature(data)
    return {"features": [x.value for x in f.features], "bits": f.bits}


def _racp(data: bytes) -> JsonObject:
    msg = decode_racp(data)
    if isinstance(msg, RacpResponseCode):
        return {
            "opcode": "response_code",
            "request_opcode": msg.request_opcode.label,
            "response": msg.response.label,
        }
    if isinstance(msg, RacpNumberOfRecords):
        return {
            "opcode": "number_of_stored_records_response",
            "number_of_records": msg.number_of_records,
        }
    return {
        "opcode": msg.opcode.label,
        "operator": msg.operator.label,
        "filter_type": msg.filter_type.label if msg.filter_type else None,
        "operand": [_iso(v) if isinstance(v, datetime) else v for v in msg.operand],
    }


def _body_sensor_location(data: bytes) -> JsonObject:
    return {"body_sensor_location": decode_body_sensor_location(data).value}


def _control_point(data: bytes) -> JsonObject:
    return {"opcode": decode_heart_rate_control_point(data).name.lower()}


def _current_time(data: bytes) -> JsonObject:
    t = decode_current_time(data)
    return {
        "date_time": _iso(t.date_time),
        "exact_time": t.exact_time.isoformat(timespec="microseconds"),
        "day_of_week": t.day_of_week,
        "fractions256": t.fractions256,
        "adjust_reasons": [a.value for a in t.adjust_reasons],
    }


def _battery(data: bytes) -> JsonObject:
    return {"battery_level_percent": decode_battery_level(data)}


def _string(c: Characteristic) -> Callable[[bytes], JsonObject]:
    def view(data: bytes) -> JsonObject:
        return {"value": decode_utf8_string(c.label, data)}

    return view


VIEWS: dict[Characteristic, Callable[[bytes], JsonObject]] = {
    Characteristic.HEART_RATE_MEASUREMENT: _heart_rate,
    Characteristic.BODY_SENSOR_LOCATION: _body_sensor_location,
    Characteristic.HEART_RATE_CONTROL_POINT: _control_point,
    Characteristic.GLUCOSE_MEASUREMENT: _glucose,
    Characteristic.GLUCOSE_CONTEXT: _context,
    Characteristic.GLUCOSE_FEATURE: _feature,
    Characteristic.RACP: _racp,
    Characteristic.CURRENT_TIME: _current_time,
    Characteristic.BATTERY_LEVEL: _battery,
    **{
        c: _string(c)
        for c in (
            Characteristic.MANUFACTURER_NAME,
            Characteristic.MODEL_NUMBER,
            Characteristic.SERIAL_NUMBER,
            Characteristic.FIRMWARE_REVISION,
        )
    },
}


def decode_to_json(characteristic: Characteristic, data: bytes) -> JsonObject:
    """The ``edge decode`` JSON object of one value (raises MalformedPayload)."""
    out: JsonObject = {"characteristic": characteristic.label}
    out.update(VIEWS[characteristic](data))
    return out


_BT_ADDRESS = re.compile(r"(?i)[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _fhir(c: Characteristic, data: bytes, args: argparse.Namespace) -> Resource:
    from edge import fhir  # only --fhir needs these
    from edge.intake import plausibility

    received = datetime.now(UTC)
    reading: HeartRateReading | GlucoseReading
    if c is Characteristic.HEART_RATE_MEASUREMENT:
        reading = heart_rate_reading(
            decode_heart_rate_measurement(data),
            device_id=args.device, patient=args.patient, received_at=received,
        )
    elif c is Characteristic.GLUCOSE_MEASUREMENT:
        reading = glucose_reading(
            decode_glucose_measurement(data), None,
            device_id=args.device, patient=args.patient, received_at=received,
            clock_offset_s=0, local_tz=parse_zone(args.tz),
        )
    else:
        raise UsageError("--fhir needs heart_rate_measurement or glucose_measurement")
    # Only what intake would forward becomes an Observation (control solution is not patient
    # data, an impossible value is refused); Implausible says why.
    plausibility.check(reading)
    # A Bluetooth address never goes into FHIR: it becomes the same pseudonymous Device id
    # the forwarder would send.
    sensor = args.device
    if _BT_ADDRESS.fullmatch(sensor):
        sensor = fhir.sensor_device_id(sensor, args.gateway)
    return fhir.observation(reading, sensor_id=sensor, gateway_id=args.gateway)


# --- JSON with exact decimals ------------------------------------------------------------------


def dumps(obj: object) -> str:
    """JSON text in which a Decimal is a number with every digit kept (``5.50``, not ``5.5``)."""
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError("non-finite Decimal has no JSON form")
        return format(obj, "f")
    if isinstance(obj, dict):
        return "{" + ", ".join(
            f"{json.dumps(str(k))}: {dumps(v)}" for k, v in obj.items()
        ) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


def _decode(args: argparse.Namespace) -> int:
    c = parse_characteristic(args.characteristic)
    data = parse_hex(args.hex)
    try:
        obj = _fhir(c, data, args) if args.fhir else decode_to_json(c, data)
    except MalformedPayload as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_MALFORMED
    except Implausible as exc:
        print(f"edge: not forwarded ({exc.reason}): {exc}", file=sys.stderr)
        return EXIT_MALFORMED
    sys.stdout.write(dumps(obj) + "\n")
    return 0
