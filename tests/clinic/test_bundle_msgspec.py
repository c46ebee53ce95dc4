"""check_bundle (msgspec) judges a Bundle exactly as the json.loads rules it replaced: a
reference built on ``json.loads`` is run side by side over valid, mutated and random Bundles.

The only allowed difference is the documented stricter set: a payload that is not UTF-8, or
that holds NaN/Infinity or a lone surrogate escape, may be refused (``invalid_fhir``) where
``json.loads`` read it. Where the old rules raised something else (an unguarded ``.get`` on a
non-object, a Decimal exponent out of range), the new check must refuse with ``invalid_fhir``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import random
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinic.errors import Rejected
from clinic.ingest import bundle
from clinic.ingest.bundle import KNOWN_CODES, LOINC, MAX_ENTRIES, RFC3986, Obs, check_bundle
from edge import fhir
from tests.support.uplink_fakes import make_readings

PATIENT = "patient-a"
UUID = "urn:uuid:0e833ed2-f6ff-59c2-9d8a-ed782de45f86"
BOM = b"\xef\xbb\xbf"
HYPOTHESIS = settings(max_examples=300, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


def edge_bundle(n: int = 5, start: int = 0, patient: str = PATIENT) -> bytes:
    return fhir.bundle_bytes(make_readings(n, (patient,), start=start), hub_id="hub-1")


# -- the reference: the previous module's rules, on json.loads's result -----------------

View = tuple[Any, ...]
Verdict = tuple[str, Any]  # ("ok", [(view, resource)]) | ("rejected", reason) | ("crashed", exc)


def _ref_invalid(why: str) -> Rejected:
    return Rejected("invalid_fhir", why)


def _ref_observation(res: dict[str, Any], patient: str) -> View:
    if res.get("status") not in ("final", "amended", "corrected", "preliminary"):
        raise _ref_invalid("status")
    idents = [i for i in res.get("identifier") or [] if isinstance(i, dict)
              and i.get("system") == RFC3986 and isinstance(i.get("value"), str)
              and bundle._UUID_URN.match(i["value"])]
    if len(idents) != 1:
        raise _ref_invalid("identifier")
    codings = (res.get("code") or {}).get("coding") or []
    loinc = [c.get("code") for c in codings if isinstance(c, dict) and c.get("system") == LOINC]
    code = next((c for c in loinc if c in KNOWN_CODES), None)
    if code is None:
        raise _ref_invalid("code")
    if (res.get("subject") or {}).get("reference") != f"Patient/{patient}":
        raise Rejected("subject_mismatch", "subject")
    vq = res.get("valueQuantity")
    value: Decimal | None = None
    unit: str | None = None
    if isinstance(vq, dict):
        v = vq.get("value")
        if isinstance(v, bool) or not isinstance(v, int | Decimal):
            raise _ref_invalid("value")
        value, unit = Decimal(v), vq.get("code") if isinstance(vq.get("code"), str) else None
    elif not isinstance(res.get("dataAbsentReason"), dict):
        raise _ref_invalid("neither")
    absent: str | None = None
    if value is None:
        dar = [c.get("code") for c in res["dataAbsentReason"].get("coding") or []
               if isinstance(c, dict) and isinstance(c.get("code"), str)]
        absent = dar[0] if dar else None
    when = res.get("effectiveDateTime")
    if not isinstance(when, str):
        raise _ref_invalid("time")
    try:
        t = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _ref_invalid("time") from exc
    if t.tzinfo is None:
        raise _ref_invalid("time")
    return (idents[0]["value"].removeprefix("urn:uuid:"), patient, code, KNOWN_CODES[code], t,
            t.utcoffset(), None if value is None else value.as_tuple(), unit, absent)


def reference(payload: bytes, patient: str = PATIENT) -> Verdict:
    try:
        doc = json.loads(payload, parse_float=Decimal)  # bytes: json's own encoding rules
    except (ValueError, RecursionError):
        return "rejected", "invalid_fhir"
    except ArithmeticError as exc:  # the old rules let Decimal's InvalidOperation out
        return "crashed", exc
    try:
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            raise _ref_invalid("not a Bundle")
        if doc.get("type") != "transaction":
            raise _ref_invalid("not a transaction")
        entries = doc.get("entry")
        if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
            raise _ref_invalid("entries")
        out: list[tuple[View, dict[str, Any]]] = []
        for e in entries:
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict):
                raise _ref_invalid("no resource")
            kind = res.get("resourceType")
            if kind == "Observation":
                out.append((_ref_observation(res, patient), res))
            elif kind != "Device":
                raise _ref_invalid("resource type")
        if not out:
            raise _ref_invalid("no Observation")
        return "ok", out
    except Rejected as exc:
        return "rejected", exc.reason
    except (AttributeError, TypeError) as exc:  # e.g. "subject": "x", "identifier": 5
        return "crashed", exc


def view(o: Obs) -> View:
    return (o.identifier, o.patient, o.code, o.kind, o.effective_at, o.effective_at.utcoffset(),
            None if o.value is None else o.value.as_tuple(), o.unit, o.absent)


def msgspec_stricter(payload: bytes) -> bool:
    """The documented cases msgspec may refuse although json.loads reads them."""
    try:
        text = payload.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return re.search(r"NaN|Infinity|\\u[dD][89a-fA-F]", text) is not None


def judge(payload: bytes, patient: str = PATIENT) -> tuple[str, Any]:
    try:
        return "ok", check_bundle(payload, patient)
    except Rejected as exc:  # anything else fails the test
        return "rejected", exc.reason


def assert_same(payload: bytes) -> str:
    """check_bundle and the reference agree on ``payload``; the reference's verdict kind."""
    want = reference(payload)
    got = judge(payload)
    if want[0] == "crashed":
        assert got == ("rejected", "invalid_fhir"), (payload, want)
    elif got[0] == "rejected" and got != want:
        assert got[1] == "invalid_fhir" and msgspec_stricter(payload), (payload, want, got)
    elif want[0] == "rejected":
        assert got == want, (payload, got)
    else:
        assert got[0] == "ok"
        obs: list[Obs] = got[1]
        assert [view(o) for o in obs] == [v for v, _ in want[1]], payload
        body = payload.removeprefix(BOM)
        at = 0
        for o, (_, res) in zip(obs, want[1], strict=True):
            at = body.index(o.resource, at)  # a slice of what was signed, in order
            assert json.loads(o.resource, parse_float=Decimal) == res
    return want[0]


