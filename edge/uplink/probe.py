"""`edge uplink probe`: connect exactly as the daemon does and publish one status message.

Same SSL context, same client certificate (the broker's identity for the ACL), same pin check,
same MQTT protocol version, then a non-retained status document on the hub's status topic —
never a reading. It asks for the client id ``<hub id>-probe`` and sets no Last Will (a probe
killed mid-way must not mark the hub offline). A broker that ties client ids to certificates —
the shipped one does (``use_username_as_clientid``, config/mosquitto/README.md) — replaces
that id with the certificate's CN, the hub id: the probe then *is* the hub's one session, and
run while the daemon is connected it would take the daemon's connection over (firing the
daemon's Will). So the probe is for a hub whose daemon is not connected: ``edge uplink
probe`` first asks the daemon's control socket and, when the daemon answers, refuses (exit 2)
with the daemon's own uplink state (``edge status`` shows the rest); ``--force`` probes
anyway, knowingly taking the connection over (the daemon's Will fires until it reconnects).
This function does not ask: its callers do. The result names the precise reason when
anything fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field

from edge.config import E2eConfig, UplinkConfig
from edge.errors import (
    ConfigError,
    KeyUnavailable,
    PinMismatch,
    TlsVerificationError,
    UplinkUnavailable,
)
from edge.uplink.mqtt import TlsMqttConnector, link_info_of
from edge.uplink.ports import LinkInfo, PublishRefused
from edge.uplink.sealing import describe, load_signer
from edge.uplink.tls import REASON_HELP
from edge.uplink.topics import status_topic


@dataclass
class ProbeResult:
    """What the probe found. ``reason`` is a stable word when ``ok`` is False."""

    ok: bool
    broker: str
    reason: str | None = None
    detail: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    pin_matched: str | None = None
    pin_matched_on: str | None = None
    presented_pin: str | None = None
    connected: bool = False
    mqtt_version: str | None = None
    status_published: bool = False
    status_topic: str | None = None
    #: the [e2e] mode, as `edge check-config` reports it
    e2e: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 ok; 3 the broker was refused / refused us; 2 local key or config; 1 unreachable."""
        if self.ok:
            return 0
        if self.reason in ("key_unavailable", "config", "not_tls"):
            return 2
        if self.reason == "unreachable":
            return 1
        return 3

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}

    def lines(self) -> list[str]:
        """Human-readable report."""
        out = [f"probe: {'OK' if self.ok else 'FAILED — ' + str(self.reason)}"]
        out.append(f"  broker     {self.broker}")
        if self.e2e:
            out.append(f"  e2e        {self.e2e}")
        if self.tls_version:
            out.append(f"  tls        {self.tls_version} {self.cipher}")
        if self.pin_matched:
            out.append(f"  pin        matched ({self.pin_matched_on}) {self.pin_matched}")
        elif self.presented_pin:
            out.append(f"  pin        NO MATCH; broker presented {self.presented_pin}")
        if self.connected:
            out.append(f"  mqtt       connected (MQTT {self.mqtt_version})")
        if self.status_published:
            out.append(f"  status     published to {self.status_topic} (PUBACK success)")
        if not self.ok:
            if self.detail:
                out.append(f"  error      {self.detail}")
            help_ = REASON_HELP.get(str(self.reason)) or _PROBE_HELP.get(str(self.reason))
            if help_:
                out.append(f"  fix        {help_}")
        out.extend(f"  note       {n}" for n in self.notes)
        return out


