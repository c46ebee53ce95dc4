"""clinic.web's pure rules: access decisions, lockout and session expiry, glucose statistics,
server-rendered SVG — no I/O."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from starlette.requests import Request

from clinic.web import access, charts, common, stats
from clinic.web import security as sec
from clinic.web.access import Area, Decision

T0 = dt.datetime(2024, 3, 31, 0, 30, tzinfo=dt.UTC)

# role -> area -> (assigned=False, assigned=True)
EXPECTED = {
    "clinician": {Area.CLINICAL_LIST: "AA", Area.PATIENT: "NA", Area.ADMIN: "NN",
                  Area.AUDIT: "NN", Area.SELF: "AA"},
    "admin": {Area.CLINICAL_LIST: "NN", Area.PATIENT: "NA", Area.ADMIN: "AA",
              Area.AUDIT: "NN", Area.SELF: "AA"},
    "auditor": {Area.CLINICAL_LIST: "NN", Area.PATIENT: "NA", Area.ADMIN: "NN",
                Area.AUDIT: "AA", Area.SELF: "AA"},
    "root": {a: "NN" for a in Area},
}


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_access_matrix(role: str) -> None:
    got = {area: "".join("A" if access.decide(role, area, assigned=x) is Decision.ALLOW
                         else "N" for x in (False, True)) for area in Area}
    assert got == EXPECTED[role]


def test_visible_patients_never_widen_the_assignment() -> None:
    assert access.visible_patients(["a", "b"], None) == ["a", "b"]
    assert access.visible_patients(["a", "b"], ["b", "zzz"]) == ["b"]
    assert access.visible_patients([], ["a"]) == []
    assert access.home("auditor") == "/audit"


def test_lockout_after_max_failures_then_expires() -> None:
    policy = sec.LockPolicy(max_failures=3, lockout_s=600)
    s = None
    for i in range(1, 3):
        s = sec.after_failure(s, policy, T0)
        assert s.failures == i and not sec.is_locked(s, T0)
    s = sec.after_failure(s, policy, T0)
    assert sec.is_locked(s, T0)
    assert sec.is_locked(s, T0 + dt.timedelta(seconds=599))
    assert not sec.is_locked(s, T0 + dt.timedelta(seconds=600))
    # after the lock ran out, the count starts again
    assert sec.after_failure(s, policy, T0 + dt.timedelta(seconds=601)).failures == 1


def test_session_expires_when_idle_or_too_old() -> None:
    t = sec.SessionTimes(created_at=T0, last_seen=T0)
    assert not sec.session_expired(t, T0 + dt.timedelta(seconds=899), idle_s=900,
                                   lifetime_s=3600)
    assert sec.session_expired(t, T0 + dt.timedelta(seconds=900), idle_s=900, lifetime_s=3600)
    busy = sec.SessionTimes(created_at=T0, last_seen=T0 + dt.timedelta(seconds=3599))
    assert sec.session_expired(busy, T0 + dt.timedelta(seconds=3600), idle_s=900,
                               lifetime_s=3600)


def test_secrets_compare_and_cookie_attributes() -> None:
    assert sec.same("abc", "abc") and not sec.same("abc", "abd")
    assert not sec.same("", "") and not sec.same(None, "x")
    c = sec.cookie_header(sec.SESSION_COOKIE, "v")
    assert c.startswith("__Host-") and all(a in c for a in ("Secure", "HttpOnly",
                                                            "SameSite=Strict", "Path=/"))
    assert sec.digest("x") != sec.digest("y") and len(sec.new_secret()) >= 43


def _pts(*values: str) -> list[stats.Point]:
    return [stats.Point(T0 + dt.timedelta(hours=i), Decimal(v)) for i, v in enumerate(values)]


def test_glucose_bands_are_shares_of_readings_at_the_consensus_edges() -> None:
    pts = _pts("53.9", "54", "69", "70", "180", "181", "250", "251")
    b = stats.bands(pts)
    assert b == {"very low": Decimal("12.5"), "low": Decimal("25.0"),
                 "in range": Decimal("25.0"), "high": Decimal("25.0"),
                 "very high": Decimal("12.5")}
    assert stats.bands([]) == dict.fromkeys(b, Decimal(0))
    assert stats.mean(_pts("100", "200")) == Decimal(150)
    assert stats.per_day(_pts("1", "2", "3"), 2) == Decimal("1.5")


def test_units_flags_and_ages() -> None:
    assert stats.to_mgdl(Decimal("5.5"), "mmol/L") == Decimal("99.0880")
    assert stats.glucose_text(Decimal("99.088"), "mmol/L") == "5.5"
    assert stats.glucose_text(Decimal("99.5"), "mg/dL") == "100"
    assert stats.glucose_flag(Decimal(69)) == "low" and stats.glucose_flag(Decimal(181)) == "high"
    assert stats.hr_flag(Decimal(35)) == "low" and stats.hr_flag(Decimal(80)) == ""
    assert stats.age_text(T0 - dt.timedelta(minutes=3), T0) == "3 min ago"
    assert stats.age_text(None, T0) == "never"
    assert stats.is_stale(T0 - dt.timedelta(seconds=601), T0, 600)
    assert not stats.is_stale(T0 - dt.timedelta(seconds=599), T0, 600)


def test_charts_are_well_formed_svg_with_escaped_text() -> None:
    tz = ZoneInfo("Europe/Berlin")
    b = stats.buckets(_pts("60", "70", "150"), dt.timedelta(hours=1))
    svg = charts.hr_chart(b, T0, T0 + dt.timedelta(days=1), tz, "HR <24h> & more")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "HR <24h> & more" in "".join(root.itertext())
    assert "style" not in svg  # the CSP forbids inline styles
    g = charts.glucose_chart(_pts("45", "100", "300"), T0, T0 + dt.timedelta(days=14), tz,
                             "Glucose", "mmol/L")
    groot = ET.fromstring(g)
    circles = [e for e in groot.iter() if e.tag.endswith("circle")]
    assert len(circles) == 3
    assert ">3.9<" in g and ">10.0<" in g  # the 70 and 180 mg/dL ticks in mmol/L
    empty = charts.glucose_chart([], T0, T0 + dt.timedelta(days=1), tz, "G", "mg/dL")
    assert "no data" in empty


def test_a_lone_heart_rate_bucket_is_drawn_as_a_dot() -> None:
    tz = ZoneInfo("UTC")
    t1 = T0 + dt.timedelta(days=1)
    one = stats.buckets(_pts("72"), dt.timedelta(hours=1))
    assert len(one) == 1
    svg = charts.hr_chart(one, T0, t1, tz, "HR")
    root = ET.fromstring(svg)
    dots = [e for e in root.iter() if e.tag.endswith("circle")]
    assert len(dots) == 1
    dot = dots[0]
    assert float(dot.get("r", "0")) > 0 and dot.get("fill") not in (None, "none")
    assert float(dot.get("cx", "nan")) == pytest.approx(charts._x(one[0].start, T0, t1), abs=0.1)
    assert float(dot.get("cy", "nan")) == pytest.approx(charts._y(72, 30, 180), abs=0.1)
    assert "style" not in svg and "no data" not in svg
    # two buckets make a line again, with no dots
    two = charts.hr_chart(stats.buckets(_pts("72", "80"), dt.timedelta(hours=1)), T0, t1, tz,
                          "HR")
    troot = ET.fromstring(two)
    assert not [e for e in troot.iter() if e.tag.endswith("circle")]
    line = next(e for e in troot.iter() if e.tag.endswith("polyline"))
    assert len(line.get("points", "").split()) == 2
    # glucose readings are dots already: a lone reading shows
    g = ET.fromstring(charts.glucose_chart(_pts("100"), T0, t1, tz, "G", "mg/dL"))
    assert len([e for e in g.iter() if e.tag.endswith("circle")]) == 1


def test_input_postgresql_cannot_store_is_refused() -> None:
    def request(query: bytes, **path: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                        "query_string": query, "path_params": path})

    common.check_storable(request(b"q=ok%C3%A9", p="pt-a"), {"note": "fine, é"})
    for req, form in ((request(b"", p="pt\x00a"), {}), (request(b"q=a%00"), {}),
                      (request(b"a%00=q"), {}), (request(b""), {"note": "x\x00"}),
                      (request(b""), {"note": "\ud800"}), (request(b"", p="\udfff"), {})):
        with pytest.raises(common.BadInput):
            common.check_storable(req, form)
    # a lenient parameter's value is the handler's business, not its name
    common.check_storable(request(b"code=a%00"), {}, lenient={"code"})
    with pytest.raises(common.BadInput):
        common.check_storable(request(b"code%00=a"), {}, lenient={"code"})