# -- writing documents: duplicate members, raw tokens, random whitespace -----------------

class Dup(list[tuple[str, Any]]):
    """An object written member by member, duplicates kept (json.loads keeps the last)."""


class Tok(str):
    """A JSON token written as is (``-0``, ``1E+2``, ``NaN``)."""


def write(v: Any, rnd: random.Random | None = None) -> str:
    def ws() -> str:
        return rnd.choice(("", "", "", " ", "\n  ", "\t")) if rnd else ""

    if isinstance(v, Tok):
        return str(v)
    if isinstance(v, dict):
        v = Dup(v.items())
    if isinstance(v, Dup):
        return "{" + ",".join(f"{ws()}{json.dumps(k)}{ws()}:{ws()}{write(x, rnd)}{ws()}"
                              for k, x in v) + ws() + "}"
    if isinstance(v, list):
        return "[" + ",".join(ws() + write(x, rnd) + ws() for x in v) + ws() + "]"
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=bool(rnd and rnd.random() < 0.5))
    return json.dumps(v)


def encode(v: Any, rnd: random.Random | None = None) -> bytes:
    return write(v, rnd).encode("utf-8", "surrogatepass")


def doc_of(payload: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(payload, parse_float=Decimal)
    return doc


def observations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation"]


# -- structured mutations ---------------------------------------------------------------

VALUES: list[Any] = [
    None, True, False, 0, 72, -3, Decimal("5.50"), Decimal("-0.0"), Decimal("1E+2"), Tok("-0"),
    Tok("1e-7"), Tok("12345678901234567890"), "72", "", "x", [], {}, [{}], [1, "a"], {"a": 1},
    "final", "amended", RFC3986, LOINC, "8867-4", "41653-7", "14743-9", "Patient/patient-a",
    "Patient/patient-b", UUID, UUID.upper(), UUID + "\n", "2026-03-15T08:30:00Z",
    "2026-03-15T08:30:00", "2026-03-15T10:30:00+02:00", "yesterday", "Observation", "Device",
    "Patient", "Bundle", "transaction", "batch", {"reference": "Patient/patient-a"},
    {"reference": 5}, {"coding": [{"system": LOINC, "code": "8867-4"}]},
    {"coding": [{"code": "positive-infinity"}, {"code": "x"}]}, {"coding": {"code": "x"}},
    {"coding": [5, {"code": 7}, {"code": "error"}]}, {"coding": [{"system": "s"}, {"code": "e"}]},
    {"coding": [{}, {"system": LOINC, "code": "41653-7"}]}, [{"system": RFC3986, "value": UUID}],
    {"coding": [{"system": LOINC, "code": ["8867-4"]}, {"system": LOINC, "code": "8867-4"}]},
    {"coding": [{"system": LOINC, "code": "8867-4"}, {"system": LOINC, "code": {}}]},
    [{"system": RFC3986, "value": UUID}, {"system": RFC3986, "value": UUID}],
    {"value": 5, "code": "mg/dL"}, {"value": "5"}, {"value": Tok("-0"), "code": 1},
    "Patient/patient-\u00e9", "\u2028", Tok("NaN"), Tok("-Infinity"), "\ud800",
]
#: the members the rules read, relative to an Observation
OBS_PATHS = [
    ("status",), ("identifier",), ("identifier", 0), ("identifier", 0, "system"),
    ("identifier", 0, "value"), ("code",), ("code", "coding"), ("code", "coding", 0),
    ("code", "coding", 0, "system"), ("code", "coding", 0, "code"), ("code", "coding", 1),
    ("subject",), ("subject", "reference"), ("valueQuantity",), ("valueQuantity", "value"),
    ("valueQuantity", "code"), ("dataAbsentReason",), ("dataAbsentReason", "coding"),
    ("effectiveDateTime",), ("resourceType",), ("extra",),
]
DELETE = object()


def locations(v: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member and item path in a parsed document."""
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        yield (*path, k)
        yield from locations(x, (*path, k))


def put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set (or with DELETE remove) the member at ``path``, creating objects on the way."""
    node = doc
    for k in path[:-1]:
        if isinstance(node, dict):
            if not isinstance(node.get(k), dict | list):
                node[k] = {} if isinstance(k, str) else []
            node = node[k]
        elif isinstance(node, list) and isinstance(k, int) and k < len(node):
            node = node[k]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        if value is DELETE and last < len(node):
            del node[last]
        elif value is not DELETE:
            node[min(last, len(node)):last + 1] = [value]


def duplicate_somewhere(doc: Any, rnd: random.Random) -> Any:
    """``doc`` with one object member written twice: once with another value, before or after
    the member (json.loads keeps whichever comes last)."""
    objects = [p for p in [(), *locations(doc)] if isinstance(_at(doc, p), dict) and _at(doc, p)]
    path = rnd.choice(objects)
    target: dict[str, Any] = _at(doc, path)
    key = rnd.choice(list(target))
    pairs = Dup(target.items())
    extra = (key, copy.deepcopy(rnd.choice(VALUES)))
    pairs.insert(rnd.choice((0, len(pairs))), extra)
    if not path:
        return pairs
    parent = _at(doc, path[:-1])
    parent[path[-1]] = pairs
    return doc


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutated(base: bytes, rnd: random.Random) -> bytes:
    doc: Any = doc_of(base)
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        # a copy: a later mutation must not change the pool (or put a value inside itself)
        value = DELETE if rnd.random() < 0.15 else copy.deepcopy(rnd.choice(VALUES))
        op = rnd.random()
        if op < 0.5:
            entries = doc.get("entry") if isinstance(doc, dict) else None
            if isinstance(entries, list) and entries:
                at = rnd.randrange(len(entries))
                put(doc, ("entry", at, "resource", *rnd.choice(OBS_PATHS)), value)
        elif op < 0.65:
            put(doc, rnd.choice([("resourceType",), ("type",), ("entry",), ("entry", 0),
                                 ("entry", 1, "resource"), ("entry", 9)]), value)
        else:
            spots = list(locations(doc))
            if spots:
                put(doc, rnd.choice(spots), value)
    if isinstance(doc, dict) and rnd.random() < 0.2:  # last: it turns an object into a Dup
        doc = duplicate_somewhere(doc, rnd)
    return encode(doc, rnd if rnd.random() < 0.3 else None)


def _hi_reading(payload: bytes) -> bytes:
    """``payload`` with its last Observation a meter's HI: a dataAbsentReason, no value."""
    doc = doc_of(payload)
    res = observations(doc)[-1]
    del res["valueQuantity"]
    res["dataAbsentReason"] = {"coding": [{"system": "s"}, {"code": "positive-infinity"}]}
    return fhir.to_json(doc)


BASES = [edge_bundle(3), edge_bundle(6, start=2), _hi_reading(edge_bundle(2, start=3))]


def test_edge_bundles_are_read_exactly() -> None:
    for base in [*BASES, edge_bundle(50), BOM + edge_bundle(2)]:
        assert assert_same(base) == "ok"
    compact = edge_bundle(10)
    expected = [fhir.to_json(r) for r in observations(doc_of(compact))]
    assert [o.resource for o in check_bundle(compact, PATIENT)] == expected


def test_structured_mutations_are_judged_as_json_loads_judges_them() -> None:
    rnd = random.Random(20240607)
    kinds = {"ok": 0, "rejected": 0, "crashed": 0}
    for _ in range(4000):
        kinds[assert_same(mutated(rnd.choice(BASES), rnd))] += 1
    assert min(kinds.values()) > 40, kinds  # every kind of verdict was exercised


def test_byte_mutations_are_judged_as_json_loads_judges_them() -> None:
    rnd = random.Random(11)
    texts = [BASES[0], encode(doc_of(BASES[2]), random.Random(3))]
    for text in texts:
        for _ in range(1500):
            data = bytearray(text)
            for _ in range(rnd.randint(1, 3)):
                at = rnd.randrange(len(data))
                op = rnd.randrange(3)
                if op == 0:
                    data[at] = rnd.choice(b'{}[],:"\\ \n0-.eE1atn\xc3\xff')
                elif op == 1:
                    del data[at]
                else:
                    data.insert(at, rnd.choice(b'{}[],:" \n0-9'))
            assert_same(bytes(data))


# -- hypothesis: nothing but Rejected, and the same verdicts -----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: Tok(str(d)))
    | st.sampled_from(VALUES),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["resourceType", "type", "entry", "resource", "status",
                                       "subject", "reference", "value", "code", "coding",
                                       "x"]), inner, max_size=4),
    max_leaves=20)


