"""`clinic serve`'s real server over real TLS: protocol floor, headers on the wire, sign-in
with a TOTP code, and live updates as server-sent events."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from clinic.web import security as sec
from clinic.web.serve import make_server
from tests.clinic.web_support import (
    HUB_A,
    PASSWORD,
    https_server,
    seed,
    store,
    web_cfg,
    write_tls_pair,
)
from tests.support.vault_support import hr


def _ctx(cert: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def _handshake(base: str, ctx: ssl.SSLContext) -> str:
    host, port = base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return str(tls.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_floor_is_1_2(dsn: str, tmp_path: Path) -> None:
    world = seed(dsn)
    cfg = web_cfg(dsn, tmp_path)
    write_tls_pair(cfg.web.tls_cert, cfg.web.tls_key)
    server = make_server(cfg, world.ring)
    assert server.config.ssl is not None
    assert server.config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    with https_server(cfg, world.ring) as base:
        assert _handshake(base, _ctx(cfg.web.tls_cert, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
        assert _handshake(base, _ctx(cfg.web.tls_cert)) == "TLSv1.3"
        old = _ctx(cfg.web.tls_cert, ssl.TLSVersion.TLSv1_1)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(base, old)


def test_sign_in_headers_and_live_events_over_https(dsn: str, tmp_path: Path) -> None:
    world = seed(dsn)
    cfg = web_cfg(dsn, tmp_path)
    with https_server(cfg, world.ring, poll_s=0.2) as base, httpx.Client(
            base_url=base, verify=_ctx(cfg.web.tls_cert), timeout=20) as c:
        page = c.get("/signin")
        for name, value in sec.SECURITY_HEADERS:
            assert page.headers[name] == value
        m = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert m
        r = c.post("/signin", data={"csrf": m.group(1), "username": "doc1",
                                    "password": PASSWORD, "otp": world.users["doc1"].otp()})
        assert r.status_code == 303 and r.headers["location"] == "/patients"
        assert c.get("/patients").status_code == 200
        with c.stream("GET", "/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            assert next(lines) == "retry: 5000"
            with world.conn() as conn:
                store(conn, world.ring, HUB_A, "pt-b", [hr(0, patient="pt-b", bpm=70)])
            assert next(line for line in lines if line.startswith("event:")) == "event: update"
        # a stream for another clinician's patient is refused before it starts
        assert c.get("/events?patient=pt-c").status_code == 404
