"""A real mosquitto for tests and the demo: TLS-only, on a free 127.0.0.1 port, throwaway PKI.

    pki = make_pki(tmp_path, "hub-1", clinicians={"clinician-1": ["patient-a"]})
    broker = start_broker(tmp_path, pki)          # renders config/mosquitto/*, starts, waits
    ...                                           # broker.host, broker.port, broker.log_path
    broker.stop(); broker.start()                 # a restart keeps the port
    broker.close()

Also here: :class:`Subscriber` (a paho client in its own thread that counts what arrives),
:func:`start_tls12_only_peer` (``openssl s_server -tls1_2``) and :class:`TcpProxy` (forwards,
cuts, or black-holes one direction on command) for fault tests.

Never uses port 1883 and never the machine's broker. A missing binary is an error, not a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devtools.broker import (
    REPO,
    STARTUP_TIMEOUT_S,
    Broker,
    free_port,
    start_dev_broker,
)
from edge.uplink.pki import CertFiles
from tests.support.pki import TestPki

__all__ = ["REPO", "Broker", "free_port", "start_broker"]


def start_broker(
    tmpdir: Path,
    pki: TestPki,
    *,
    port: int | None = None,
    server: CertFiles | None = None,
    prefix: str = "edge/v1",
    name: str = "mosquitto",
    debug: bool = True,
    client_ca: Path | None = None,
    persistent: bool = False,
    hubs: Sequence[str] | None = None,
    clinic_ids: Sequence[str] = (),
    observers: Sequence[str] | None = None,
) -> Broker:
    """The dev broker (:func:`devtools.broker.start_dev_broker`) under ``tmpdir/<name>``
    for a test PKI. ``server`` picks the broker certificate (default: the good one; hostile
    ones are in ``pki.hostile``); ``client_ca`` replaces the CA client certificates must chain
    to.

    The ACL is the shipped rendering (:func:`devtools.broker.render_acl`) of: ``hubs``
    (default: the PKI's hub), ``clinic_ids`` (the clinic's ingest identities, the only readers
    of observations), the PKI's clinicians (no access) and admin, plus ``observers`` —
    identities that read every topic, as the broker operator sees it. ``observers`` defaults to
    the PKI's admin so that tests can watch what reaches the broker with :func:`subscriber`;
    pass ``observers=()`` for exactly what a production ACL grants
    (tests/integration/test_broker_acl.py does)."""
    cert = server or pki.broker
    return start_dev_broker(
        Path(tmpdir) / name,
        cafile=client_ca or pki.ca.cert,
        certfile=cert.cert,
        keyfile=cert.key,
        clinicians=pki.clinicians,
        admins=[pki.admin_name],
        hubs=[pki.hub_id] if hubs is None else hubs,
        clinic_ids=clinic_ids,
        observers=[pki.admin_name] if observers is None else observers,
        prefix=prefix,
        port=port,
        debug=debug,
        persistent=persistent,
    )


# --- a subscriber that counts --------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    content_type: str | None
    message_expiry: int | None
    #: the broker re-delivered it to this subscriber (not a re-send by the publisher)
    dup: bool = False


@dataclass
class Subscriber:
    """A paho client (own network thread) subscribed to ``topic`` with QoS 1."""

    broker: Broker
    identity: CertFiles
    ca: Path
    topic: str = "#"
    client_id: str = "subscriber"
    #: keep the session (and queued messages) across reconnects and broker restarts
    persistent_session: bool = False
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.identity.cert), str(self.identity.key))
        self._client.tls_set_context(ctx)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # paho's callbacks: userdata and flags are untyped there (Any).
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if not rc.is_failure:
            self._subscribed.clear()
            client.subscribe(self.topic, qos=1)
            self._connected.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        rec = Received(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retain=bool(msg.retain),
            content_type=getattr(props, "ContentType", None),
            message_expiry=getattr(props, "MessageExpiryInterval", None),
            dup=bool(msg.dup),
        )
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and wait for the SUBACK."""
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = None
        if self.persistent_session:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
        self._client.connect(
            self.broker.host, self.broker.port, keepalive=30,
            clean_start=not self.persistent_session, properties=props,
        )
        self._client.loop_start()
        self.wait_subscribed(timeout)
        return self

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Wait for a (re)subscription to be acknowledged (e.g. after a broker restart)."""
        if not self._subscribed.wait(timeout):
            raise AssertionError("subscriber got no SUBACK")

    def reset_subscribed(self) -> None:
        """Forget the last SUBACK (call before restarting the broker)."""
        self._subscribed.clear()

    def wait_for(self, pred: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``pred(messages)`` is true; returns whether it became true."""
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.messages), timeout)

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def subscriber(
    broker: Broker, pki: TestPki, *, identity: str | None = None, topic: str = "#",
    client_id: str | None = None, persistent_session: bool = False,
) -> Subscriber:
    """A (not yet started) subscriber as the admin — which :func:`start_broker` makes a
    development observer (reads every topic) unless ``observers=()`` — or as the named
    clinician, to whom the shipped ACL delivers nothing. The broker replaces ``client_id``
    with the certificate's CN, so two subscribers with one identity take each other's place."""
    ident = pki.admin if identity is None else pki.clinician(identity)
    return Subscriber(
        broker=broker, identity=ident, ca=pki.ca.cert, topic=topic,
        client_id=client_id or f"sub-{identity or 'admin'}",
        persistent_session=persistent_session,
    )


