"""Ingest reads a Bundle as ``json.loads`` does and stores each Observation's bytes exactly as
the hub signed them."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest

from clinic.errors import Rejected
from clinic.ingest.bundle import _Outline, check_bundle
from edge import fhir
from tests.support.uplink_fakes import make_readings

COMPACT = fhir.bundle_bytes(make_readings(4, ("patient-a",)), hub_id="hub-1").decode()
SEEDS = [
    COMPACT,
    json.dumps(json.loads(COMPACT), indent=2),
    '{"entry":[1,{"resource":{}},{"resource":1,"resource":{"a":2.50}}]}',
    '{"entry":[],"entry":[{"resource":{"x":1}}]}', '{"entry":[{"resource":[]}],"entry":7}',
    ' {"a" : [1, {"b": null}] } ', "[]", "{}", '"x"', "", "{", '{"entry":[', "\ufeff{}",
]


def mutations(rnd: random.Random, text: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        chars = list(text)
        for _ in range(rnd.randint(0, 3)):
            if not chars:
                break
            at = rnd.randrange(len(chars))
            op = rnd.randrange(3)
            if op == 0:
                chars[at] = rnd.choice('{}[],:" \n\t0aé\\')
            elif op == 1:
                del chars[at]
            else:
                chars.insert(at, rnd.choice('{}[],:" \n0'))
        out.append("".join(chars))
    return out


def loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError):
        return False, None


def outline(text: str) -> tuple[bool, Any, list[tuple[int, int] | None]]:
    o = _Outline()
    try:
        return True, o.parse(text), o.spans
    except (ValueError, StopIteration, IndexError, RecursionError):
        return False, None, []


def test_the_outline_parses_exactly_what_json_loads_parses() -> None:
    rnd = random.Random(7)
    texts = [m for seed in SEEDS for m in [seed, *mutations(rnd, seed, 400)]]
    both = 0
    for text in texts:
        ok, doc = loads(text)
        got_ok, got, spans = outline(text)
        assert (got_ok, got) == (ok, doc), text
        if ok and isinstance(doc, dict) and isinstance(doc.get("entry"), list):
            both += 1
            for entry, span in zip(doc["entry"], spans, strict=True):
                if isinstance(entry, dict) and "resource" in entry:
                    assert span is not None
                    assert json.loads(text[span[0]:span[1]], parse_float=Decimal) == \
                        entry["resource"]
                else:
                    assert span is None
    assert both > 100  # the span checks ran on many documents, not a handful


def test_stored_bytes_are_the_signed_bytes_whatever_the_layout() -> None:
    doc = json.loads(COMPACT, parse_float=Decimal)
    doc["entry"][-1]["resource"]["valueQuantity"]["value"] = Decimal("5.50")
    doc["entry"][-1]["resource"]["note"] = [{"text": "é \"quoted\" <x>"}]
    # an indented document with a non-ASCII character and a Decimal written as sent
    payload = json.dumps(doc, indent=1, ensure_ascii=False, default=str).replace(
        '"5.50"', "5.50").encode()
    obs = check_bundle(payload, "patient-a")
    resources = [e["resource"] for e in doc["entry"]
                 if e["resource"]["resourceType"] == "Observation"]
    assert len(obs) == len(resources) == 4
    at = 0
    for o, res in zip(obs, resources, strict=True):
        at = payload.index(o.resource, at)  # a slice of the payload, in order
        assert payload[at - 1:at] == b" " and o.resource.startswith(b"{\n")
        assert json.loads(o.resource, parse_float=Decimal) == res
    assert b'"value": 5.50' in obs[-1].resource
    assert "é".encode() in obs[-1].resource


@pytest.mark.parametrize("text", ['{"resourceType":"Bundle","type":"transaction","entry":[',
                                  '{"resourceType":"Bundle","type":"transaction"} x',
                                  '{"resourceType":"Bundle","entry":[{"resource":{]}'])
def test_truncated_or_trailing_text_is_invalid(text: str) -> None:
    with pytest.raises(Rejected) as err:
        check_bundle(text.encode(), "patient-a")
    assert err.value.reason == "invalid_fhir"
