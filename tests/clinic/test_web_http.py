"""The web app over HTTP (Starlette's TestClient on the ASGI app, a real PostgreSQL): the
role × route access matrix, CSRF, security headers, cookies, lockout, timeouts, sign-out,
auditing of views, acknowledgement."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from clinic import audit
from clinic.web import common
from clinic.web import security as sec
from clinic.web.app import build_app
from clinic.web.common import BadInput, Pool
from tests.clinic.web_support import PASSWORD, World, seed, web_cfg

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def world(dsn: str) -> World:
    return seed(dsn)


@pytest.fixture
def make_client(world: World, tmp_path: Path) -> Iterator[Callable[[], TestClient]]:
    app = build_app(web_cfg(world.dsn, tmp_path), world.ring)
    yield lambda: TestClient(app, base_url="https://testserver", follow_redirects=False)
    app.state.web.pool.close()


def sign_in(c: TestClient, world: World, name: str, *, password: str = PASSWORD,
            otp: str | None = None) -> tuple[int, str]:
    page = c.get("/signin")
    csrf = CSRF_RE.search(page.text)
    assert csrf, page.text
    r = c.post("/signin", data={"csrf": csrf.group(1), "username": name, "password": password,
                                "otp": otp if otp is not None else world.users[name].otp()})
    return r.status_code, r.headers.get("location", "")


def csrf_of(c: TestClient, path: str = "/me") -> str:
    m = CSRF_RE.search(c.get(path).text)
    assert m
    return m.group(1)


# role -> expected status per route; 303 = redirect to the sign-in page
ROUTES = ["GET /patients", "GET /patients/pt-a", "GET /patients/pt-c", "GET /patients/nobody",
          "GET /alerts", "GET /admin", "GET /audit", "GET /me", "POST /admin/hub-enroll",
          "POST /patients/pt-b/alerts/{aid}/ack", "POST /patients/pt-c/alerts/{aid}/ack",
          "GET /events?patient=nobody", "GET /fhir/r4/Observation?subject=Patient/pt-a"]
MATRIX = {
    None: [303, 303, 303, 303, 303, 303, 303, 303, 303, 303, 303, 303, 401],
    "doc1": [200, 200, 404, 404, 200, 404, 404, 200, 404, 303, 404, 404, 401],
    "doc2": [200, 404, 200, 404, 200, 404, 404, 200, 404, 404, 404, 404, 401],
    "adm": [404, 404, 404, 404, 404, 200, 404, 200, 303, 404, 404, 404, 401],
    "aud": [404, 404, 404, 404, 404, 404, 200, 200, 404, 404, 404, 404, 401],
}


@pytest.mark.parametrize("who", list(MATRIX), ids=lambda w: w or "anonymous")
def test_access_matrix(who: str | None, world: World,
                       make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    csrf = ""
    if who:
        assert sign_in(c, world, who)[0] == 303
        csrf = csrf_of(c)
    got = []
    for route in ROUTES:
        method, path = route.format(aid=world.alert_id).split(" ")
        data = {"csrf": csrf, "hub_id": "hub-new", "note": "seen, called the patient"}
        r = c.post(path, data=data) if method == "POST" else c.get(path)
        if r.status_code == 303 and who is None:
            assert r.headers["location"] == "/signin"
        got.append(r.status_code)
    assert dict(zip(ROUTES, got, strict=True)) == dict(zip(ROUTES, MATRIX[who], strict=True))


def test_not_found_pages_are_indistinguishable(world: World,
                                               make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "doc1")
    other, missing = c.get("/patients/pt-c"), c.get("/patients/nobody")
    assert other.status_code == missing.status_code == 404
    assert other.text == missing.text
    assert "pt-c" not in other.text


def test_patients_page_lists_assigned_patients_alerts_first(
        world: World, make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "doc1")
    html = c.get("/patients").text
    assert re.findall(r'data-patient="([^"]+)"', html) == ["pt-b", "pt-a"]
    assert "Ada Example" in html and "Carl Other" not in html
    assert "bpm" in html and " s ago" in html and "d ago · stale" in html  # glucose: 2 days
    with world.conn() as conn:
        views = [r for r in audit.tail(conn, 50) if r.action == "view.patients"]
    assert {r.target for r in views} == {"pt-a", "pt-b"} and {r.actor for r in views} == {"doc1"}


def test_patient_page_charts_bands_and_audit(world: World,
                                             make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "doc1")
    html = c.get("/patients/pt-a").text
    assert html.count("<svg") == 3
    # 45, 60, 100, 150, 200, 300, 110, 95 mg/dL: one in eight in each outer band
    assert re.findall(r'class="band-[a-z-]+">([0-9.]+) %', html) == [
        "12.5", "12.5", "50.0", "12.5", "12.5"]
    assert "8 readings" in html and "Times in UTC" in html
    with world.conn() as conn:
        rec = audit.tail(conn, 1)[0]
    assert (rec.actor, rec.action, rec.target) == ("doc1", "view.patient", "pt-a")


def test_glucose_unit_is_a_user_preference(world: World,
                                           make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "doc1")
    assert c.post("/me", data={"csrf": csrf_of(c), "unit": "mmol/L"}).status_code == 303
    html = c.get("/patients/pt-a").text
    assert "Glucose (mmol/L)" in html and "5.3" in html  # 95 mg/dL, the latest reading
    assert c.post("/me", data={"csrf": csrf_of(c), "unit": "furlongs"}).status_code == 400


def test_csrf_is_required_on_every_form(world: World,
                                        make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "adm")
    for data in ({"hub_id": "hub-x"}, {"hub_id": "hub-x", "csrf": "forged"}):
        assert c.post("/admin/hub-enroll", data=data).status_code == 403
    assert c.post("/signout", data={}).status_code == 403
    with world.conn() as conn:
        assert conn.execute("SELECT 1 FROM hubs WHERE hub_id = 'hub-x'").fetchone() is None
    # the sign-in form's token must match its cookie
    fresh = make_client()
    r = fresh.post("/signin", data={"csrf": "x", "username": "adm", "password": PASSWORD,
                                    "otp": world.users["adm"].otp()})
    assert r.status_code == 403 and sec.SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_security_headers_and_no_inline_script_or_style(
        world: World, make_client: Callable[[], TestClient]) -> None:
    anon = make_client()
    c = make_client()
    sign_in(c, world, "doc1")
    for client, path in ((anon, "/signin"), (c, "/patients"), (c, "/patients/pt-a"),
                         (c, "/alerts"), (c, "/nope"), (c, "/static/app.js"),
                         (c, "/fhir/r4/metadata")):
        r = client.get(path)
        for name, value in sec.SECURITY_HEADERS:
            assert r.headers.get(name) == value, (path, name)
        assert r.status_code in (200, 404), (path, r.status_code)
        if r.headers["content-type"].startswith("text/html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
            assert not re.search(r"<style|\sstyle=", r.text), path
            assert r.headers["cache-control"] == "no-store"
    csp = dict(sec.SECURITY_HEADERS)["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp


def test_session_cookie_attributes(world: World, make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    c.get("/signin")
    page = c.get("/signin")
    m = CSRF_RE.search(page.text)
    assert m
    r = c.post("/signin", data={"csrf": m.group(1), "username": "doc1", "password": PASSWORD,
                                "otp": world.users["doc1"].otp()})
    cookies = r.headers.get_list("set-cookie")
    session = next(x for x in cookies if x.startswith(sec.SESSION_COOKIE + "="))
    attrs = {a.strip().split("=")[0].lower() for a in session.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path"} <= attrs and "domain" not in attrs
    assert "SameSite=Strict" in session
    with world.conn() as conn:
        stored = conn.execute("SELECT id_hash FROM web_sessions").fetchall()
    value = session.split(";")[0].split("=", 1)[1]
    assert [bytes(s[0]) for s in stored] == [sec.digest(value)]  # only the digest is stored


def test_wrong_password_or_code_fails_and_lockout_follows(
        world: World, make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    assert sign_in(c, world, "doc1", otp="000000")[0] == 401
    assert sign_in(c, world, "doc1", password="wrong password!")[0] == 401
    assert sign_in(c, world, "nobody", otp="123456")[0] == 401
    for _ in range(3):
        assert sign_in(c, world, "doc1", otp="123456")[0] in (401, 429)
    # five failures: locked, even with everything right
    status, _ = sign_in(c, world, "doc1")
    assert status == 429
    assert "form" in c.get("/signin").text
    assert c.get("/patients").status_code == 303
    with world.conn() as conn:
        actions = [r.action for r in audit.tail(conn, 20) if r.target == "doc1"]
    assert actions.count("signin.fail") == 5 and actions[-1] == "signin.locked"
    # another user is unaffected
    assert sign_in(make_client(), world, "doc2")[0] == 303


def test_idle_timeout_absolute_lifetime_and_sign_out(
        world: World, make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "doc1")
    assert c.get("/patients").status_code == 200
    with world.conn() as conn:
        conn.execute("UPDATE web_sessions SET last_seen = last_seen - interval '901 seconds'")
    r = c.get("/patients")
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    with world.conn() as conn:
        assert conn.execute("SELECT count(*) FROM web_sessions").fetchone() == (0,)
    sign_in(c, world, "doc1")
    with world.conn() as conn:
        conn.execute("UPDATE web_sessions SET created_at = created_at - interval '13 hours'")
    assert c.get("/patients").status_code == 303
    sign_in(c, world, "doc1")
    cookie = c.cookies.get(sec.SESSION_COOKIE)
    assert c.post("/signout", data={"csrf": csrf_of(c)}).status_code == 303
    replay = make_client()
    replay.cookies.set(sec.SESSION_COOKIE, cookie or "")
    assert replay.get("/patients").status_code == 303  # invalidated server-side


def test_acknowledge_needs_a_note(world: World, make_client: Callable[[], TestClient]) -> None:
    c = make_client()
    sign_in(c, world, "doc1")
    url = f"/patients/pt-b/alerts/{world.alert_id}/ack"
    assert c.post(url, data={"csrf": csrf_of(c), "note": "  "}).status_code == 400
    assert f'data-alert="{world.alert_id}"' in c.get("/alerts").text
    r = c.post(url, data={"csrf": csrf_of(c), "note": "phoned, ate", "back": "/alerts"})
    assert r.status_code == 303 and r.headers["location"] == "/alerts"
    assert f'data-alert="{world.alert_id}"' not in c.get("/alerts").text
    page = c.get("/patients/pt-b").text
    assert "acknowledged by doc1" in page and "phoned, ate" in page
    with world.conn() as conn:
        row = conn.execute("SELECT state, note_enc FROM alerts WHERE id = %s",
                           (world.alert_id,)).fetchone()
    assert row is not None and row[0] == "acknowledged" and b"phoned" not in bytes(row[1])


def test_admin_assigns_and_auditor_reads_the_log(world: World,
                                                 make_client: Callable[[], TestClient]) -> None:
    adm = make_client()
    sign_in(adm, world, "adm")
    page = adm.get("/admin").text
    assert "Ada Example" not in page  # no clinical data (names) for admins
    r = adm.post("/admin/assign", data={"csrf": csrf_of(adm, "/admin"), "pseudonym": "pt-c",
                                        "clinician": "doc1"})
    assert r.status_code == 303
    doc = make_client()
    sign_in(doc, world, "doc1")
    assert doc.get("/patients/pt-c").status_code == 200
    aud = make_client()
    sign_in(aud, world, "aud")
    log = aud.get("/audit").text
    assert "Chain intact" in log and "patient.assign" in log and "web:adm" in log
    assert "view.patient" in log


def _audit_count(world: World) -> int:
    with world.conn() as conn:
        row = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    assert row is not None
    return int(row[0])


def _bad_request_page(r: httpx.Response) -> None:
    assert r.status_code == 400, (r.request.url, r.status_code)
    assert r.headers["content-type"].startswith("text/html")
    assert "cannot be stored" in r.text
    assert "0x00" not in r.text and "PostgreSQL" not in r.text  # never the database's words


def test_nul_in_a_path_query_or_form_is_a_400_not_an_outage(
        world: World, make_client: Callable[[], TestClient]) -> None:
    anon = make_client()
    page = anon.get("/signin")
    m = CSRF_RE.search(page.text)
    assert m
    before = _audit_count(world)
    _bad_request_page(anon.post("/signin", data={
        "csrf": m.group(1), "username": "doc1\x00", "password": PASSWORD,
        "otp": world.users["doc1"].otp()}))
    assert sec.SESSION_COOKIE not in anon.cookies
    assert _audit_count(world) == before  # no sign-in attempt was recorded either
    c = make_client()
    assert sign_in(c, world, "doc1")[0] == 303
    before = _audit_count(world)
    for path in ("/patients/pt-a%00", "/patients?x=%00", "/alerts?sort=a%00b",
                 "/events?patient=pt-a%00"):
        _bad_request_page(c.get(path))
    _bad_request_page(c.post("/me", data={"csrf": csrf_of(c), "unit": "mg/dL\x00"}))
    _bad_request_page(c.post(f"/patients/pt-b/alerts/{world.alert_id}/ack",
                             data={"csrf": csrf_of(c), "note": "called\x00"}))
    assert _audit_count(world) == before  # nothing viewed, nothing changed
    assert c.get("/patients/pt-a").status_code == 200  # and the pool is still healthy


def test_a_database_data_error_is_a_400_without_its_message(
        world: World, make_client: Callable[[], TestClient],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the boundary check out of the way: what reaches PostgreSQL is answered 400, not 503
    monkeypatch.setattr(common, "check_storable", lambda *a, **k: None)
    c = make_client()
    page = c.get("/signin")
    m = CSRF_RE.search(page.text)
    assert m
    _bad_request_page(c.post("/signin", data={
        "csrf": m.group(1), "username": "doc1\x00", "password": PASSWORD,
        "otp": world.users["doc1"].otp()}))
    adm = make_client()
    assert sign_in(adm, world, "adm")[0] == 303
    _bad_request_page(adm.post("/admin/user-disable",
                               data={"csrf": csrf_of(adm, "/admin"), "username": "doc1\x00"}))
    pool = Pool(world.dsn)
    try:
        with pytest.raises(BadInput), pool.conn() as conn:
            conn.execute("SELECT %s::text", ("a\x00b",))
    finally:
        pool.close()
