"""The pure ingest judgement: topics, Bundles, envelopes against enrolment (no I/O)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clinic import keys
from clinic.errors import Rejected
from clinic.ingest.bundle import check_bundle
from clinic.ingest.verify import Topic, Verifier, parse_status, parse_topic
from edge import fhir
from edge.uplink.pki import Issued, issue, make_ca
from tests.clinic.support import sealed_bundle
from tests.support.uplink_fakes import make_readings

NOW = dt.datetime.now(dt.UTC)
TOPIC = "edge/v1/hub-1/obs/patient-a"


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def hub(ca: Issued) -> Issued:
    return issue(ca, "hub-1")


@pytest.fixture(scope="module")
def ring() -> keys.KeyRing:
    return keys.initial_ring()


def verifier(ring: keys.KeyRing, ca: Issued) -> Verifier:
    return Verifier("edge/v1", ring, [ca.cert], 1024 * 1024)


def judge(v: Verifier, payload: bytes, topic: str = TOPIC, *, hubs: dict[str, str] | None = None,
          patients: dict[str, str] | None = None) -> list[str]:
    h = {"hub-1": "active"} if hubs is None else hubs
    p = {"patient-a": "hub-1"} if patients is None else patients
    acc = v.observations(topic, payload, now=NOW, hub_state=h.get, patient_hub=p.get)
    return [o.identifier for o in acc.observations]


def reason(fn: object) -> str:
    assert callable(fn)
    with pytest.raises(Rejected) as err:
        fn()
    return err.value.reason


def test_a_real_bundle_is_accepted_with_every_identifier(
    ring: keys.KeyRing, ca: Issued, hub: Issued
) -> None:
    readings = make_readings(12, ("patient-a",))
    token = sealed_bundle(readings, "hub-1", hub, ring.e2e[ring.current_e2e].public_key())
    assert judge(verifier(ring, ca), token) == [r.id for r in readings]


def test_glucose_keeps_its_digits(ring: keys.KeyRing, ca: Issued, hub: Issued) -> None:
    readings = [r for r in make_readings(10, ("patient-a",)) if r.kind == "glucose"]
    obs = check_bundle(fhir.bundle_bytes(readings, hub_id="hub-1"), "patient-a")
    assert [o.kind for o in obs] == ["glucose", "glucose"]
    assert all(o.code == "41653-7" and o.unit == "mg/dL" for o in obs)
    assert json.loads(obs[0].resource)["subject"] == {"reference": "Patient/patient-a"}


def test_rejections_by_reason(ring: keys.KeyRing, ca: Issued, hub: Issued) -> None:
    v = verifier(ring, ca)
    pub = ring.e2e[ring.current_e2e].public_key()
    good = sealed_bundle(make_readings(3, ("patient-a",)), "hub-1", hub, pub)
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert reason(lambda: judge(v, b"garbage")) == "bad_envelope"
    assert reason(lambda: judge(v, sealed_bundle(make_readings(3, ("patient-a",)), "hub-1",
                                                 hub, stranger))) == "bad_envelope"
    rogue = issue(make_ca("rogue"), "hub-1")
    assert reason(lambda: judge(v, sealed_bundle(make_readings(3, ("patient-a",)), "hub-1",
                                                 rogue, pub))) == "bad_signature"
    assert reason(lambda: judge(v, good, "edge/v1/hub-2/obs/patient-a")) == "hub_mismatch"
    assert reason(lambda: judge(v, good, hubs={})) == "unknown_hub"
    assert reason(lambda: judge(v, good, hubs={"hub-1": "revoked"})) == "hub_revoked"
    assert reason(lambda: judge(v, good, patients={})) == "patient_not_enrolled"
    assert reason(lambda: judge(v, good, patients={"patient-a": "hub-9"})) == \
        "patient_not_enrolled"
    # a bundle about patient-b sent on patient-a's topic
    other = sealed_bundle(make_readings(3, ("patient-b",)), "hub-1", hub, pub)
    assert reason(lambda: judge(v, other)) == "subject_mismatch"
    assert reason(lambda: judge(v, b"x" * (1024 * 1024 + 1))) == "oversize"
    assert reason(lambda: judge(v, good, "elsewhere/hub-1/obs/patient-a")) == "bad_topic"


def test_retired_e2e_key_still_opens(ca: Issued, hub: Issued) -> None:
    old = keys.initial_ring()
    new = keys.rotated(old)
    token = sealed_bundle(make_readings(2, ("patient-a",)), "hub-1", hub,
                          old.e2e[old.current_e2e].public_key())
    assert len(judge(verifier(new, ca), token)) == 2


@pytest.mark.parametrize("doc", [
    {"resourceType": "Patient"},
    {"resourceType": "Bundle", "type": "batch", "entry": [{}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": []},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {
        "resourceType": "Observation", "status": "final"}}]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {
        "resourceType": "MedicationRequest"}}]},
])
def test_invalid_bundles(doc: dict[str, object]) -> None:
    assert reason(lambda: check_bundle(json.dumps(doc).encode(), "patient-a")) == "invalid_fhir"


def test_unknown_code_and_naive_time_are_invalid() -> None:
    obs = json.loads(fhir.bundle_bytes(make_readings(1, ("patient-a",)), hub_id="hub-1"))
    res = obs["entry"][-1]["resource"]
    res["code"]["coding"][0]["code"] = "1234-5"
    assert reason(lambda: check_bundle(json.dumps(obs).encode(), "patient-a")) == "invalid_fhir"
    res["code"]["coding"][0]["code"] = "8867-4"
    res["effectiveDateTime"] = "2026-03-15T08:30:00"
    assert reason(lambda: check_bundle(json.dumps(obs).encode(), "patient-a")) == "invalid_fhir"


def test_topics() -> None:
    assert parse_topic("edge/v1/h/obs/p", "edge/v1") == Topic("h", "obs", "p")
    assert parse_topic("edge/v1/h/status", "edge/v1") == Topic("h", "status")
    for bad in ("edge/v1/h/obs", "edge/v1/h/obs/p/x", "edge/v1//status", "other/h/status"):
        assert reason(lambda b=bad: parse_topic(b, "edge/v1")) == "bad_topic"


def test_status_documents() -> None:
    t = Topic("hub-1", "status")
    s = parse_status(t, b'{"hub":"hub-1","state":"online","at":"2026-01-01T00:00:00Z",'
                        b'"queue_depth":7,"cert_days_left":30.5}', NOW)
    assert (s.online, s.queue_depth, s.cert_days_left) == (True, 7, 30.5)
    assert s.at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    off = parse_status(t, b'{"hub":"hub-1","state":"offline"}', NOW)
    assert (off.online, off.at) == (False, NOW)
    assert reason(lambda: parse_status(t, b"[]", NOW)) == "invalid_status"


def test_stored_resources_are_edges_own_json_with_every_digit() -> None:
    readings = make_readings(10, ("patient-a",))
    doc = json.loads(fhir.bundle_bytes(readings, hub_id="hub-a"), parse_float=Decimal)
    doc["entry"][-1]["resource"]["valueQuantity"]["value"] = Decimal("5.50")
    doc["entry"][-1]["resource"]["note"] = [{"text": "é \"quoted\" <x>"}]
    payload = fhir.to_json(doc)
    obs = check_bundle(payload, "patient-a")
    expected = [fhir.to_json(e["resource"]) for e in doc["entry"]
                if e["resource"]["resourceType"] == "Observation"]
    assert [o.resource for o in obs] == expected
    assert b'"value":5.50' in obs[-1].resource