@HYPOTHESIS
@given(st.binary(max_size=4000))
def test_random_bytes_only_ever_reject(data: bytes) -> None:
    assert_same(data)


@HYPOTHESIS
@given(st.sampled_from(BASES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2),
                                                  st.binary(min_size=1, max_size=3)),
                                        min_size=1, max_size=4))
def test_mutated_bundles_only_ever_reject(base: bytes, edits: list[tuple[int, int, bytes]]
                                          ) -> None:
    data = bytearray(base)
    for at, op, chunk in edits:
        at %= len(data) + 1
        if op == 0:
            data[at:at + len(chunk)] = chunk
        elif op == 1:
            del data[at:at + len(chunk)]
        else:
            data[at:at] = chunk
    assert_same(bytes(data))


@HYPOTHESIS
@given(json_values, st.integers(0, 2**32))
def test_random_documents_in_a_bundle_shape(value: Any, seed: int) -> None:
    rnd = random.Random(seed)
    doc = doc_of(rnd.choice(BASES))
    spots = list(locations(doc))
    put(doc, rnd.choice(spots), value)
    assert_same(encode(doc, rnd))
    assert_same(encode(value))


# -- duplicate members: what json.loads keeps is what is judged and stored ---------------

def _with_members(obs_members: Callable[[dict[str, Any]], Dup]) -> bytes:
    doc = doc_of(edge_bundle(1))
    for e in doc["entry"]:
        if e["resource"]["resourceType"] == "Observation":
            e["resource"] = obs_members(e["resource"])
    return encode(doc)


