"""Checking a hub's FHIR R4 transaction Bundle (pure): structure, the codes this product sends,
one stable identifier per Observation, and every subject equal to the topic's patient."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clinic.errors import Rejected

RFC3986 = "urn:ietf:rfc:3986"
LOINC = "http://loinc.org"
#: LOINC codes edge sends: heart rate, glucose mass/volume, glucose moles/volume
KNOWN_CODES = {"8867-4": "heart_rate", "41653-7": "glucose", "14743-9": "glucose"}
MAX_ENTRIES = 5000
_UUID_URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Obs:
    """One Observation as ingest stores it: index columns in clear, the resource as JSON."""

    identifier: str
    patient: str
    code: str
    kind: str
    effective_at: dt.datetime
    value: Decimal | None
    unit: str | None
    resource: bytes
    #: the dataAbsentReason code when there is no value (``positive-infinity`` for a meter's HI)
    absent: str | None = None


def _invalid(why: str) -> Rejected:
    return Rejected("invalid_fhir", f"invalid Bundle: {why}")


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise _invalid("effectiveDateTime missing")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _invalid("effectiveDateTime unreadable") from exc
    if t.tzinfo is None:
        raise _invalid("effectiveDateTime without a time zone")
    return t


class _Writer:
    """Compact UTF-8 JSON of one Bundle's resources, byte for byte what ``edge.fhir.to_json``
    writes (Decimal values become JSON numbers with every digit kept: ``5.50`` stays
    ``5.50``), with one encoder and one random marker per Bundle instead of per resource.

    Decimals are first written as marked strings, then the quotes and markers are cut away;
    the marker is a random UUID drawn after the Bundle was received, so no input string can
    forge one."""

    def __init__(self) -> None:
        mark = uuid.uuid4().hex
        self._open, self._close = f'"{mark}<', f'>{mark}"'

        def default(o: object) -> str:
            if isinstance(o, Decimal) and o.is_finite():
                return f"{mark}<{o:f}>{mark}"
            raise TypeError(f"{type(o).__name__} value cannot be written as FHIR JSON")

        self._encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                        default=default).encode

    def __call__(self, obj: object) -> bytes:
        text = self._encode(obj)
        if self._open in text:
            text = text.replace(self._open, "").replace(self._close, "")
        return text.encode()


def _observation(res: dict[str, Any], patient: str, to_json: _Writer) -> Obs:
    if res.get("status") not in ("final", "amended", "corrected", "preliminary"):
        raise _invalid("Observation status")
    idents = [i for i in res.get("identifier") or [] if isinstance(i, dict)
              and i.get("system") == RFC3986 and isinstance(i.get("value"), str)
              and _UUID_URN.match(i["value"])]
    if len(idents) != 1:
        raise _invalid("Observation needs exactly one urn:uuid identifier")
    codings = (res.get("code") or {}).get("coding") or []
    loinc = [c.get("code") for c in codings if isinstance(c, dict) and c.get("system") == LOINC]
    code = next((c for c in loinc if c in KNOWN_CODES), None)
    if code is None:
        raise _invalid("Observation code is not one this product sends")
    subject = (res.get("subject") or {}).get("reference")
    if subject != f"Patient/{patient}":
        raise Rejected("subject_mismatch", "an Observation's subject is not the topic's patient")
    vq = res.get("valueQuantity")
    value: Decimal | None = None
    unit: str | None = None
    if isinstance(vq, dict):
        v = vq.get("value")
        if isinstance(v, bool) or not isinstance(v, int | Decimal):
            raise _invalid("valueQuantity.value is not a number")
        value, unit = Decimal(v), vq.get("code") if isinstance(vq.get("code"), str) else None
    elif not isinstance(res.get("dataAbsentReason"), dict):
        raise _invalid("Observation has neither a value nor a dataAbsentReason")
    absent: str | None = None
    if value is None:
        dar = [c.get("code") for c in res["dataAbsentReason"].get("coding") or []
               if isinstance(c, dict) and isinstance(c.get("code"), str)]
        absent = dar[0] if dar else None
    blob = to_json(res)  # keeps every digit the device sent ("5.50")
    return Obs(idents[0]["value"].removeprefix("urn:uuid:"), patient, code, KNOWN_CODES[code],
               _parse_time(res.get("effectiveDateTime")), value, unit, blob, absent)


def check_bundle(payload: bytes, patient: str) -> list[Obs]:
    """The Observations of a valid Bundle about ``patient``; Rejected ``invalid_fhir`` or
    ``subject_mismatch`` otherwise."""
    try:
        doc = json.loads(payload, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _invalid("not JSON") from exc
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise _invalid("not a Bundle")
    if doc.get("type") != "transaction":
        raise _invalid("not a transaction Bundle")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise _invalid("entry list missing, empty or too long")
    out: list[Obs] = []
    to_json = _Writer()
    for e in entries:
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            raise _invalid("entry without a resource")
        kind = res.get("resourceType")
        if kind == "Observation":
            out.append(_observation(res, patient, to_json))
        elif kind != "Device":
            raise _invalid("unexpected resource type")
    if not out:
        raise _invalid("no Observation")
    return out
