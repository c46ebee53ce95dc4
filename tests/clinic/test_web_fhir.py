"""The FHIR API: bearer tokens from `clinic tokens create`, searchset Bundles that validate
as R4 (fhir.resources), paging, the same 404 rule as the pages, revocation and expiry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from starlette.testclient import TestClient

from clinic.cli import main as clinic_main
from clinic.web.app import build_app
from tests.clinic.web_support import World, seed, web_cfg, write_config

API = "/fhir/r4"


@pytest.fixture
def world(dsn: str) -> World:
    return seed(dsn)


@pytest.fixture
def client(world: World, tmp_path: Path) -> Iterator[TestClient]:
    app = build_app(web_cfg(world.dsn, tmp_path), world.ring)
    yield TestClient(app, base_url="https://testserver", follow_redirects=False)
    app.state.web.pool.close()


@pytest.fixture
def token_for(world: World, tmp_path: Path,
              capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    cfg = write_config(tmp_path / "clinic.toml", world.dsn, tmp_path)

    def make(user: str, *extra: str) -> str:
        assert clinic_main(["--config", str(cfg), "tokens", "create", user, *extra]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    return make


def get(c: TestClient, url: str, token: str) -> tuple[int, dict[str, Any]]:
    r = c.get(url, headers={"authorization": f"Bearer {token}"})
    assert r.headers["content-type"].startswith("application/fhir+json")
    doc: dict[str, Any] = json.loads(r.text, parse_float=Decimal)
    return r.status_code, doc


def all_pages(c: TestClient, url: str, token: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        status, doc = get(c, next_url, token)
        assert status == 200
        Bundle.model_validate(doc)  # R4 searchset, every page
        assert doc["type"] == "searchset"
        entries += doc.get("entry", [])
        next_url = next((lk["url"] for lk in doc["link"] if lk["relation"] == "next"), None)
    return entries


def test_a_token_sees_exactly_its_users_patients(world: World, client: TestClient,
                                                 token_for: Callable[..., str]) -> None:
    t1, t2 = token_for("doc1"), token_for("doc2")
    assert t1.startswith("clk_") and t1 != t2
    with world.conn() as conn:
        counts: dict[str, int] = dict(conn.execute("SELECT patient, count(*) FROM observations "
                                   "GROUP BY patient").fetchall())
    mine = all_pages(client, f"{API}/Observation?_count=50", t1)
    assert len(mine) == counts["pt-a"] == 128
    assert {e["resource"]["subject"]["reference"] for e in mine} == {"Patient/pt-a"}
    assert len({e["resource"]["id"] for e in mine}) == len(mine)
    theirs = all_pages(client, f"{API}/Observation", t2)
    assert {e["resource"]["subject"]["reference"] for e in theirs} == {"Patient/pt-c"}
    # the other clinician's patient, by search or by id: 404, like one that does not exist
    other_id = theirs[0]["resource"]["id"]
    s1, d1 = get(client, f"{API}/Observation?subject=Patient/pt-c", t1)
    s2, d2 = get(client, f"{API}/Observation?subject=Patient/nobody", t1)
    assert s1 == s2 == 404 and d1 == d2 and d1["resourceType"] == "OperationOutcome"
    s3, d3 = get(client, f"{API}/Observation/{other_id}", t1)
    s4, d4 = get(client, f"{API}/Observation/00000000-0000-0000-0000-000000000000", t1)
    assert s3 == s4 == 404 and d3 == d4
    status, obs = get(client, f"{API}/Observation/{other_id}", t2)
    assert status == 200 and obs["id"] == other_id
    Observation.model_validate(obs)


def test_search_parameters_and_paging(world: World, client: TestClient,
                                      token_for: Callable[..., str]) -> None:
    t = token_for("doc1")
    hr = all_pages(client, f"{API}/Observation?subject=Patient/pt-a&code=http://loinc.org|"
                           "8867-4&_count=7", t)
    assert len(hr) == 120
    assert {e["resource"]["code"]["coding"][0]["code"] for e in hr} == {"8867-4"}
    glucose = all_pages(client, f"{API}/Observation?patient=pt-a&code=41653-7,14743-9", t)
    assert len(glucose) == 8
    cut = glucose[4]["resource"]["effectiveDateTime"]
    later = all_pages(client, f"{API}/Observation?patient=pt-a&code=41653-7&date=ge{cut}", t)
    assert [e["resource"]["id"] for e in later] == [e["resource"]["id"] for e in glucose[4:]]
    status, doc = get(client, f"{API}/Observation?patient=pt-a&_count=5&_offset=5", t)
    rels = {lk["relation"] for lk in doc["link"]}
    assert status == 200 and rels == {"self", "next", "previous"} and doc["total"] == 128
    assert get(client, f"{API}/Observation?date=yesterday", t)[0] == 400


def test_tokens_revoked_expired_absent_and_roles(world: World, client: TestClient,
                                                 token_for: Callable[..., str],
                                                 tmp_path: Path) -> None:
    t = token_for("doc1", "--expires-days", "30")
    assert get(client, f"{API}/Observation", t)[0] == 200
    assert get(client, f"{API}/Observation", "clk_forged")[0] == 401
    r = client.get(f"{API}/Observation")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    with world.conn() as conn:
        conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second'")
    assert get(client, f"{API}/Observation", t)[0] == 401
    t2 = token_for("doc1")
    with world.conn() as conn:
        row = conn.execute("SELECT max(id) FROM api_tokens").fetchone()
        stored = [bytes(r[0]) for r in conn.execute("SELECT token_hash FROM api_tokens")]
    assert row is not None and all(t2.encode() not in s for s in stored)
    cfg = tmp_path / "clinic.toml"
    assert clinic_main(["--config", str(cfg), "tokens", "revoke", str(row[0])]) == 0
    assert get(client, f"{API}/Observation", t2)[0] == 401
    # admins and auditors see no clinical data through the API either
    for user in ("adm", "aud"):
        tok = token_for(user)
        status, doc = get(client, f"{API}/Observation", tok)
        assert status == 200 and doc["total"] == 0 and "entry" not in doc
        assert get(client, f"{API}/Observation?subject=Patient/pt-a", tok)[0] == 404


def test_metadata_and_openapi(client: TestClient) -> None:
    r = client.get(f"{API}/metadata")
    assert r.status_code == 200
    CapabilityStatement.model_validate(json.loads(r.text))
    spec = client.get(f"{API}/openapi.json").json()
    assert spec["openapi"].startswith("3.") and f"{API}/Observation" in spec["paths"]


def test_nul_in_a_search_is_a_400_outcome_and_views_nothing(
        world: World, client: TestClient, token_for: Callable[..., str]) -> None:
    t = token_for("doc1")

    def views() -> int:
        with world.conn() as conn:
            row = conn.execute("SELECT count(*) FROM audit_log "
                               "WHERE action LIKE 'view.%'").fetchone()
        assert row is not None
        return int(row[0])

    before = views()
    for query in ("subject=Patient/pt-a%00", "patient=pt-a%00", "subject=Patient/pt-a&date=%00",
                  "subject=Patient/pt-a&_count=5%00"):
        status, doc = get(client, f"{API}/Observation?{query}", t)
        assert status == 400, query
        assert doc["resourceType"] == "OperationOutcome"
        assert "cannot be stored" in doc["issue"][0]["diagnostics"]
    assert views() == before
    # kept: a NUL code matches nothing, a NUL id is an Observation that does not exist
    status, doc = get(client, f"{API}/Observation?patient=pt-a&code=8867-4%00", t)
    assert status == 200 and doc["total"] == 0
    assert get(client, f"{API}/Observation/abc%00", t)[0] == 404