def _replace(res: dict[str, Any], key: str, *values: Any) -> Dup:
    """``res`` with member ``key`` written once per value, in place."""
    out = Dup()
    for k, v in res.items():
        if k == key:
            out.extend((k, x) for x in values)
        else:
            out.append((k, v))
    return out


@pytest.mark.parametrize(("values", "verdict"), [
    (({"reference": "Patient/patient-b"}, {"reference": "Patient/patient-a"}), "ok"),
    (({"reference": "Patient/patient-a"}, {"reference": "Patient/patient-b"}),
     "subject_mismatch"),
    (("oops", {"reference": "Patient/patient-a"}), "ok"),  # the typed view misfits: exact path
    (({"reference": "Patient/patient-a"}, 5), "invalid_fhir"),
])
def test_a_duplicated_subject_is_judged_by_its_last_value(values: tuple[Any, ...],
                                                          verdict: str) -> None:
    payload = _with_members(lambda res: _replace(res, "subject", *values))
    assert_same(payload)
    got = judge(payload)
    assert (got[0] if got[0] == "ok" else got[1]) == verdict


def test_a_duplicated_resource_stores_the_last_one() -> None:
    doc = doc_of(edge_bundle(1))
    entry = doc["entry"][-1]
    first = {"resourceType": "Patient", "id": "p"}
    entry_pairs = Dup([("resource", first) if k == "resource" else (k, v)
                       for k, v in entry.items()])
    entry_pairs.append(("resource", entry["resource"]))
    doc["entry"][-1] = entry_pairs
    payload = encode(doc)
    assert assert_same(payload) == "ok"
    [obs] = check_bundle(payload, PATIENT)
    assert obs.resource == fhir.to_json(entry["resource"])
    entry_pairs.append(("resource", 7))  # now the last one is not an object
    assert judge(encode(doc)) == ("rejected", "invalid_fhir")


