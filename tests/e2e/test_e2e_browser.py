"""The whole chain in a real browser: simulator -> `edge run` ([e2e] sign+encrypt) -> mosquitto
-> `clinic ingest` -> PostgreSQL -> `clinic serve`'s server over TLS -> Debian's Chromium
(Playwright, never a downloaded browser). A clinician signs in with password + TOTP and the
patient page shows the heart rate and glucose the hub delivered. Screenshots go to tmp_path."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import sync_playwright

from clinic.web import clinical, stats
from edge.testing import eventually
from tests.clinic.web_support import PASSWORD, add_clinician, https_server, web_cfg
from tests.e2e.clinic_rig import ClinicRig, clinic_rig, ingest_ids
from tests.e2e.harness import E2E, HUB_ID

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PATIENT, OTHER = "patient-a", "patient-b"


def _stored_kinds(rig: ClinicRig, patient: str) -> dict[str, int]:
    """Stored Observations of ``patient`` by kind (heart_rate, glucose)."""
    with psycopg.connect(rig.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT code, count(*) FROM observations WHERE patient = %s "
                            "GROUP BY code", (patient,)).fetchall()
    out = {"heart_rate": 0, "glucose": 0}
    for code, n in rows:
        for kind, codes in clinical.KIND_CODES.items():
            if code in codes:
                out[kind] += int(n)
    return out


def test_a_patient_page_shows_vitals_that_came_through_the_whole_chain(tmp_path: Path) -> None:
    # no skip: a missing browser is a setup fault to see, not a test to pass over
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: apt-get install chromium"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with clinic_rig(tmp_path / "clinic") as rig, E2E(
        tmp_path / "rig", devices="hr:1,glucose:1", clinic_ids=ingest_ids("1"),
        recipient_key=rig.recipient_key,
    ) as e:
        rig.configure(e.pki, e.broker.port, ["1"])
        rig.enroll(HUB_ID, [PATIENT, OTHER])
        rig.start_worker("1")
        rig.wait_subscribed()
        e.grant(PATIENT)
        e.pair("SIM-HR-1", PATIENT)
        e.pair("SIM-GLU-1", PATIENT)
        gw = e.gateway()
        asyncio.run(eventually(
            lambda: all(n > 0 for n in _stored_kinds(rig, PATIENT).values()), within_s=90,
            what="heart rate and glucose stored by the clinic"))
        # freeze the data: no new readings, the hub's queue empty, everything delivered stored
        e.quiesce(gw, ["SIM-HR-1", "SIM-GLU-1"])
        assert gw.stop() == 0
        delivered = {rid for rid, _, done, _ in e.vault_rows() if done}
        asyncio.run(eventually(lambda: set(rig.stored_ids()) >= delivered, within_s=60,
                               what="every delivered reading stored"))
        with psycopg.connect(rig.dsn, autocommit=True) as conn:
            hr = clinical.latest(conn, rig.ring, PATIENT, "heart_rate")
            gl = clinical.latest(conn, rig.ring, PATIENT, "glucose")
        assert hr is not None and hr.value is not None
        assert gl is not None and gl.value is not None
        hr_text = f"{hr.value:.0f} bpm"
        gl_text = f"{stats.glucose_text(gl.value, 'mg/dL')} mg/dL"

        doc = add_clinician(rig.dsn, rig.ring, "doc-e2e", [PATIENT])
        cfg = web_cfg(rig.dsn, tmp_path / "web")
        (tmp_path / "web").mkdir()
        with https_server(cfg, rig.ring) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(base + "/signin")
                page.fill("input[name=username]", doc.name)
                page.fill("input[name=password]", PASSWORD)
                page.fill("input[name=otp]", doc.otp())
                page.click("form.signin button[type=submit]")
                page.wait_for_url(base + "/patients")
                rows = page.locator("[data-patient]")
                assert [rows.nth(i).get_attribute("data-patient")
                        for i in range(rows.count())] == [PATIENT]  # not patient-b
                page.screenshot(path=str(shots / "patients.png"), full_page=True)

                resp = page.goto(f"{base}/patients/{PATIENT}")
                assert resp is not None and resp.status == 200
                summary = page.inner_text("main section.summary")
                assert hr_text in summary and gl_text in summary, (summary, hr_text, gl_text)
                assert page.locator("main svg").count() == 3
                # the 24-hour chart is drawn from the per-minute rollups ingest kept (a line, or
                # a dot when every reading fell in one bucket)
                assert page.locator("main svg .hr-mean").count() == 2
                assert page.locator("table.readings tbody tr").count() > 0
                page.screenshot(path=str(shots / "patient.png"), full_page=True)
            finally:
                browser.close()
        rig.stop_workers()
        assert PATIENT not in rig.log_text()
    assert sorted(f.name for f in shots.iterdir()) == ["patient.png", "patients.png"]
    assert all(f.stat().st_size > 0 for f in shots.iterdir())
