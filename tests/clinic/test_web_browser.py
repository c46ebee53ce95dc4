"""The web app in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser) against `clinic serve`'s server over real TLS. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from clinic.alerts import store as alert_store
from clinic.alerts.rules import Kind
from tests.clinic.web_support import PASSWORD, World, https_server, seed, web_cfg

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]



@pytest.fixture
def browser() -> Iterator[Browser]:
    # no skip: a missing browser is a setup fault to see, not a test to pass over
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _sign_in(page: Page, base: str, user: str, otp: str) -> None:
    page.goto(base + "/signin")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=otp]", otp)
    page.click("form.signin button[type=submit]")


def test_clinician_in_a_real_browser(dsn: str, tmp_path: Path,
                                     browser: Browser) -> None:
    world: World = seed(dsn)
    cfg = web_cfg(dsn, tmp_path, time_zone="Europe/Berlin")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with https_server(cfg, world.ring, poll_s=0.5) as base:
        ctx = browser.new_context(ignore_https_errors=True)
        page = ctx.new_page()
        doc1 = world.users["doc1"]

        # a wrong second factor stays on the sign-in form
        wrong = "000000" if doc1.otp() != "000000" else "111111"
        _sign_in(page, base, "doc1", wrong)
        assert page.locator("input[name=otp]").count() == 1
        assert "Sign-in failed" in page.inner_text("main")
        page.screenshot(path=str(shots / "signin-refused.png"))

        _sign_in(page, base, "doc1", doc1.otp())
        page.wait_for_url(base + "/patients")
        rows = page.locator("[data-patient]")
        assert sorted(rows.nth(i).get_attribute("data-patient") or ""
                      for i in range(rows.count())) == ["pt-a", "pt-b"]
        assert "Times in Europe/Berlin" in page.inner_text("footer")
        page.screenshot(path=str(shots / "patients.png"), full_page=True)

        resp = page.goto(base + "/patients/pt-a")
        assert resp is not None and resp.status == 200
        assert page.locator("main svg").count() == 3
        text = page.inner_text("main")
        assert "bpm" in text and "mg/dL" in text and ("CET" in text or "CEST" in text)
        page.screenshot(path=str(shots / "patient.png"), full_page=True)

        # another clinician's patient: 404, like a patient that does not exist
        other = page.goto(base + "/patients/pt-c")
        assert other is not None and other.status == 404

        # an alert that opens appears live (server-sent events), and is acknowledged
        page.goto(base + "/patients/pt-a")
        page.wait_for_function("document.body.dataset.live !== undefined")
        now = dt.datetime.now(dt.UTC)
        with world.conn() as conn, conn.transaction():
            aid = alert_store.open_alert(conn, "pt-a", Kind.GLUCOSE_HIGH, now, "test", now)
        page.wait_for_selector(f'[data-alert="{aid}"] form.ack', timeout=20_000)
        page.screenshot(path=str(shots / "alert-live.png"), full_page=True)
        page.fill(f'[data-alert="{aid}"] input[name=note]', "called, insulin taken")
        page.click(f'[data-alert="{aid}"] button[type=submit]')
        page.wait_for_selector(f'[data-alert="{aid}"].alert-acknowledged')
        assert "called, insulin taken" in page.inner_text(f'[data-alert="{aid}"]')

        # an expired session (idle past the timeout) is sent back to the sign-in page
        with world.conn() as conn:
            conn.execute("UPDATE web_sessions SET last_seen = last_seen - interval '1 day'")
        page.goto(base + "/patients")
        assert page.url == base + "/signin"
        assert page.locator("input[name=username]").count() == 1
        ctx.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "alert-live.png", "patient.png", "patients.png", "signin-refused.png"]