@pytest.mark.parametrize(("values", "verdict"), [
    ((5,), "invalid_fhir"),
    ((5, "ENTRIES"), "ok"),
    (("ENTRIES", []), "invalid_fhir"),
    (([], "ENTRIES"), "ok"),
    (([{"resource": {"resourceType": "Patient"}}], "ENTRIES"), "ok"),
])
def test_a_duplicated_entry_list_is_judged_by_its_last_value(values: tuple[Any, ...],
                                                             verdict: str) -> None:
    doc = doc_of(edge_bundle(2))
    entries = doc.pop("entry")
    pairs = Dup(doc.items())
    pairs.extend(("entry", entries if v == "ENTRIES" else v) for v in values)
    payload = encode(pairs)
    assert assert_same(payload) == ("ok" if verdict == "ok" else "rejected")
    got = judge(payload)
    assert (got[0] if got[0] == "ok" else got[1]) == verdict


def test_escaped_member_names_are_the_same_members() -> None:
    payload = edge_bundle(2).replace(b'"subject"', b'"subj\\u0065ct"').replace(
        b'"entry"', b'"\\u0065ntry"')
    assert assert_same(payload) == "ok"


# -- values, types and the typed view's edges --------------------------------------------

def _with_value(token: str) -> bytes:
    return edge_bundle(1).replace(b'"value":60,', f'"value":{token},'.encode())


