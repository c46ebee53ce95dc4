"""Checking a hub's FHIR R4 transaction Bundle (pure): structure, the codes this product sends,
one stable identifier per Observation, and every subject equal to the topic's patient.

The Bundle is judged as ``json.loads(payload, parse_float=Decimal)`` reads it (the last of
duplicate members wins), and each Observation is kept as the exact bytes the hub signed:

* fast path: msgspec decodes the Bundle into typed Structs, each ``resource`` kept as
  :class:`msgspec.Raw` (its bytes as signed), then that Raw into a typed Observation. It takes
  every Bundle whose members have the JSON types edge writes.
* exact path: a Bundle the typed view does not fit (a member of another JSON type, also as a
  duplicate; a digit run that ``json``'s int or ``Decimal`` parsing may refuse) is judged on
  ``json.loads``'s own result. Where the earlier code raised another error (``"subject": "x"``)
  it is ``invalid_fhir``.

Stricter than ``json.loads``: the payload must be UTF-8 (a UTF-8 BOM is allowed); NaN/Infinity
literals and lone surrogate escapes are refused (msgspec reads neither).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from msgspec import Raw, Struct

from clinic.errors import Rejected

RFC3986 = "urn:ietf:rfc:3986"
LOINC = "http://loinc.org"
#: LOINC codes edge sends: heart rate, glucose mass/volume, glucose moles/volume
KNOWN_CODES = {"8867-4": "heart_rate", "41653-7": "glucose", "14743-9": "glucose"}
MAX_ENTRIES = 5000
_UUID_URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STATUSES = ("final", "amended", "corrected", "preliminary")


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


# -- fast path: the typed view. A member of another JSON type raises ValidationError, which
# sends the whole Bundle to the exact path (so the typed view never has to guess). Field names
# are FHIR's; gc=False: these trees hold no cycles, and untracked Structs decode faster.

class _Ident(Struct, gc=False):
    system: str | None = None
    value: str | None = None


class _Coding(Struct, gc=False):
    system: str | None = None
    code: str | None = None


class _Concept(Struct, gc=False):
    coding: list[_Coding] | None = None


class _Ref(Struct, gc=False):
    reference: str | None = None


class _Quantity(Struct, gc=False):
    #: the number's token as written: msgspec's Decimal would also take a string ("72")
    value: Raw = Raw()
    code: str | None = None


class _Observation(Struct, tag="Observation", tag_field="resourceType", gc=False):
    status: str | None = None
    identifier: list[_Ident] | None = None
    code: _Concept | None = None
    subject: _Ref | None = None
    valueQuantity: _Quantity | None = None
    dataAbsentReason: _Concept | None = None
    effectiveDateTime: str | None = None


class _Device(Struct, tag="Device", tag_field="resourceType", gc=False):
    pass


class _Entry(Struct, gc=False):
    resource: Raw = Raw()  # empty: no resource member


class _Bundle(Struct, gc=False):
    resourceType: str | None = None
    type: str | None = None
    entry: list[_Entry] | None = None


_BUNDLE = msgspec.json.Decoder(_Bundle)
_RESOURCE = msgspec.json.Decoder(_Observation | _Device)
_NUMBER_START = frozenset(b"-0123456789")
_new = object.__new__
#: digits -> "0", to find digit runs at C speed: json refuses ints of more digits than
#: sys.get_int_max_str_digits() (>= 640), Decimal exponents from 10**18 up; msgspec skips
#: both in members it does not decode, so a payload with 18 digits in a row takes the exact path
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 18


def _fast(payload: bytes, patient: str) -> list[Obs] | None:
    """The Observations, or None when the payload does not fit the typed view."""
    try:
        doc = _BUNDLE.decode(payload)
    except msgspec.ValidationError:
        return None
    if doc.resourceType != "Bundle":
        raise _invalid("not a Bundle")
    if doc.type != "transaction":
        raise _invalid("not a transaction Bundle")
    entries = doc.entry
    if not entries or len(entries) > MAX_ENTRIES:
        raise _invalid("entry list missing, empty or too long")
    out: list[Obs] = []
    for e in entries:
        if not e.resource:
            raise _invalid("entry without a resource")
        try:
            res = _RESOURCE.decode(e.resource)
        except msgspec.ValidationError:  # e.g. not an object, another resourceType
            return None
        if type(res) is _Observation:
            out.append(_typed_observation(res, patient, bytes(e.resource)))
    if not out:
        raise _invalid("no Observation")
    return out


def _typed_observation(res: _Observation, patient: str, blob: bytes) -> Obs:
    """:func:`_observation`'s rules on the typed view (the same checks in the same order)."""
    if res.status not in _STATUSES:
        raise _invalid("Observation status")
    ident, found = "", 0
    for i in res.identifier or ():
        if i.system == RFC3986 and i.value is not None and _UUID_URN.match(i.value):
            ident, found = i.value, found + 1
    if found != 1:
        raise _invalid("Observation needs exactly one urn:uuid identifier")
    code = None
    for c in (res.code.coding if res.code is not None else None) or ():
        if c.system == LOINC and c.code in KNOWN_CODES:
            code = c.code
            break
    if code is None:
        raise _invalid("Observation code is not one this product sends")
    if res.subject is None or res.subject.reference != f"Patient/{patient}":
        raise Rejected("subject_mismatch", "an Observation's subject is not the topic's patient")
    vq = res.valueQuantity
    value = unit = absent = None
    if vq is not None:
        token = bytes(vq.value)
        if not token or token[0] not in _NUMBER_START:  # a string, true, null … or missing
            raise _invalid("valueQuantity.value is not a number")
        # json.loads reads "-0" as int 0: Decimal(0), not Decimal("-0")
        value = Decimal(0) if token == b"-0" else Decimal(token.decode())
        unit = vq.code
    elif res.dataAbsentReason is None:
        raise _invalid("Observation has neither a value nor a dataAbsentReason")
    else:
        for c in res.dataAbsentReason.coding or ():
            if c.code is not None:
                absent = c.code
                break
    t = _parse_time(res.effectiveDateTime)
    # Obs(...) sets each field through object.__setattr__ (frozen): a fifth of this path's
    # time. Filling a new instance's __dict__ makes the same object (a test pins this).
    obs = _new(Obs)
    obs.__dict__.update(identifier=ident.removeprefix("urn:uuid:"), patient=patient, code=code,
                        kind=KNOWN_CODES[code], effective_at=t, value=value, unit=unit,
                        resource=blob, absent=absent)
    return obs