async def probe(
    cfg: UplinkConfig, hub_id: str, *, step_timeout: float = 10.0, e2e: E2eConfig | None = None
) -> ProbeResult:
    """Run the probe; never raises for a failed check (the result says why). With ``e2e``
    the mode is reported, and with sign+encrypt the sealing keys are loaded as the daemon
    loads them (a key the daemon could not seal with fails the probe)."""
    result = ProbeResult(ok=False, broker=f"{cfg.host}:{cfg.port}")
    if e2e is not None:
        try:
            result.e2e = describe(e2e)
            if e2e.enabled:
                load_signer(cfg)
        except KeyUnavailable as exc:
            result.reason, result.detail = "key_unavailable", str(exc)
            return result
        except ConfigError as exc:
            result.reason, result.detail = "config", "; ".join(exc.problems)
            return result
    connector = TlsMqttConnector(
        cfg, hub_id, connect_timeout=step_timeout, client_id=f"{hub_id}-probe"
    )
    topic = status_topic(cfg.topic_prefix, hub_id)
    try:
        link = await connector(None)
    except PinMismatch as exc:
        result.reason = "pin_mismatch"
        result.detail = str(exc)
        result.presented_pin = exc.presented_pin
        return result
    except TlsVerificationError as exc:
        result.reason, result.detail = exc.reason, str(exc)
        _tls_part(result, link_info_of(exc))
        if exc.reason in ("tls_version", "tls_error"):
            await _check_speaks_tls(result, cfg, step_timeout)
        return result
    except KeyUnavailable as exc:
        result.reason, result.detail = "key_unavailable", str(exc)
        return result
    except ConfigError as exc:
        result.reason, result.detail = "config", "; ".join(exc.problems)
        return result
    except UplinkUnavailable as exc:
        result.reason, result.detail = "unreachable", str(exc)
        _tls_part(result, link_info_of(exc))
        await _check_speaks_tls(result, cfg, step_timeout)
        return result
    info = link.info
    _tls_part(result, info)
    result.connected, result.mqtt_version = True, info.mqtt_version
    result.status_topic = topic
    doc = json.dumps({"hub": hub_id, "state": "probe"}, separators=(",", ":")).encode()
    try:
        await _wait(link.publish(topic, doc), step_timeout)
        result.status_published = True
        result.ok = True
        if info.mqtt_version != "5":
            result.notes.append(
                "MQTT 3.1.1 brokers acknowledge refused messages silently; use MQTT 5 to "
                "check the ACL"
            )
    except PublishRefused as exc:
        result.reason = "not_authorised" if exc.reason_code == 0x87 else exc.reason
        result.detail = str(exc)
    except UplinkUnavailable as exc:
        result.reason, result.detail = "unreachable", str(exc)
    finally:
        await link.close()
    return result


def _tls_part(result: ProbeResult, info: LinkInfo | None) -> None:
    if info is not None:
        result.tls_version, result.cipher = info.tls_version, info.cipher
        result.pin_matched, result.pin_matched_on = info.pin.matched, info.pin.matched_on
        result.presented_pin = info.pin.presented


async def _wait(fut: asyncio.Future[None], seconds: float) -> None:
    try:
        await asyncio.wait_for(fut, seconds)
    except TimeoutError as exc:
        raise UplinkUnavailable("no PUBACK for the status message") from exc


_PROBE_HELP = {
    "not_tls": "uplink.port is not the broker's TLS listener (1883 is plain MQTT) — set "
    "uplink.port to the port of its TLS listener (usually 8883)",
}


async def _check_speaks_tls(result: ProbeResult, cfg: UplinkConfig, step_s: float) -> None:
    """After a failed handshake: a port that does not answer TLS at all is named as such."""
    if await speaks_tls(cfg.host, cfg.port, step_s) is False:
        result.reason = "not_tls"
        result.detail = (f"port {cfg.port} does not speak TLS: it answered the TLS hello with "
                         "something else, or hung up on it")


async def speaks_tls(host: str, port: int, step_s: float) -> bool | None:
    """Whether ``host:port`` answers a TLS ClientHello with a TLS record (True), or with other
    bytes or by hanging up (False); None when it cannot be reached or says nothing within
    ``step_s`` per step. Only a ClientHello is sent: no certificate, no MQTT."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    hello_maker = ctx.wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        hello_maker.do_handshake()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), step_s)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(outgoing.read())
        first = await asyncio.wait_for(reader.read(5), step_s)
        if len(first) == 1:
            first += await asyncio.wait_for(reader.read(4), step_s)
    except TimeoutError:
        return None
    except OSError:  # reset at the hello
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), step_s)
    # a TLS record: handshake (22) or alert (21), protocol major version 3
    return len(first) >= 2 and first[0] in (21, 22) and first[1] == 3
