"""Fakes for the daemon's tests: a BLE manager driven by the test and an MQTT link that
records publishes (the vault is the real one)."""

from __future__ import annotations

import asyncio
import json

from edge.ble.ports import IntakeSink
from edge.ble.state import DeviceState
from edge.daemon.ports import DaemonVault
from edge.uplink.pins import PinCheck
from edge.uplink.ports import LinkInfo, Will

ADDRESS = "AA:BB:CC:DD:EE:01"


class FakeBle:
    """A BLE manager whose ``run`` waits; the test submits readings through the sink."""

    def __init__(self, vault: DaemonVault, sink: IntakeSink) -> None:
        self.vault = vault
        self.sink = sink
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.refreshed = 0
        self.runs = 0
        self.fail = False
        self.unhung = asyncio.Event()
        self.unhung.set()
        self.stubborn = False
        self.unstick = asyncio.Event()

    async def probe(self) -> None:
        """Hangs while ``unhung`` is clear: a part that stopped making progress."""
        await self.unhung.wait()

    async def run(self) -> None:
        self.runs += 1
        if self.fail:
            raise RuntimeError("ble part failed")
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            if self.stubborn:
                # a part stuck in a library call that ignores cancellation
                await self.unstick.wait()
            raise

    async def refresh(self) -> None:
        self.refreshed += 1

    def device_states(self) -> dict[str, DeviceState]:
        return {ADDRESS: DeviceState(ADDRESS, "heart_rate", "connected")}


class FakeLink:
    """An MQTT link: records publishes; acks them at once unless ``hold`` is set."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def info(self) -> LinkInfo:
        return LinkInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256",
                        PinCheck(matched="sha256/x", matched_on="leaf", presented="sha256/x"), "5")

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                content_type: str | None = None,
                message_expiry_s: int | None = None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broker.messages.append((topic, payload))
        if "/obs/" in topic:
            for e in json.loads(payload)["entry"]:
                res = e["resource"]
                if res.get("resourceType") == "Observation":
                    self.broker.observations.append(
                        (topic, res["identifier"][0]["value"].removeprefix("urn:uuid:")))
        if self.broker.hold:
            self.broker.held.append(fut)
        else:
            fut.set_result(None)
        self.broker.published.set()
        return fut

    async def wait_closed(self) -> BaseException | None:
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def abort(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


class FakeBroker:
    """Collects what the fake links publish."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.observations: list[tuple[str, str]] = []
        self.hold = False
        self.held: list[asyncio.Future[None]] = []
        self.published = asyncio.Event()
        self.links: list[FakeLink] = []

    async def connect(self, will: Will) -> FakeLink:
        link = FakeLink(self)
        self.links.append(link)
        return link

    def release(self) -> None:
        for fut in self.held:
            if not fut.done():
                fut.set_result(None)
        self.held.clear()