# -- exact path: json.loads's view, for payloads the typed view does not fit

class _Outer(Struct):
    entry: Raw = Raw()


class _Inner(Struct):
    resource: Raw = Raw()


def _exact(payload: bytes, patient: str) -> list[Obs]:
    try:
        doc = json.loads(payload.decode(), parse_float=Decimal)
        msgspec.json.decode(payload, type=Raw)  # msgspec must read it too (stricter)
    except (ValueError, msgspec.DecodeError, RecursionError, ArithmeticError) as exc:
        # ValueError: not JSON, or an int of too many digits; ArithmeticError: a Decimal
        # exponent out of range; DecodeError is no ValueError before msgspec 0.19
        raise _invalid("not JSON") from exc
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise _invalid("not a Bundle")
    if doc.get("type") != "transaction":
        raise _invalid("not a transaction Bundle")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise _invalid("entry list missing, empty or too long")
    # the same members json.loads kept (Raw takes any JSON value, the last duplicate wins)
    raws = msgspec.json.decode(msgspec.json.decode(payload, type=_Outer).entry, type=list[Raw])
    out: list[Obs] = []
    for e, raw in zip(entries, raws, strict=True):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            raise _invalid("entry without a resource")
        kind = res.get("resourceType")
        if kind == "Observation":
            blob = bytes(msgspec.json.decode(raw, type=_Inner).resource)
            out.append(_observation(res, patient, blob))
        elif kind != "Device":
            raise _invalid("unexpected resource type")
    if not out:
        raise _invalid("no Observation")
    return out


def _dict(res: dict[str, Any], key: str) -> dict[str, Any]:
    """``res[key] or {}``; a value of another type (which used to raise) is invalid."""
    v = res.get(key) or {}
    if not isinstance(v, dict):
        raise _invalid(f"Observation {key} is not an object")
    return v


def _list(v: Any, what: str) -> list[Any]:
    """``v or []`` where only a list's items can count (a dict or str iterates to nothing that
    does); a number or ``true``, which cannot be iterated (and used to raise), is invalid."""
    if isinstance(v, list):
        return v
    if not v or isinstance(v, dict | str):
        return []
    raise _invalid(f"Observation {what} is not a list")


def _observation(res: dict[str, Any], patient: str, blob: bytes) -> Obs:
    if res.get("status") not in _STATUSES:
        raise _invalid("Observation status")
    idents = [i for i in _list(res.get("identifier"), "identifier") if isinstance(i, dict)
              and i.get("system") == RFC3986 and isinstance(i.get("value"), str)
              and _UUID_URN.match(i["value"])]
    if len(idents) != 1:
        raise _invalid("Observation needs exactly one urn:uuid identifier")
    codings = _list(_dict(res, "code").get("coding"), "coding")
    loinc = [c.get("code") for c in codings if isinstance(c, dict) and c.get("system") == LOINC]
    # the first known code; an unhashable one before it (which used to raise) is invalid
    code = next((c for c in loinc if isinstance(c, list | dict) or c in KNOWN_CODES), None)
    if not isinstance(code, str):
        raise _invalid("Observation code is not one this product sends")
    if _dict(res, "subject").get("reference") != f"Patient/{patient}":
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
        dar = [c.get("code") for c in _list(res["dataAbsentReason"].get("coding"), "coding")
               if isinstance(c, dict) and isinstance(c.get("code"), str)]
        absent = dar[0] if dar else None
    return Obs(idents[0]["value"].removeprefix("urn:uuid:"), patient, code, KNOWN_CODES[code],
               _parse_time(res.get("effectiveDateTime")), value, unit, blob, absent)


def check_bundle(payload: bytes, patient: str) -> list[Obs]:
    """The Observations of a valid Bundle about ``patient``; Rejected ``invalid_fhir`` or
    ``subject_mismatch`` otherwise."""
    payload = payload.removeprefix(b"\xef\xbb\xbf")  # json.loads allows a UTF-8 BOM on bytes
    try:
        if not payload.isascii():  # msgspec does not check the UTF-8 of members it skips
            payload.decode()
        fast = None if _LONG_RUN in payload.translate(_ZEROS) else _fast(payload, patient)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _invalid("not JSON") from exc
    return fast if fast is not None else _exact(payload, patient)
