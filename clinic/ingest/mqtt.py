"""The subscriber shell: a pinned mTLS connection (edge.uplink.tls / pins, reused), then a paho
MQTT 5 client with manual acknowledgement on a persistent session.

edge's :mod:`edge.uplink.mqtt` is a publisher (clean start, no subscribe, paho acks on
delivery), so this is its small receiving twin. paho runs its network loop in its own thread;
messages go into a bounded queue (the broker never sends more than ``receive_maximum``
unacknowledged ones), and :meth:`Subscription.ack` sends the PUBACK after the caller committed.
Each connection has a generation number: an ack for a message from a dead connection is
dropped (its mid may already name another message), and the broker re-sends the message.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from clinic.config import BrokerSection
from clinic.errors import ClinicError
from edge.config import UplinkConfig
from edge.errors import EdgeError
from edge.uplink.pins import PinVerifier
from edge.uplink.tls import build_context, failure_reason, open_tls


class BrokerUnavailable(ClinicError):
    """The broker cannot be reached, refused us, or failed the pin check; ``reason`` says."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    generation: int
    mid: int
    topic: str
    payload: bytes
    dup: bool


#: a topic filter and its MQTT 5 subscription options
Filter = tuple[str, SubscribeOptions]


def uplink_view(cfg: BrokerSection, identity: tuple[Path, Path]) -> UplinkConfig:
    """The broker section in the shape edge's TLS code takes (same checks, same context),
    with one worker's certificate and key (``identity``)."""
    cert, key = identity
    return UplinkConfig(
        host=cfg.host, port=cfg.port, ca_file=cfg.ca_file, client_cert=cert,
        client_key=key, pins=cfg.pins, tls_min_version=cfg.tls_min_version,
        topic_prefix=cfg.topic_prefix, keepalive_s=cfg.keepalive_s,
    )


class _PinnedClient(paho.Client):
    """paho on a socket that already passed the TLS and pin checks."""

    def __init__(self, sock: ssl.SSLSocket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pinned: ssl.SSLSocket | None = sock

    def _create_socket(self) -> Any:
        sock, self._pinned = self._pinned, None
        if sock is None:  # never let paho open an unverified socket on its own
            raise ConnectionError("pinned socket already used")
        return sock


class Subscription:
    """One connection. ``inbox`` receives :class:`Message`; ``closed`` is set when it ends.
    ``identity`` is the worker's own certificate and key: the broker makes the certificate's
    CN the client id, so it must be ``client_id``."""

    _generations = 0

    def __init__(self, cfg: BrokerSection, client_id: str, topics: list[Filter],
                 inbox: queue.Queue[Message], *, identity: tuple[Path, Path]) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._identity = identity
        self._topics = topics
        self._inbox = inbox
        Subscription._generations += 1
        self.generation = Subscription._generations
        self.closed = threading.Event()
        self._closing = threading.Event()
        self.close_reason = ""
        self._ready = threading.Event()
        self._error: BrokerUnavailable | None = None
        self._client: _PinnedClient | None = None

    def open(self, timeout_s: float = 10.0) -> None:
        """TLS + pins, CONNECT (clean start off, session kept), SUBSCRIBE; blocking."""
        up = uplink_view(self._cfg, self._identity)
        try:
            ctx = build_context(up)
            verifier = PinVerifier.from_files(up.pins, up.ca_file)
            session = asyncio.run(open_tls(up.host, up.port, ctx, verifier,
                                           connect_timeout=timeout_s))
        except EdgeError as exc:
            raise BrokerUnavailable(failure_reason(exc), str(exc)) from exc
        client = _PinnedClient(
            session.sock, callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id, protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False, manual_ack=True,
        )
        client.max_inflight_messages = 0
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._cfg.session_expiry_s
        props.ReceiveMaximum = self._cfg.receive_maximum
        self._client = client
        try:
            rc = client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s,
                                clean_start=False, properties=props)
        except (OSError, ValueError) as exc:
            session.sock.close()
            raise BrokerUnavailable("unreachable", "MQTT connect failed") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable("unreachable", paho.error_string(rc))
        client.loop_start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.close()
            raise self._error or BrokerUnavailable("unreachable", "no CONNACK/SUBACK in time")

    # --- paho callbacks (paho's network thread) -------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Any) -> None:
        if rc.is_failure:
            self._error = BrokerUnavailable("not_authorised" if int(rc.value) in (
                0x86, 0x87, 0x8A, 0x8C) else "refused", f"CONNACK {rc.getName()}")
            self._ready.set()
            return
        client.subscribe(list(self._topics))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      rcs: list[ReasonCode], props: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            self._error = BrokerUnavailable("not_authorised", "broker refused the subscription")
        self._ready.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # Blocks paho's thread when full: back-pressure instead of an unbounded queue. Not
        # forever: once this connection is closing nobody may drain the queue, and close()
        # joins this thread; a message dropped here is unacknowledged, so the broker re-sends.
        m = Message(self.generation, msg.mid, msg.topic, bytes(msg.payload), bool(msg.dup))
        # A resumed session's messages can come before the SUBACK (the subscription lives in
        # the session): they prove the connection works, so let open() return and the caller
        # drain the inbox — else a full inbox would hold the SUBACK behind it until open()
        # gave up, and the worker would reconnect for ever.
        self._ready.set()
        while not self._closing.is_set():
            try:
                self._inbox.put(m, timeout=0.2)
                return
            except queue.Full:
                continue

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Any) -> None:
        self.close_reason = rc.getName()
        self.closed.set()
        self._ready.set()

    # --- caller's thread --------------------------------------------------------------------

    def ack(self, msg: Message) -> bool:
        """PUBACK ``msg`` if it came on this connection (else the broker re-sends it)."""
        if msg.generation != self.generation or self.closed.is_set() or self._client is None:
            return False
        return self._client.ack(msg.mid, 1) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def close(self) -> None:
        """DISCONNECT (the session and unacknowledged messages stay with the broker)."""
        self._closing.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.closed.set()
