"""In-memory stand-ins for the uplink's seams: an MQTT link whose PUBACKs the test gives, a
connector that hands out such links (or queued failures), consent checks, an encoder that
writes only reading ids, and ``forwarding()`` to run a forwarder for the length of a block.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from edge.clock import cancel_and_wait
from edge.errors import UplinkUnavailable
from edge.uplink.pins import PinCheck
from edge.uplink.ports import LinkInfo, PendingLike, Will

FAKE_LINK_INFO = LinkInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", PinCheck("p", "leaf", "p"), "5")


def ids_encoder(rows: Sequence[PendingLike]) -> bytes:
    """A stand-in for the FHIR encoder: the ids, as JSON (read back by :attr:`Sent.ids`)."""
    return json.dumps({"ids": [r.id for r in rows]}).encode()


@dataclass
class Sent:
    """One PUBLISH on a :class:`FakeMqttLink`; ``future`` is what the PUBACK settles."""

    topic: str
    payload: bytes
    retain: bool
    content_type: str | None
    message_expiry_s: int | None
    future: asyncio.Future[None]

    @property
    def ids(self) -> list[str]:
        """The reading ids of a message made by :func:`ids_encoder`."""
        return [str(i) for i in json.loads(self.payload).get("ids", [])]


class FakeMqttLink:
    """A link whose PUBACKs the test gives (``ack``/``fail``) and which the test can drop."""

    def __init__(self, *, auto_ack_retained: bool = True) -> None:
        #: acknowledge retained (status) messages at once, so tests deal with readings only
        self.auto_ack_retained = auto_ack_retained
        self.sent: list[Sent] = []
        self._closed: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        #: set on every publish
        self.sent_event = asyncio.Event()
        self.closed_cleanly = False

    @property
    def info(self) -> LinkInfo:
        return FAKE_LINK_INFO

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        message_expiry_s: int | None = None,
    ) -> asyncio.Future[None]:
        if self.is_closed:
            raise UplinkUnavailable("closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, payload, retain, content_type, message_expiry_s, fut))
        self.sent_event.set()
        if retain and self.auto_ack_retained:
            fut.set_result(None)
        return fut

    def obs(self) -> list[Sent]:
        """The observation messages sent so far."""
        return [s for s in self.sent if "/obs/" in s.topic]

    def unacked_obs(self) -> list[Sent]:
        """Observation messages still awaiting their PUBACK."""
        return [s for s in self.obs() if not s.future.done()]

    def ack(self, *sent: Sent) -> None:
        """Give these messages their success PUBACK."""
        for s in sent:
            s.future.set_result(None)

    def ack_status(self) -> None:
        """Acknowledge every status message sent so far."""
        for s in self.sent:
            if s.topic.endswith("/status") and not s.future.done():
                s.future.set_result(None)

    def fail(self, sent: Sent, exc: BaseException) -> None:
        """Answer a message with a failure (e.g. ``PublishRefused``)."""
        sent.future.set_exception(exc)

    async def wait_closed(self) -> BaseException | None:
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        self.closed_cleanly = True
        self.abort()

    def abort(self) -> None:
        if self.is_closed:
            return
        for s in self.sent:
            if not s.future.done():
                s.future.set_exception(UplinkUnavailable("lost"))
                s.future.exception()  # the forwarder may have stopped looking: mark it seen
        self._closed.set_result(UplinkUnavailable("dropped"))

    def drop(self) -> None:
        """The connection dies (as seen from the network)."""
        self.abort()


class FakeConnector:
    """Hands out the outcomes queued in ``outcomes``: an exception is raised, anything else
    (and everything once the queue is empty) is a new :class:`FakeMqttLink`."""

    def __init__(self, outcomes: Iterable[BaseException | None] = ()) -> None:
        self.outcomes: list[BaseException | None] = list(outcomes)
        self.links: list[FakeMqttLink] = []
        self.calls = 0
        self.wills: list[Will | None] = []
        #: set on every call / every link handed out
        self.called = asyncio.Event()
        self.linked = asyncio.Event()

    async def __call__(self, will: Will | None) -> FakeMqttLink:
        self.calls += 1
        self.wills.append(will)
        self.called.set()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        link = FakeMqttLink()
        self.links.append(link)
        self.linked.set()
        return link

    @property
    def link(self) -> FakeMqttLink:
        """The latest link (fails when none was made yet)."""
        assert self.links, "no link was made"
        return self.links[-1]


class AllowAll:
    """Consent for everyone."""

    def allows(self, patient: str) -> bool:
        return True


class Revocable:
    """Consent for everyone except the patients in ``revoked``."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def allows(self, patient: str) -> bool:
        return patient not in self.revoked


class Runnable(Protocol):
    """Anything with ``async run()`` that runs until cancelled (the forwarder)."""

    async def run(self) -> None: ...


@asynccontextmanager
async def forwarding(fwd: Runnable) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``fwd.run()`` for the block; then cancel it and check that it stopped by being
    cancelled (not by an error, nor by returning)."""
    task = asyncio.create_task(fwd.run())
    try:
        yield task
    finally:
        ended_early = task.done()
        await cancel_and_wait(task)
    if ended_early or not task.cancelled():
        outcome = "cancelled" if task.cancelled() else repr(task.exception())
        raise AssertionError(f"run() did not run until cancelled ({outcome})")