# --- a TLS 1.2-only peer ----------------------------------------------------------------------


@dataclass
class OpenSslServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_tls12_only_peer(tmpdir: Path, pki: TestPki) -> OpenSslServer:
    """``openssl s_server -tls1_2`` with the good broker certificate (mosquitto's
    ``tls_version`` is only a floor, so it cannot stand in for an old peer)."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise RuntimeError("openssl is not installed: apt-get install openssl")
    port = free_port()
    log_path = Path(tmpdir) / "s_server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            openssl, "s_server", "-tls1_2", "-accept", f"127.0.0.1:{port}",
            "-cert", str(pki.broker.cert), "-key", str(pki.broker.key),
            "-CAfile", str(pki.ca.cert), "-Verify", "1", "-naccept", "50",
        ],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"openssl s_server exited: {log_path.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            # The probing connection itself is harmless (no TLS spoken).
            return OpenSslServer(proc, port, log_path)
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("openssl s_server did not start")


# --- a TCP proxy for connection faults ------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. ``cut()`` resets every connection;
    ``blackhole(True)`` stops forwarding broker -> client (PUBACKs never come) while the
    connection stays open. Runs on the caller's asyncio loop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._blackhole = False
        self.connections = 0
        #: client -> broker bytes forwarded, per connection
        self.upstream_bytes: list[int] = []

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def blackhole(self, on: bool) -> None:
        self._blackhole = on

    def cut(self) -> None:
        """Reset every open connection (RST, as a pulled cable would eventually)."""
        for cw, bw in self._conns:
            for w in (cw, bw):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                w.close()
        self._conns.clear()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        self.connections += 1
        idx = len(self.upstream_bytes)
        self.upstream_bytes.append(0)
        self._conns.append((cw, bw))

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await r.read(65536):
                    if up:
                        self.upstream_bytes[idx] += len(data)
                    elif self._blackhole:
                        continue
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(cr, bw, True), pump(br, cw, False), return_exceptions=True)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def ids_in(messages: Sequence[Received], *, skip_redelivered: bool = False) -> list[str]:
    """Observation identifiers (stable reading ids) in received Bundles, in arrival order.
    ``skip_redelivered`` leaves out the broker's own re-deliveries (DUP set)."""
    import json

    out: list[str] = []
    for m in messages:
        if "/obs/" not in m.topic or (skip_redelivered and m.dup):
            continue
        doc = json.loads(m.payload)
        for entry in doc.get("entry", []):
            res = entry.get("resource", {})
            if res.get("resourceType") == "Observation":
                for ident in res.get("identifier", []):
                    v = ident.get("value", "")
                    if v.startswith("urn:uuid:"):
                        out.append(v.removeprefix("urn:uuid:"))
    return out
