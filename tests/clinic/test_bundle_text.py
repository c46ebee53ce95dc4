"""Ingest stores each Observation's bytes exactly as the hub signed them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from clinic.errors import Rejected
from clinic.ingest.bundle import check_bundle
from edge import fhir
from tests.support.uplink_fakes import make_readings

COMPACT = fhir.bundle_bytes(make_readings(4, ("patient-a",)), hub_id="hub-1").decode()


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
