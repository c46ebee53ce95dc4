"""The uplink's typed seams: the MQTT link and its connector, the outbox the forwarder drains,
the encoder and the status provider. Fakes of them live in :mod:`edge.testing.uplink`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.errors import EdgeError
from edge.readings import GlucoseReading, HeartRateReading
from edge.uplink.pins import PinCheck

_PUBACK_REASONS = {
    0x80: "unspecified_error",
    0x83: "implementation_specific_error",
    0x87: "not_authorised",
    0x90: "topic_name_invalid",
    0x91: "packet_identifier_in_use",
    0x97: "quota_exceeded",
    0x99: "payload_format_invalid",
}


class PublishRefused(EdgeError):
    """The broker answered a PUBLISH with a failure reason code (MQTT 5)."""

    def __init__(self, reason_code: int) -> None:
        self.reason_code = reason_code
        self.reason = _PUBACK_REASONS.get(reason_code, f"reason_0x{reason_code:02x}")
        super().__init__(f"broker refused the message ({self.reason}, 0x{reason_code:02x})")


@dataclass(frozen=True)
class Will:
    """The Last Will the broker publishes if the link dies uncleanly."""

    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class LinkInfo:
    """What was negotiated on a connected link."""

    tls_version: str
    cipher: str
    pin: PinCheck
    mqtt_version: str


class MqttLink(Protocol):
    """A connected MQTT session as the forwarder sees it."""

    @property
    def info(self) -> LinkInfo: ...

    @property
    def is_closed(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        message_expiry_s: int | None = None,
    ) -> asyncio.Future[None]:
        """Send a QoS 1 PUBLISH now; the future completes on its success PUBACK.

        Raises :class:`~edge.errors.UplinkUnavailable` at once when the link is closed."""
        ...

    async def wait_closed(self) -> BaseException | None:
        """Wait until the link is closed; returns why (None after a clean close)."""
        ...

    async def close(self) -> None:
        """Clean DISCONNECT (no Last Will)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (the broker publishes the Last Will)."""
        ...


#: makes a connected link; raises PinMismatch, TlsVerificationError, KeyUnavailable or
#: UplinkUnavailable
Connector = Callable[[Will], Awaitable[MqttLink]]


class PendingLike(Protocol):
    """A pending outbox row (``edge.vault.PendingReading``)."""

    @property
    def seq(self) -> int: ...

    @property
    def id(self) -> str: ...

    @property
    def patient(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    def reading(self) -> HeartRateReading | GlucoseReading: ...


class OutboxStats(Protocol):
    """The part of ``edge.vault.VaultStats`` the status document uses."""

    @property
    def pending(self) -> int: ...

    @property
    def oldest_pending_age_s(self) -> float | None: ...


class Outbox(Protocol):
    """What the forwarder needs from the vault (``edge.vault.Vault``)."""

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> Sequence[PendingLike]: ...

    async def mark_delivered(self, ids: Sequence[str]) -> int: ...

    async def stats(self) -> OutboxStats: ...

    async def audit(self, actor: str, action: str, subject: str = "") -> None: ...


#: turns a group of one patient's pending rows into a message payload
Encoder = Callable[[Sequence[PendingLike]], bytes]

#: the devices part of the retained status document (JSON-ready, no PHI)
StatusProvider = Callable[[], Awaitable[Mapping[str, object]]]
