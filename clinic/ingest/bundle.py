"""Checking a hub's FHIR R4 transaction Bundle (pure): structure, the codes this product sends,
one stable identifier per Observation, and every subject equal to the topic's patient."""

from __future__ import annotations

import _json
import datetime as dt
import json
import json.scanner
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

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


#: the C scanner behind ``json.loads``: ``scan(text, i)`` is (value, end) of the JSON value at
#: ``i``. Only the Bundle's two outer levels are walked by hand (:class:`_Outline`), so that each
#: resource's exact text is known; everything inside a resource is parsed by the scanner.
_SCAN = json.scanner.make_scanner(cast(Any, json.JSONDecoder(parse_float=Decimal)))
_SCANSTRING = _json.scanstring
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = frozenset(" \t\n\r")

Span = tuple[int, int]
#: parses the JSON value at ``s[i]``: (value, end)
Parser = Callable[[str, int], tuple[Any, int]]


def _ws(s: str, i: int) -> int:
    """The index of the first non-whitespace character at or after ``i`` (JSON's four)."""
    if i < len(s) and s[i] in _WS_CHARS:  # a compact Bundle has none: skip the regex
        m = _WS.match(s, i)
        assert m is not None  # the pattern matches the empty string
        return m.end()
    return i


class _Outline:
    """``json.loads`` of a Bundle (same grammar, same last-member-wins duplicates) that also
    records, per entry, where its ``resource`` value lies in the text: ingest stores those
    bytes as the hub signed them instead of writing the JSON again (which cost a tenth of a
    worker's CPU). Every reader of stored rows parses them with the same ``json`` semantics
    ingest checked them with."""

    def __init__(self) -> None:
        #: entry index -> span of its resource, from the last ``entry`` member parsed
        self.spans: list[Span | None] = []

    def parse(self, text: str) -> Any:
        """The document; ValueError, StopIteration or IndexError when it is not JSON."""
        i = _ws(text, 0)
        value, end = self._object(text, i, "entry", self._entries) \
            if text[i] == "{" else _SCAN(text, i)
        if _ws(text, end) != len(text):
            raise ValueError("extra data after the document")
        return value

    @staticmethod
    def _object(s: str, i: int, name: str, special: Parser) -> tuple[dict[str, Any], int]:
        """The object at ``s[i] == "{"``; ``special`` parses the value of members ``name``.
        (Whitespace is skipped only where present: this loop runs ~150 times a Bundle.)"""
        out: dict[str, Any] = {}
        i += 1
        if s[i] in _WS_CHARS:
            i = _ws(s, i)
        if s[i] == "}":
            return out, i + 1
        while True:
            if s[i] != '"':
                raise ValueError("member name expected")
            key, i = _SCANSTRING(s, i + 1)
            if s[i] in _WS_CHARS:
                i = _ws(s, i)
            if s[i] != ":":
                raise ValueError("':' expected")
            i += 1
            if s[i] in _WS_CHARS:
                i = _ws(s, i)
            out[key], i = special(s, i) if key == name else _SCAN(s, i)
            if s[i] in _WS_CHARS:
                i = _ws(s, i)
            if s[i] == "}":
                return out, i + 1
            if s[i] != ",":
                raise ValueError("',' or '}' expected")
            i += 1
            if s[i] in _WS_CHARS:
                i = _ws(s, i)

    def _entries(self, s: str, i: int) -> tuple[Any, int]:
        if s[i] != "[":
            self.spans = []
            return _SCAN(s, i)  # not a list: check_bundle refuses it
        out: list[Any] = []
        spans: list[Span | None] = []
        i = _ws(s, i + 1)
        if s[i] != "]":
            while True:
                found: list[Span] = []
                if s[i] == "{":
                    value, i = self._object(s, i, "resource", self._resource(found))
                else:
                    value, i = _SCAN(s, i)
                out.append(value)
                spans.append(found[-1] if found else None)
                if s[i] in _WS_CHARS:
                    i = _ws(s, i)
                if s[i] == "]":
                    break
                if s[i] != ",":
                    raise ValueError("',' or ']' expected")
                i = _ws(s, i + 1)
        self.spans = spans
        return out, i + 1

    @staticmethod
    def _resource(found: list[Span]) -> Parser:
        """A parser of an entry's ``resource`` that notes where the value lies."""
        def parse(s: str, i: int) -> tuple[Any, int]:
            value, end = _SCAN(s, i)
            found.append((i, end))
            return value, end
        return parse


def _observation(res: dict[str, Any], patient: str, blob: bytes) -> Obs:
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
    return Obs(idents[0]["value"].removeprefix("urn:uuid:"), patient, code, KNOWN_CODES[code],
               _parse_time(res.get("effectiveDateTime")), value, unit, blob, absent)


def check_bundle(payload: bytes, patient: str) -> list[Obs]:
    """The Observations of a valid Bundle about ``patient``; Rejected ``invalid_fhir`` or
    ``subject_mismatch`` otherwise."""
    outline = _Outline()
    try:
        # as json.loads decodes bytes (UTF-8, or UTF-16/32 by their BOM-less detection)
        text = payload.decode(json.detect_encoding(payload), "surrogatepass")
        doc = outline.parse(text)
    except (ValueError, UnicodeDecodeError, RecursionError, StopIteration, IndexError) as exc:
        # StopIteration: no value where one must be; IndexError: the text ends too early
        raise _invalid("not JSON") from exc
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise _invalid("not a Bundle")
    if doc.get("type") != "transaction":
        raise _invalid("not a transaction Bundle")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise _invalid("entry list missing, empty or too long")
    out: list[Obs] = []
    for e, span in zip(entries, outline.spans, strict=True):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict) or span is None:
            raise _invalid("entry without a resource")
        kind = res.get("resourceType")
        if kind == "Observation":
            # the resource's bytes as signed: every digit the device sent ("5.50") kept
            blob = text[span[0]:span[1]].encode("utf-8", "surrogatepass")
            out.append(_observation(res, patient, blob))
        elif kind != "Device":
            raise _invalid("unexpected resource type")
    if not out:
        raise _invalid("no Observation")
    return out
