"""The running daemon: wiring, shutdown, watchdog and the control socket, with a fake BLE
manager and a fake MQTT link around the real forwarder, intake and (SQLCipher) vault."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.ble.ports import IntakeSink
from edge.clock import Clock
from edge.config import GatewayConfig, parse_config
from edge.daemon import Daemon
from edge.daemon.control import ControlClient
from edge.daemon.ports import DaemonVault
from edge.daemon.sdnotify import Notifier, SdNotifier
from edge.readings import HeartRateReading, TimeSource, stable_reading_id
from edge.testing import ManualClock, eventually
from edge.vault import Vault
from tests.integration.daemon_fakes import FakeBle, FakeBroker
from tests.support.vault_support import vault_config, write_key

PIN = "sha256/" + "A" * 43 + "="
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def make_config(tmp_path: Path, uplink: dict[str, object] | None = None,
                **daemon: object) -> GatewayConfig:
    return parse_config({
        "hub": {"id": "hub-test"},
        "vault": {"path": str(tmp_path / "state" / "vault.db"), "key_provider": "env",
                  "allow_env_key": True},
        "uplink": {"host": "localhost", "ca_file": str(tmp_path / "ca.pem"),
                   "client_cert": str(tmp_path / "hub.pem"),
                   "client_key": str(tmp_path / "hub.key"), "pins": [PIN],
                   **(uplink or {})},
        "e2e": {"mode": "off"},
        "daemon": {"control_socket": str(tmp_path / "run" / "control.sock"),
                   "health_interval_s": 1.0, "shutdown_timeout_s": 4.0, **daemon},
    })


def hr(patient: str, n: int, bpm: int = 70) -> HeartRateReading:
    at = T0 + timedelta(seconds=n)
    return HeartRateReading(
        id=stable_reading_id("AA:BB:CC:DD:EE:01", "2a37", at.isoformat()),
        device_id="AA:BB:CC:DD:EE:01", patient=patient, effective_time=at,
        time_source=TimeSource.GATEWAY, received_at=at, bpm=bpm, sensor_contact="detected",
    )


class Rig:
    """A daemon with a memory vault, a fake BLE manager and the real forwarder on a fake link."""

    def __init__(self, tmp_path: Path, *, clock: Clock | None = None,
                 notifier: Notifier | None = None, signals: bool = False,
                 uplink: dict[str, object] | None = None,
                 hard_exit: Callable[[], None] | None = None, **daemon: object) -> None:
        self.vault_cfg = vault_config(tmp_path)
        self.key = write_key(self.vault_cfg)
        self._vault: Vault | None = None
        self.broker = FakeBroker()
        self.bles: list[FakeBle] = []
        self.config = make_config(tmp_path, uplink, **daemon)
        self.fail_ble = False

        def ble_factory(vault: DaemonVault, sink: IntakeSink) -> FakeBle:
            ble = FakeBle(vault, sink)
            ble.fail = self.fail_ble
            self.bles.append(ble)
            return ble

        async def vault_factory() -> Vault:
            return self.vault

        self.daemon = Daemon(
            self.config, key=self.key, vault_factory=vault_factory,
            ble_factory=ble_factory, connector=self.broker.connect,
            clock=clock, notifier=notifier, install_signal_handlers=signals, env={},
            hard_exit=hard_exit,
        )
        self.task: asyncio.Task[int] | None = None

    @property
    def vault(self) -> Vault:
        assert self._vault is not None, "open() first"
        return self._vault

    async def open(self, *consented: str) -> None:
        """Open the real vault (the daemon closes it when it stops) and grant consent."""
        self._vault = await Vault.open(self.vault_cfg, self.key)
        for p in consented:
            await self._vault.grant_consent(p, scope="vitals", actor="test")

    async def reopened(self) -> Vault:
        """The vault, opened again after the daemon closed it."""
        return await Vault.open(self.vault_cfg, self.key)

    async def start(self) -> None:
        if self._vault is None:
            await self.open()
        self.task = asyncio.create_task(self.daemon.run())
        await asyncio.wait_for(self.daemon.ready.wait(), 10)

    async def stop(self) -> int:
        assert self.task is not None
        self.daemon.request_stop()
        return await asyncio.wait_for(self.task, 10)

    @property
    def sink(self) -> IntakeSink:
        return self.bles[-1].sink


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    await r.open("patient-a")
    await r.start()
    await asyncio.wait_for(r.bles[0].started.wait(), 5)
    yield r
    if r.task is not None and not r.task.done():
        await r.stop()


async def published(r: Rig, n: int) -> None:
    """Wait (bounded) until the fake broker has seen ``n`` observations."""
    await eventually(lambda: len(r.broker.observations) == n, within_s=5,
                     what=f"{n} observations published")


async def test_a_submitted_reading_flows_to_the_publisher(rig: Rig) -> None:
    await rig.sink.submit([hr("patient-a", 1)])
    await published(rig, 1)
    topic, rid = rig.broker.observations[0]
    assert topic == "edge/v1/hub-test/obs/patient-a"
    assert rid == hr("patient-a", 1).id
    assert rig.daemon.forwarder is not None
    fwd = rig.daemon.forwarder
    # the delivery mark follows the PUBACK by a vault round trip
    await eventually(lambda: fwd.stats().readings_delivered == 1, within_s=5,
                     what="the delivery mark")
    assert (await rig.vault.stats()).pending == 0
    assert rig.daemon.intake is not None
    assert rig.daemon.intake.stats()["received"] == {"heart_rate": 1}


async def test_no_consent_and_implausible_are_refused_and_counted(rig: Rig) -> None:
    await rig.sink.submit([hr("patient-b", 1), hr("patient-a", 2, bpm=400)])
    stats = await rig.vault.stats()
    assert stats.pending == 0
    assert stats.refusals == {"no_consent": 1, "heart_rate_out_of_range": 1}
    # as the control socket sends it
    status = json.loads(json.dumps(await rig.daemon.full_status()))
    assert status["refusals"]["no_consent"] == 1
    assert status["intake"]["refused"]["heart_rate_out_of_range"] == 1


async def test_status_and_consent_over_the_control_socket(rig: Rig) -> None:
    client = ControlClient(rig.config.daemon.control_socket, timeout_s=5)
    status = await asyncio.to_thread(client.request, "status")
    assert status["source"] == "daemon"
    assert status["devices"][0]["state"] == "connected"
    assert set(status["parts"]) == {"vault", "uplink", "ble", "purger", "control"}

    await asyncio.to_thread(client.request, "consent.grant", patient="patient-b")
    await rig.sink.submit([hr("patient-b", 1)])
    await published(rig, 1)

    # hold acks so readings stay pending, then revoke: pending purged, audited, gate closed
    rig.broker.hold = True
    await rig.sink.submit([hr("patient-b", 2)])
    await published(rig, 2)
    result = await asyncio.to_thread(client.request, "consent.revoke", patient="patient-b")
    # both of patient-b's readings are purged: the delivered one and the pending one
    assert result == {"patient": "patient-b", "consent": "revoked", "purged": 2}
    tail = await rig.vault.audit_tail(1)
    assert (tail[0].actor, tail[0].action, tail[0].subject) == (
        f"control:uid:{os.getuid()}", "consent.revoked", "patient-b")
    assert (await rig.vault.stats()).pending == 0
    sent = len(rig.broker.observations)
    await rig.sink.submit([hr("patient-b", 3)])
    assert (await rig.vault.stats()).refusals["no_consent"] == 1
    assert len(rig.broker.observations) == sent
    rig.broker.release()

    assert (await asyncio.to_thread(client.request, "devices.refresh")) == {"refreshed": True}
    assert rig.bles[-1].refreshed == 1


async def test_nothing_read_ahead_is_sent_after_a_revoke(tmp_path: Path) -> None:
    r = Rig(tmp_path, uplink={"inflight_window": 1, "batch_max_readings": 1})
    await r.open("patient-b")
    await r.start()
    await asyncio.wait_for(r.bles[0].started.wait(), 5)
    r.broker.hold = True
    await r.sink.submit([hr("patient-b", n) for n in range(1, 5)])
    await published(r, 1)
    client = ControlClient(r.config.daemon.control_socket, timeout_s=5)
    result = await asyncio.to_thread(client.request, "consent.revoke", patient="patient-b")
    assert result["purged"] == 4
    r.broker.release()
    fwd = r.daemon.forwarder
    assert fwd is not None
    # whatever the forwarder had read ahead is handed to the link, which does not send it
    await eventually(lambda: fwd.stats().readings_sent == 4, within_s=5,
                     what="the read-ahead handed to the link")
    assert len(r.broker.observations) == 1
    assert await r.stop() == 0


async def test_sigterm_stops_ble_first_and_lets_in_flight_publishes_finish(
    tmp_path: Path,
) -> None:
    r = Rig(tmp_path, signals=True)
    await r.open("patient-a")
    await r.start()
    ble = r.bles[0]
    await asyncio.wait_for(ble.started.wait(), 5)
    r.broker.hold = True
    await r.sink.submit([hr("patient-a", 1)])
    await published(r, 1)
    assert r.task is not None

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(ble.cancelled.wait(), 5)
    assert not r.task.done(), "the daemon waits for the in-flight PUBACK"
    assert (await r.vault.stats()).pending == 1
    r.broker.release()
    rc = await asyncio.wait_for(r.task, 10)
    assert rc == 0
    vault = await r.reopened()
    try:
        assert (await vault.stats()).pending == 0, "the acknowledged reading was delivered"
    finally:
        await vault.close()
    assert not r.config.daemon.control_socket.exists()


async def test_shutdown_is_bounded_when_the_broker_never_acks(tmp_path: Path) -> None:
    r = Rig(tmp_path, shutdown_timeout_s=0.5)
    await r.open("patient-a")
    await r.start()
    await asyncio.wait_for(r.bles[0].started.wait(), 5)
    r.broker.hold = True
    await r.sink.submit([hr("patient-a", 1)])
    await published(r, 1)
    assert await r.stop() == 0
    vault = await r.reopened()
    try:
        assert (await vault.stats()).pending == 1, "never acknowledged: pending for next time"
    finally:
        await vault.close()


async def test_shutdown_waits_for_in_flight_messages_only(tmp_path: Path) -> None:
    r = Rig(tmp_path, uplink={"inflight_window": 1, "batch_max_readings": 1})
    await r.open("patient-a")
    await r.start()
    await asyncio.wait_for(r.bles[0].started.wait(), 5)
    r.broker.hold = True
    await r.sink.submit([hr("patient-a", 1), hr("patient-a", 2), hr("patient-a", 3)])
    await published(r, 1)
    assert r.task is not None
    r.daemon.request_stop()
    await asyncio.wait_for(r.bles[0].cancelled.wait(), 5)
    r.broker.release()  # the one in flight is acknowledged; the backlog is not started
    assert await asyncio.wait_for(r.task, 10) == 0
    assert len(r.broker.observations) == 1
    vault = await r.reopened()
    try:
        assert (await vault.stats()).pending == 2
    finally:
        await vault.close()


async def test_a_part_that_will_not_stop_is_ended_by_the_hard_exit(tmp_path: Path) -> None:
    fired = threading.Event()
    r = Rig(tmp_path, shutdown_timeout_s=0.2, hard_exit=fired.set)
    await r.start()
    await asyncio.wait_for(r.bles[0].started.wait(), 5)
    r.bles[0].stubborn = True
    r.daemon.request_stop()
    assert await asyncio.to_thread(fired.wait, 10), "the hard exit fired"
    assert r.task is not None and not r.task.done()
    r.bles[0].unstick.set()
    assert await asyncio.wait_for(r.task, 10) == 0


class DatagramSink:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path

    async def recv(self) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 5)
        return data.decode()

    def close(self) -> None:
        self.sock.close()


async def vault_idle(r: Rig) -> None:
    """Let the vault probe started by this tick finish before manual time moves on: the
    vault's writer thread is FIFO, so a call of our own returns after the probe's."""
    await r.vault.stats()


async def test_watchdog_stops_petting_while_a_part_hangs(tmp_path: Path) -> None:
    notify = DatagramSink(tmp_path / "notify.sock")
    clock = ManualClock(T0)
    r = Rig(tmp_path, clock=clock, notifier=SdNotifier({"NOTIFY_SOCKET": str(notify.path)}))
    try:
        await r.start()
        assert (await notify.recv()).startswith("READY=1\nSTATUS=")
        await asyncio.wait_for(r.bles[0].started.wait(), 5)

        async def tick() -> str:
            await clock.advance(1.0)
            msg = await notify.recv()
            await vault_idle(r)
            return msg

        assert (await tick()).startswith("WATCHDOG=1\n")
        r.bles[0].unhung.clear()  # the BLE part stops making progress
        messages = [await tick() for _ in range(8)]
        assert "STATUS=unhealthy: ble" in messages
        first = messages.index("STATUS=unhealthy: ble")
        assert first >= 2, "a part is only stale after missing several beats"
        assert all(m == "STATUS=unhealthy: ble" for m in messages[first:]), messages
        r.bles[0].unhung.set()
        messages = [await tick() for _ in range(3)]
        assert messages[-1].startswith("WATCHDOG=1\n")
        assert r.daemon.supervisors["ble"].state == "running"
    finally:
        stop = asyncio.create_task(r.stop())
        # shutdown waits on the manual clock too: keep time moving until it is done
        while not stop.done():
            clock.step(0.5)
            await asyncio.sleep(0)
        assert stop.result() == 0
        notify.close()


async def test_a_part_that_keeps_dying_stops_the_petting(tmp_path: Path) -> None:
    notify = DatagramSink(tmp_path / "notify.sock")
    clock = ManualClock(T0)
    r = Rig(tmp_path, clock=clock, notifier=SdNotifier({"NOTIFY_SOCKET": str(notify.path)}))
    r.fail_ble = True
    try:
        await r.start()
        await notify.recv()  # READY
        seen = []
        for _ in range(200):
            clock.step(1.0)
            seen.append(await notify.recv())
            await vault_idle(r)
            if seen[-1] == "STATUS=unhealthy: ble":
                break
        assert seen[-1] == "STATUS=unhealthy: ble"
        # it was restarted with backoff (not once per tick) before giving up
        assert 3 <= len(r.bles) <= 10
        assert r.daemon.supervisors["ble"].failures > 5
        assert any(m.startswith("WATCHDOG=1") for m in seen), "healthy while restarting"
    finally:
        stop = asyncio.create_task(r.stop())
        while not stop.done():
            clock.step(0.5)
            await asyncio.sleep(0)
        notify.close()
