"""The asyncio shell over paho-mqtt 2.x.

The TCP + TLS connection and the pin check happen first (:func:`edge.uplink.tls.open_tls`);
only then is the verified socket handed to paho
(:class:`~edge.uplink.pinned_client.PinnedClient`), which sends CONNECT on it. paho's network
loop is driven from the event loop on socket readiness (``add_reader`` / ``add_writer``) —
no extra thread, no blocking call. Every QoS 1 publish returns a future keyed by message id
that the PUBACK resolves; a failure reason code or a lost connection fails it.

paho's own in-flight limit is switched off (its queue scan on every PUBACK halves
throughput); callers window in the application, and every ``publish`` return code is checked
(``MQTT_ERR_QUEUE_SIZE`` is returned, not raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import UplinkConfig
from edge.errors import EdgeError, TlsVerificationError, UplinkUnavailable
from edge.log import get_logger
from edge.uplink.pinned_client import PinnedClient
from edge.uplink.pins import PinVerifier
from edge.uplink.ports import LinkInfo, PublishRefused, Will
from edge.uplink.tls import TlsSession, build_context, classify_ssl_error, open_tls

log = get_logger("edge.uplink")

#: seconds between paho's housekeeping calls (keepalive PINGREQ, ping timeout)
MISC_INTERVAL_S = 1.0

# CONNACK reason codes meaning "you are not allowed" (MQTT 5) and their 3.1.1 equivalents
_CONNACK_NOT_AUTHORISED = frozenset({0x86, 0x87, 0x8A, 0x8C})
_CONNACK_V3_NOT_AUTHORISED = frozenset({4, 5})


class PahoLink:
    """One MQTT session over one pinned TLS connection (an :class:`~edge.uplink.ports.MqttLink`).
    Create with :func:`connect_link`."""

    def __init__(self, session: TlsSession, client: PinnedClient, mqtt_version: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = session
        self._client = client
        self._fd = session.sock.fileno()
        self._mqtt_version = mqtt_version
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._connack: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._writing = False
        self._misc: asyncio.TimerHandle | None = None
        self._is_v5 = mqtt_version == "5"
        self._props: dict[tuple[str | None, int | None], Properties] = {}
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect

    # --- paho callbacks (run inside loop_read / loop_write on the event loop thread) ---------
    # paho types userdata, flags and properties as Any; we do not use them.

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if self._connack.done():
            return
        if not rc.is_failure:
            self._connack.set_result(None)
            return
        value = int(rc.value)
        not_auth = (
            value in _CONNACK_NOT_AUTHORISED
            if self._is_v5
            else value in _CONNACK_V3_NOT_AUTHORISED or value in _CONNACK_NOT_AUTHORISED
        )
        if not_auth:
            self._connack.set_exception(
                TlsVerificationError("not_authorised", "broker refused the hub's CONNECT")
            )
        else:
            self._connack.set_exception(
                UplinkUnavailable(f"broker refused the connection (0x{value:02x})")
            )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        fut = self._futures.pop(mid, None)
        if fut is None or fut.done():
            return
        if rc.is_failure:
            fut.set_exception(PublishRefused(int(rc.value)))
        else:
            fut.set_result(None)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        reason: BaseException | None
        if self._client.edge_last_error is not None:
            reason = classify_ssl_error(self._client.edge_last_error)
        elif rc.is_failure:
            reason = UplinkUnavailable(f"connection lost ({rc.getName()})")
        else:
            reason = None
        self._finish(reason)

    # --- event loop plumbing ---------------------------------------------------------------

    def _start(self) -> None:
        self._loop.add_reader(self._fd, self._readable)
        self._sync_writer()
        self._misc = self._loop.call_later(MISC_INTERVAL_S, self._tick)

    def _readable(self) -> None:
        client = self._client
        client.loop_read()
        sock = client.socket()
        # TLS may hold whole records already decrypted; the fd will not signal them.
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
            client.loop_read()
        self._sync_writer()

    def _writable(self) -> None:
        self._client.loop_write()
        self._sync_writer()

    def _sync_writer(self) -> None:
        want = self._client.socket() is not None and self._client.want_write()
        if want and not self._writing:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True
        elif not want and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _tick(self) -> None:
        if self._closed.done():
            return
        rc = self._client.loop_misc()
        self._sync_writer()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._misc = self._loop.call_later(MISC_INTERVAL_S, self._tick)

    def _finish(self, reason: BaseException | None) -> None:
        if self._closed.done():
            return
        if self._misc is not None:
            self._misc.cancel()
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        err = reason or UplinkUnavailable("connection closed")
        if not self._connack.done():
            self._connack.set_exception(err)
            # Nobody may be waiting for it any more (connect failed early); mark it seen.
            self._connack.exception()
        pending, self._futures = self._futures, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(UplinkUnavailable("connection lost before PUBACK"))
        self._closed.set_result(reason)
        # The socket itself is closed by paho; make sure of it (fd reuse would confuse us).
        with contextlib.suppress(OSError):
            self._session.sock.close()

    # --- public ----------------------------------------------------------------------------

    @property
    def info(self) -> LinkInfo:
        """TLS version, cipher, pin match and MQTT version of this link."""
        return LinkInfo(
            tls_version=self._session.version,
            cipher=self._session.cipher,
            pin=self._session.pin,
            mqtt_version=self._mqtt_version,
        )

    @property
    def is_closed(self) -> bool:
        """True once the connection is gone."""
        return self._closed.done()

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._futures)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        message_expiry_s: int | None = None,
    ) -> asyncio.Future[None]:
        """Send a QoS 1 PUBLISH; the returned future completes on its success PUBACK."""
        if self._closed.done():
            raise UplinkUnavailable("link is closed")
        props: Properties | None = None
        if self._is_v5 and (content_type or message_expiry_s):
            key = (content_type, message_expiry_s)
            props = self._props.get(key)
            if props is None:
                # paho only reads them when packing: one object serves every message.
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                if content_type:
                    props.ContentType = content_type
                if message_expiry_s:
                    props.MessageExpiryInterval = message_expiry_s
                self._props[key] = props
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # NO_CONN / QUEUE_SIZE / CONN_LOST: the message was not sent.
            self._sync_writer()
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                raise UplinkUnavailable("publish refused locally: message id space exhausted")
            raise UplinkUnavailable(f"publish failed ({paho.error_string(info.rc)})")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._futures[info.mid] = fut
        self._sync_writer()
        return fut

    async def wait_closed(self) -> BaseException | None:
        """Wait until the link is closed; returns the reason (None after a clean close)."""
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        """Send DISCONNECT (so no Last Will) and close."""
        if self._closed.done():
            return
        self._client.disconnect()
        self._sync_writer()
        # Real time on purpose, here and for the CONNACK: these bound socket I/O that only the
        # network can complete (paho's keepalive runs on the loop's real timers as well).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), 2.0)
        self.abort()

    def abort(self) -> None:
        """Close the socket without DISCONNECT."""
        if self._closed.done():
            return
        self._finish(UplinkUnavailable("connection aborted"))


async def connect_link(
    cfg: UplinkConfig,
    hub_id: str,
    ctx: ssl.SSLContext,
    verifier: PinVerifier,
    *,
    will: Will | None = None,
    connect_timeout: float = 10.0,
    client_id: str | None = None,
) -> PahoLink:
    """TCP + TLS + pin check, then MQTT CONNECT; returns once the broker's CONNACK accepts.

    Raises :class:`~edge.errors.PinMismatch` (nothing sent),
    :class:`~edge.errors.TlsVerificationError` (certificate, version, client certificate
    refused, ``not_authorised`` on a refused CONNECT) or :class:`UplinkUnavailable`.
    """
    session = await open_tls(cfg.host, cfg.port, ctx, verifier, connect_timeout=connect_timeout)
    protocol = (
        MQTTProtocolVersion.MQTTv5 if cfg.mqtt_version == "5" else MQTTProtocolVersion.MQTTv311
    )
    try:
        client = PinnedClient(
            session.sock,
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or hub_id,
            protocol=protocol,
            clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else True,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages = 0  # off: the application windows
        client.max_queued_messages = 0
        if will is not None:
            client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        link = PahoLink(session, client, cfg.mqtt_version)
        if protocol == MQTTProtocolVersion.MQTTv5:
            rc = client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=True)
        else:
            rc = client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
    except Exception as exc:
        session.sock.close()
        raise UplinkUnavailable(f"MQTT connect failed ({type(exc).__name__})") from exc
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or link.is_closed:
        link.abort()
        cause = client.edge_last_error
        err = (
            classify_ssl_error(cause)
            if cause is not None
            else UplinkUnavailable(f"MQTT connect failed ({paho.error_string(rc)})")
        )
        _attach(err, link.info)
        raise err from cause
    link._start()
    try:
        await asyncio.wait_for(asyncio.shield(link._connack), connect_timeout)
    except TimeoutError as exc:
        link.abort()
        err = UplinkUnavailable("no CONNACK from the broker")
        _attach(err, link.info)
        raise err from exc
    except EdgeError as exc:
        link.abort()
        # The TLS part succeeded: say so (the probe reports it).
        _attach(exc, link.info)
        raise
    except BaseException:
        link.abort()
        raise
    return link


def _attach(exc: BaseException, info: LinkInfo) -> None:
    setattr(exc, "link_info", info)  # noqa: B010 -- not every error class declares it


def link_info_of(exc: BaseException) -> LinkInfo | None:
    """The TLS details of a connection that got past the pin check and then failed."""
    info = getattr(exc, "link_info", None)
    return info if isinstance(info, LinkInfo) else None


class TlsMqttConnector:
    """The production :data:`~edge.uplink.ports.Connector`: one SSL context (built once),
    pins from config."""

    def __init__(
        self,
        cfg: UplinkConfig,
        hub_id: str,
        *,
        connect_timeout: float = 10.0,
        client_id: str | None = None,
    ) -> None:
        self._cfg = cfg
        self._hub_id = hub_id
        self._timeout = connect_timeout
        self._client_id = client_id
        self._ctx: ssl.SSLContext | None = None
        self._verifier: PinVerifier | None = None

    def context(self) -> tuple[ssl.SSLContext, PinVerifier]:
        """Build (once) the SSL context and pin verifier; raises KeyUnavailable / ConfigError."""
        if self._ctx is None or self._verifier is None:
            self._ctx = build_context(self._cfg)
            self._verifier = PinVerifier.from_files(self._cfg.pins, self._cfg.ca_file)
        return self._ctx, self._verifier

    async def __call__(self, will: Will | None) -> PahoLink:
        ctx, verifier = self.context()
        return await connect_link(
            self._cfg, self._hub_id, ctx, verifier, will=will, connect_timeout=self._timeout,
            client_id=self._client_id,
        )
