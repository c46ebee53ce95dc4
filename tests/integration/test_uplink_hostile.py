"""Hostile and misconfigured brokers: the forwarder sends nothing, says why (state, log,
audit) and keeps the readings; `edge uplink probe` names the same reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.config import UplinkConfig
from edge.daemon.control import ControlServer
from edge.testing import eventually
from edge.testing.uplink import forwarding
from edge.uplink.mqtt import TlsMqttConnector
from edge.uplink.probe import probe
from edge.uplink.stats import ForwarderState
from tests.support.mosquitto import (
    REPO,
    Broker,
    Received,
    ids_in,
    start_broker,
    start_tls12_only_peer,
    subscriber,
)
from tests.support.pki import TestPki, make_pki
from tests.support.uplink_fakes import (
    FakeOutbox,
    RecordingConnector,
    make_readings,
    real_forwarder,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("hostile"), "hub-1")


@dataclass
class Peer:
    port: int
    log: Callable[[], str]


@contextmanager
def hostile_peer(kind: str, tmp_path: Path, tpki: TestPki) -> Iterator[Peer]:
    if kind == "tls12_only":
        srv = start_tls12_only_peer(tmp_path, tpki)
        try:
            yield Peer(srv.port, srv.log_text)
        finally:
            srv.stop()
        return
    if kind == "client_cert_refused":
        broker = start_broker(tmp_path, tpki, client_ca=tpki.dir / "other-ca.crt")
    elif kind == "not_a_server_cert":
        broker = start_broker(tmp_path, tpki, server=tpki.admin)  # clientAuth only
    else:
        broker = start_broker(tmp_path, tpki, server=tpki.hostile[kind])
    try:
        yield Peer(broker.port, broker.log_text)
    finally:
        broker.stop()



CASES = [
    ("same_ca_other_key", "pin_mismatch", "uplink.pin_mismatch"),
    ("wrong_host", "hostname_mismatch", "uplink.tls_refused"),
    ("expired", "certificate_expired", "uplink.tls_refused"),
    ("other_ca", "unknown_ca", "uplink.tls_refused"),
    ("tls12_only", "tls_version", "uplink.tls_refused"),
    ("client_cert_refused", "client_certificate_refused", "uplink.tls_refused"),
    ("not_a_server_cert", "certificate_invalid", "uplink.tls_refused"),
]


@pytest.mark.parametrize(("kind", "reason", "action"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_broker_gets_nothing(
    kind: str, reason: str, action: str, tmp_path: Path, tpki: TestPki
) -> None:
    outbox = FakeOutbox()
    ids = outbox.add_readings(make_readings(20, ["patient-a"]))
    with hostile_peer(kind, tmp_path, tpki) as peer:
        cfg = tpki.uplink_config(peer.port)
        rec = RecordingConnector(TlsMqttConnector(cfg, tpki.hub_id))
        fwd = real_forwarder(cfg, tpki.hub_id, outbox, connector=rec)
        with capture_logs() as logs:
            async with forwarding(fwd):
                await eventually(lambda: len(rec.errors) >= 2, within_s=15.0)
                assert fwd.stats().state_label == f"refused:{reason}", rec.errors
        result = await probe(cfg, tpki.hub_id, step_timeout=5)
        log_text = peer.log()

    # Nothing was sent and everything is still pending.
    assert rec.links == [] and rec.log == []
    assert outbox.pending_ids() == set(ids) and outbox.delivered == []
    # The reason is in the audit, the log and the probe's report.
    assert outbox.audits, "refusal not audited"
    assert all(a[:2] == ("uplink", action) for a in outbox.audits)
    events = [e for e in logs if e["event"] in ("uplink.pin_mismatch", "uplink.tls_refused")]
    assert events and all(e["log_level"] == "warning" for e in events)
    assert result.ok is False and result.reason == reason
    assert result.exit_code == 3
    assert any(reason in line for line in result.lines())
    assert "PUBLISH" not in log_text
    if kind == "same_ca_other_key":
        subject = outbox.audits[0][2]
        hostile_pin = tpki.hostile[kind].pin
        assert subject == hostile_pin and result.presented_pin == hostile_pin
        assert events[0]["presented_pin"] == hostile_pin
        # The TLS handshake completed (the broker logged the connection) but no CONNECT came.
        assert "New connection from 127.0.0.1" in log_text
        assert "New client connected" not in log_text
        assert "CONNACK" not in log_text
    elif kind == "client_cert_refused":
        # Our side of the handshake and the pin check passed; the broker refused us.
        assert result.pin_matched == tpki.broker.pin
        assert result.tls_version == "TLSv1.3"
        assert events[0]["reason"] == reason
        assert "OpenSSL Error" in log_text
    elif kind == "tls12_only":
        # The peer saw our hello offer nothing it speaks.
        assert "unsupported protocol" in log_text
    else:
        assert events[0]["reason"] == reason
        assert "New client connected" not in log_text
        # The handshake was aborted with a TLS alert; the broker logged it.
        assert "OpenSSL Error" in log_text


@pytest.fixture
def broker(tmp_path: Path, tpki: TestPki) -> Iterator[Broker]:
    b = start_broker(tmp_path, tpki)
    try:
        yield b
    finally:
        b.stop()


async def test_probe_success_reports_tls_pin_and_status(broker: Broker, tpki: TestPki) -> None:
    cfg = tpki.uplink_config(broker.port, pins=["sha256/" + "A" * 43 + "=", tpki.ca.pin])
    result = await probe(cfg, tpki.hub_id)
    assert result.ok, result.lines()
    assert result.exit_code == 0
    assert result.tls_version == "TLSv1.3"
    assert result.pin_matched == tpki.ca.pin and result.pin_matched_on == "ca"
    assert result.connected and result.status_published
    assert result.status_topic == "edge/v1/hub-1/status"
    text = broker.wait_for_log("Received PUBLISH from hub-1")
    assert "edge/v1/hub-1/status" in text
    assert "/obs/" not in text  # never a reading


async def test_probe_not_authorised_when_the_acl_refuses_the_status(
    broker: Broker, tpki: TestPki
) -> None:
    cfg = tpki.uplink_config(broker.port, topic_prefix="elsewhere/v1")
    result = await probe(cfg, tpki.hub_id)
    assert not result.ok and result.reason == "not_authorised"
    assert result.connected and not result.status_published
    assert result.exit_code == 3


async def test_probe_unreachable(tpki: TestPki) -> None:
    from tests.support.mosquitto import free_port

    result = await probe(tpki.uplink_config(free_port()), tpki.hub_id, step_timeout=2)
    assert result.reason == "unreachable" and result.exit_code == 1


def _gateway_toml(tmp_path: Path, cfg: UplinkConfig, tpki: TestPki, pins: list[str]) -> Path:
    path = tmp_path / "gateway.toml"
    pin_list = ", ".join(f'"{p}"' for p in pins)
    path.write_text(
        f'[hub]\nid = "{tpki.hub_id}"\n\n'
        f'[uplink]\nhost = "{cfg.host}"\nport = {cfg.port}\n'
        f'ca_file = "{cfg.ca_file}"\nclient_cert = "{cfg.client_cert}"\n'
        f'client_key = "{cfg.client_key}"\npins = [{pin_list}]\n\n'
        '[e2e]\nmode = "off"\n\n'
        # the probe asks the daemon here first (nobody listens unless a test serves it)
        f'[daemon]\ncontrol_socket = "{tmp_path / "run" / "control.sock"}"\n'
    )
    return path


def test_probe_command_line(broker: Broker, tpki: TestPki, tmp_path: Path) -> None:
    cfg = tpki.uplink_config(broker.port)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "uplink",
            "probe",
            "--config",
            str(_gateway_toml(tmp_path, cfg, tpki, [tpki.broker.pin])),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "probe: OK" in ok.stdout and "TLSv1.3" in ok.stdout
    assert f"matched (leaf) {tpki.broker.pin}" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "uplink",
            "probe",
            "--config",
            str(_gateway_toml(tmp_path, cfg, tpki, [tpki.hostile["same_ca_other_key"].pin])),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert bad.returncode == 3
    assert "FAILED — pin_mismatch" in bad.stdout
    assert f"broker presented {tpki.broker.pin}" in bad.stdout


async def test_open_tls_pins_before_anything_is_sent(broker: Broker, tpki: TestPki) -> None:
    import socket

    from edge.uplink.pins import PinVerifier
    from edge.uplink.tls import build_context, open_tls

    cfg = tpki.uplink_config(broker.port)
    session = await open_tls(
        cfg.host, cfg.port, build_context(cfg), PinVerifier.from_files(cfg.pins, cfg.ca_file)
    )
    try:
        assert session.version == "TLSv1.3"
        assert session.pin.matched == tpki.broker.pin and session.pin.matched_on == "leaf"
        assert session.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert session.sock.getblocking() is False
    finally:
        session.sock.close()


async def test_tls12_peer_is_accepted_when_the_floor_is_12(tmp_path: Path, tpki: TestPki) -> None:
    from edge.uplink.pins import PinVerifier
    from edge.uplink.tls import build_context, open_tls

    srv = start_tls12_only_peer(tmp_path, tpki)
    try:
        cfg = tpki.uplink_config(srv.port, tls_min_version="1.2")
        session = await open_tls(
            cfg.host, cfg.port, build_context(cfg), PinVerifier.from_files(cfg.pins, cfg.ca_file)
        )
        session.sock.close()
    finally:
        srv.stop()
    assert session.version == "TLSv1.2"
    assert session.cipher.startswith("ECDHE-") and "GCM" in session.cipher


@pytest.mark.parametrize(("version", "connack"), [("5", b"\x20\x03\x00\x87\x00"),
                                                   ("3.1.1", b"\x20\x02\x00\x05")])
async def test_connack_refusal_is_not_authorised(
    tpki: TestPki, version: str, connack: bytes
) -> None:
    """A broker (here a minimal TLS server) that answers CONNECT with "not authorised"."""
    import ssl

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(tpki.broker.cert), str(tpki.broker.key))
    server_ctx.load_verify_locations(str(tpki.ca.cert))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    got_connect = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        first = await r.read(1)
        if first == b"\x10":  # CONNECT
            got_connect.set()
            w.write(connack)
            await w.drain()
        await r.read(100)
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = tpki.uplink_config(port, mqtt_version=version)
        result = await probe(cfg, tpki.hub_id, step_timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert got_connect.is_set()
    assert result.reason == "not_authorised" and result.exit_code == 3
    assert result.pin_matched == tpki.broker.pin  # the TLS part succeeded


async def test_probe_refuses_while_the_gateway_runs_and_force_takes_over(
    broker: Broker, tpki: TestPki, tmp_path: Path
) -> None:
    """One certificate, one session: the broker gives the probe (the hub's certificate) the
    hub's client id, so a probe would take a running gateway's connection over and the broker
    would publish the gateway's Last Will. `edge uplink probe` asks the daemon's control
    socket first and refuses with the daemon's uplink state; `--force` takes over, as its help
    says."""
    # A long reconnect delay: after the forced takeover the gateway does not take its session
    # back while the probe is still at work.
    cfg = tpki.uplink_config(broker.port, reconnect_base_s=30, reconnect_cap_s=30)
    outbox = FakeOutbox()
    rec = RecordingConnector(TlsMqttConnector(cfg, tpki.hub_id))
    fwd = real_forwarder(cfg, tpki.hub_id, outbox, connector=rec)

    async def daemon_status(request: Mapping[str, object], actor: str) -> object:
        # the running daemon's `status` answer, its uplink part from the live forwarder
        return {"source": "daemon", "hub": tpki.hub_id,
                "uplink": {"state": fwd.stats().state_label, "stats": fwd.stats().as_dict()}}

    control = ControlServer(tmp_path / "run" / "control.sock", {"status": daemon_status})
    config = _gateway_toml(tmp_path, cfg, tpki, [tpki.broker.pin])

    async def probe_cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "edge", "uplink", "probe", "--config", str(config), *extra],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def states(msgs: list[Received]) -> list[str]:
        return [json.loads(m.payload)["state"] for m in msgs if m.topic.endswith("/status")]

    await control.start()
    try:
        with subscriber(broker, tpki, topic="edge/v1/hub-1/#") as sub:
            async with forwarding(fwd):
                await eventually(lambda: fwd.state is ForwarderState.CONNECTED, within_s=15.0)
                assert await asyncio.to_thread(sub.wait_for, lambda m: states(m) == ["online"])

                refused = await probe_cli()
                assert refused.returncode == 2, refused.stdout + refused.stderr
                err = refused.stderr.strip().splitlines()
                assert len(err) == 1 and refused.stdout == "", refused.stderr
                assert "daemon is running and holds hub-1's broker connection (uplink: " \
                    "connected)" in err[0]
                assert "`edge status`" in err[0] and "--force" in err[0]
                # The gateway kept its session: a reading sent now arrives (in order, after
                # anything the broker would have published for a takeover), and its status
                # never left "online".
                late = outbox.add_readings(make_readings(1, ["patient-a"]))
                fwd.wake()
                assert await asyncio.to_thread(sub.wait_for, lambda m: ids_in(m) == late)
                assert states(sub.snapshot()) == ["online"]
                assert fwd.state is ForwarderState.CONNECTED and fwd.stats().sessions == 1
                assert not rec.links[0].is_closed

                forced = await probe_cli("--force")
                assert forced.returncode == 0, forced.stdout + forced.stderr
                assert "probe: OK" in forced.stdout
                # What --force documents: the probe took the session over, so the broker
                # published the gateway's Will, then the probe's own (non-retained) status.
                assert await asyncio.to_thread(
                    sub.wait_for, lambda m: states(m) == ["online", "offline", "probe"]
                ), states(sub.snapshot())
                await eventually(lambda: fwd.state is ForwarderState.BACKOFF, within_s=15.0)
    finally:
        await control.close()
    log = broker.log_text()
    # The refused probe never connected: the hub's identity connected twice (gateway, forced
    # probe); the probe carries no Last Will of its own, the gateway does.
    assert log.count("as hub-1 (") == 2
    gateway, probe_connect = log.split("as hub-1 (")[1:3]
    assert "Will message specified" in gateway.splitlines()[1]
    assert probe_connect.splitlines()[1].endswith("No will message specified.")
