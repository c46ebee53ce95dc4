"""`make demo` as a newcomer runs it: vitals reach the clinician view, the clinicians' web app
answers on the printed URL over TLS and lets the printed demo clinician (password + the TOTP
code the view shows) see the demo patients, then nothing is left."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest

pytestmark = pytest.mark.e2e

SIGN_IN_RE = re.compile(r"^sign in: username (\S+)  password (\S+)  code (\d{6}) ")
WEB_RE = re.compile(r"^web: (https://127\.0\.0\.1:\d+/)$")
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
PATIENT_ROW_RE = re.compile(r'data-patient="([^"]+)"')


def _processes_in(directory: Path) -> list[int]:
    """Pids whose working directory is inside ``directory`` (the demo starts them there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(int(entry.name))
    return found


class Lines:
    """The demo's stdout, line by line, collected by a thread; waits are on a condition."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done or pred(self.lines), timeout) and \
                pred(self.lines)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _sign_in_of(lines: list[str]) -> tuple[str, str, str, str] | None:
    """(url, username, password, code) from the latest sign-in the view printed."""
    url = next((m.group(1) for ln in reversed(lines) if (m := WEB_RE.match(ln))), None)
    cred = next((m for ln in reversed(lines) if (m := SIGN_IN_RE.match(ln))), None)
    if url is None or cred is None:
        return None
    return url, cred.group(1), cred.group(2), cred.group(3)


def test_demo_shows_vitals_of_both_patients_serves_the_web_app_and_stops_everything(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "demo-run"
    env = dict(os.environ, DEMO_SECONDS="30", DEMO_DIR=str(workdir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.demo"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = Lines(proc.stdout)
    err = Lines(proc.stderr)
    try:
        # the first redraw of the view carries the URL and the current code
        assert out.wait_for(lambda ls: _sign_in_of(ls) is not None, 240), (
            out.text() + err.text())
        found = _sign_in_of(out.lines)
        assert found is not None
        url, user, password, code = found

        # The printed URL answers over TLS, with a certificate from the demo's development CA.
        ctx = ssl.create_default_context(cafile=str(workdir / "pki" / "ca.crt"))
        with httpx.Client(base_url=url, verify=ctx, follow_redirects=False,
                          timeout=30) as c:
            page = c.get("/signin")
            assert page.status_code == 200
            assert page.extensions["http_version"] in (b"HTTP/1.1", b"HTTP/2")
            csrf = CSRF_RE.search(page.text)
            assert csrf, page.text
            r = c.post("/signin", data={"csrf": csrf.group(1), "username": user,
                                        "password": password, "otp": code})
            assert r.status_code == 303, r.text
            assert r.headers["location"].endswith("/patients")
            patients = c.get("/patients")
            assert patients.status_code == 200
            assert sorted(PATIENT_ROW_RE.findall(patients.text)) == ["patient-a", "patient-b"]
        rc = proc.wait(240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    out.join(30)
    err.join(30)
    proc.stdout.close()
    proc.stderr.close()
    text = out.text()
    assert rc == 0, text + err.text()
    final = text[text.rindex("patient  "):]  # the last table the clinician saw
    rows = {line.split()[0]: line for line in final.splitlines()[2:] if line.startswith("patient-")}
    assert set(rows) == {"patient-a", "patient-b"}, final
    assert "bpm" in rows["patient-a"] and "bpm" in rows["patient-b"], final
    assert "mg/dL" in rows["patient-a"], final  # the glucose meter's history arrived
    assert "duplicates absorbed" in final
    assert f"Files (PKI, config, vault, logs): {workdir}" in text
    assert _processes_in(workdir) == []
    # what the gateway and the clinic logged at INFO carries no pseudonym
    for log in ("gateway.log", "clinic-ingest.log", "clinic-serve.log"):
        logged = (workdir / log).read_text()
        assert "patient-a" not in logged and "patient-b" not in logged, log