@pytest.mark.parametrize(("token", "value"), [
    ("60", "60"), ("5.50", "5.50"), ("-0", "0"), ("-0.0", "-0.0"), ("1E+2", "1E+2"),
    ("0.000001", "0.000001"), ("123456789012345678901234567890", "123456789012345678901234567890"),
])
def test_values_keep_every_digit_as_written(token: str, value: str) -> None:
    payload = _with_value(token)
    assert assert_same(payload) == "ok"
    [obs] = check_bundle(payload, PATIENT)
    assert str(obs.value) == value
    assert f'"value":{token},'.encode() in obs.resource


@pytest.mark.parametrize("token", ['"72"', "true", "false", "null", "[72]", '{"v":72}'])
def test_a_value_that_is_not_a_json_number_is_refused(token: str) -> None:
    assert judge(_with_value(token)) == ("rejected", "invalid_fhir")
    assert reference(_with_value(token)) == ("rejected", "invalid_fhir")


def test_unknown_members_are_allowed_anywhere() -> None:
    doc = doc_of(edge_bundle(2))
    doc["meta"] = {"x": [1, 2.5, None, {"y": "z"}]}
    for e in doc["entry"]:
        e["search"] = {"mode": "match"}
        e["resource"]["text"] = {"status": "generated", "div": "<div>é</div>"}
        e["resource"]["valueQuantity"] = e["resource"].get("valueQuantity")
    for res in observations(doc):
        res["code"]["coding"][0]["userSelected"] = True
        res["subject"]["display"] = "someone"
    payload = encode(doc, random.Random(5))
    assert assert_same(payload) == "ok"
    assert len(check_bundle(payload, PATIENT)) == 2


def test_a_data_absent_reason_stands_for_the_value() -> None:
    doc = doc_of(edge_bundle(1))
    [res] = observations(doc)
    del res["valueQuantity"]
    res["dataAbsentReason"] = {"coding": [{"system": "x", "code": "positive-infinity"}]}
    [obs] = check_bundle(encode(doc), PATIENT)
    assert (obs.value, obs.unit, obs.absent) == (None, None, "positive-infinity")
    res["dataAbsentReason"] = {"coding": [{"system": "s"}, {"code": "error"}]}
    [obs] = check_bundle(encode(doc), PATIENT)
    assert obs.absent == "error"
    res["dataAbsentReason"] = {}
    [obs] = check_bundle(encode(doc), PATIENT)
    assert obs.absent is None
    del res["dataAbsentReason"]
    assert judge(encode(doc)) == ("rejected", "invalid_fhir")


def _entries(*resources: dict[str, Any]) -> bytes:
    return encode({"resourceType": "Bundle", "type": "transaction",
                   "entry": [{"resource": r} for r in resources]})


def test_structural_refusals() -> None:
    [obs] = observations(doc_of(edge_bundle(1)))
    device = {"resourceType": "Device"}
    cases = {
        "too many entries": _entries(obs, *[device] * MAX_ENTRIES),
        "only Devices": _entries(device, device),
        "a Patient": _entries(obs, {"resourceType": "Patient"}),
        "resource not an object": encode({"resourceType": "Bundle", "type": "transaction",
                                          "entry": [{"resource": obs}, {"resource": [obs]}]}),
        "batch": edge_bundle(1).replace(b'"transaction"', b'"batch"'),
        "not a Bundle": edge_bundle(1).replace(b'"Bundle"', b'"Bundles"'),
    }
    for why, payload in cases.items():
        assert judge(payload) == ("rejected", "invalid_fhir"), why
        assert reference(payload) == ("rejected", "invalid_fhir"), why
    assert assert_same(_entries(obs, *[device] * (MAX_ENTRIES - 1))) == "ok"


def test_refusals_keep_the_order_of_the_entries() -> None:
    """A subject mismatch in an earlier entry is reported before a later entry's fault, even a
    fault the typed view cannot hold (which sends the Bundle to the exact path)."""
    [obs] = observations(doc_of(edge_bundle(1)))
    stranger = {**obs, "subject": {"reference": "Patient/patient-b"}}
    for later in ({"resourceType": "Patient"}, 5, {**obs, "identifier": 5}, {**obs, "code": []}):
        payload = encode({"resourceType": "Bundle", "type": "transaction",
                          "entry": [{"resource": stranger}, {"resource": later}]})
        assert judge(payload) == ("rejected", "subject_mismatch")
        assert_same(payload)


# -- malformed JSON: refused like json.loads, or in the documented stricter cases -------

@pytest.mark.parametrize("text", [
    b"", b"{", b"[]", b'"x"', b"{}", b"\xef\xbb\xbf\xef\xbb\xbf{}", b'{"a":1} x', b"{'a':1}",
    b'{"resourceType":"Bundle","type":"transaction","entry":[',
])
def test_not_json_or_not_a_bundle(text: bytes) -> None:
    assert judge(text) == ("rejected", "invalid_fhir")
    assert_same(text)


def _in_extra_member(token: bytes) -> bytes:
    return edge_bundle(2).replace(b'"status":"final"', b'"status":"final","x":' + token, 1)


@pytest.mark.parametrize(("token", "verdict"), [
    (b"1" * 5000, "rejected"),  # json: more digits than sys.get_int_max_str_digits()
    (b"1e1000000000000000000", "crashed"),  # Decimal: exponent out of range
    (b"1000e999999999999999999", "crashed"),
    (b"1" * 30, "ok"), (b"1e999999999999999999", "ok"), (b"0.000000000000000000001", "ok"),
])
def test_numbers_json_loads_cannot_read_are_refused_in_any_member(token: bytes,
                                                                  verdict: str) -> None:
    payload = _in_extra_member(token)
    assert assert_same(payload) == verdict
    assert judge(payload)[0] == ("ok" if verdict == "ok" else "rejected")


@pytest.mark.parametrize("token", [b"NaN", b"-Infinity", b'"\\ud800"', b'"\xed\xa0\x80"',
                                   b'"\xff"', b'"\xc3"'])
def test_the_stricter_cases_are_invalid_fhir(token: bytes) -> None:
    payload = _in_extra_member(token)
    assert judge(payload) == ("rejected", "invalid_fhir")
    assert_same(payload)


def test_utf16_is_refused_and_a_utf8_bom_allowed() -> None:
    text = edge_bundle(2).decode()
    assert judge(text.encode("utf-16")) == ("rejected", "invalid_fhir")
    assert reference(text.encode("utf-16"))[0] == "ok"  # json.loads read it: now stricter
    assert assert_same(BOM + text.encode()) == "ok"


def test_deep_nesting_is_invalid() -> None:
    payload = _in_extra_member(b"[" * 100_000 + b"]" * 100_000)
    assert judge(payload) == ("rejected", "invalid_fhir")
    assert_same(payload)


# -- the fast path is what edge's Bundles take, and its Obs are ordinary Obs -------------

def test_edge_bundles_never_take_the_exact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def exact(payload: bytes, patient: str) -> list[Obs]:
        raise AssertionError("the exact path")

    monkeypatch.setattr(bundle, "_exact", exact)
    readings = make_readings(30, (PATIENT,))
    for payload in (fhir.bundle_bytes(readings, hub_id="hub-1"), BOM + edge_bundle(2),
                    encode(doc_of(edge_bundle(7)), random.Random(1))):
        assert len(check_bundle(payload, PATIENT)) in (30, 2, 7)
    with pytest.raises(AssertionError, match="exact path"):  # a status of another JSON type
        check_bundle(edge_bundle(2).replace(b'"status":"final"', b'"status":1', 1), PATIENT)


def test_obs_from_the_fast_path_are_ordinary_obs() -> None:
    obs = check_bundle(edge_bundle(5), PATIENT)
    names = [f.name for f in dataclasses.fields(Obs)]
    for o in obs:
        twin = Obs(**vars(o))
        assert list(vars(o)) == names
        assert (twin, repr(twin), hash(twin)) == (o, repr(o), hash(o))
        with pytest.raises(dataclasses.FrozenInstanceError):
            o.unit = "x"  # type: ignore[misc]
