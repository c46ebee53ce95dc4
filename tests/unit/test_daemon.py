"""The daemon's pure parts on a manual clock: the supervisor, uplink progress, the watchdog
loop, and the one status document."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from edge.ble.state import DeviceState
from edge.daemon.health import Health, watchdog
from edge.daemon.status import DaemonFacts, mqtt_devices, status_document, status_line
from edge.daemon.supervisor import Stalled, Supervisor, UplinkProgress
from edge.testing import ManualClock
from edge.vault import Binding, VaultStats

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


async def test_supervisor_restarts_a_failing_part_with_backoff() -> None:
    clock = ManualClock(T0)
    health = Health(clock)
    runs: list[int] = []
    release = asyncio.Event()

    async def part() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        await release.wait()

    sup = Supervisor("p", part, health, clock, interval_s=1.0)
    task = asyncio.create_task(sup.run())
    for _ in range(200):
        if len(runs) >= 3:
            break
        await clock.advance(0.25)
    assert len(runs) == 3
    assert sup.restarts == 2 and sup.last_error == "RuntimeError"
    assert health.healthy()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.state == "stopped"
    assert sup.status().as_dict() == {"state": "stopped", "restarts": 2,
                                      "last_error": "RuntimeError"}


async def test_a_hung_probe_stops_the_heartbeat_and_recovers() -> None:
    clock = ManualClock(T0)
    health = Health(clock)
    unhung = asyncio.Event()
    unhung.set()

    async def part() -> None:
        await asyncio.Event().wait()

    async def probe() -> None:
        await unhung.wait()

    sup = Supervisor("p", part, health, clock, interval_s=1.0, probe=probe)
    task = asyncio.create_task(sup.run())
    await clock.advance(2.0)
    assert sup.state == "running" and health.healthy()
    unhung.clear()
    await clock.advance(5.0)
    assert sup.state == "hung" and health.stale() == ["p"]
    unhung.set()
    await clock.advance(3.0)
    assert sup.state == "running" and health.healthy()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@dataclass(frozen=True)
class Counters:
    in_flight: int
    messages_acked: int
    sessions: int
    state_label: str = "connected"


def test_uplink_progress_flags_only_a_stuck_forwarder() -> None:
    p = UplinkProgress()
    stuck = Counters(in_flight=2, messages_acked=5, sessions=1)
    p.observe(stuck, 0.0, 60.0)
    p.observe(stuck, 59.0, 60.0)
    with pytest.raises(Stalled):
        p.observe(stuck, 61.0, 60.0)
    # an acknowledgement, a new session or an empty window is progress
    acked = Counters(in_flight=2, messages_acked=6, sessions=1)
    p.observe(acked, 62.0, 60.0)
    p.observe(acked, 121.0, 60.0)
    p.observe(Counters(in_flight=2, messages_acked=6, sessions=2), 150.0, 60.0)
    p.observe(Counters(in_flight=0, messages_acked=6, sessions=2), 400.0, 60.0)
    p.observe(Counters(in_flight=1, messages_acked=6, sessions=2), 450.0, 60.0)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> bool:
        self.messages.append(message)
        return True


async def test_watchdog_pets_only_while_every_part_is_fresh() -> None:
    clock = ManualClock(T0)
    health = Health(clock)
    health.register("ble", stale_after_s=3.0)
    notes = Recorder()
    task = asyncio.create_task(watchdog(health, notes, clock, 1.0, lambda: "fine"))
    await clock.advance(2.0)
    assert notes.messages[-1] == "WATCHDOG=1\nSTATUS=fine"
    await clock.advance(2.0)
    assert notes.messages[-1] == "STATUS=unhealthy: ble"
    health.beat("ble")
    await clock.advance(1.0)
    assert notes.messages[-1] == "WATCHDOG=1\nSTATUS=fine"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


STATS = VaultStats(pending=3, oldest_pending_age_s=90.0, db_bytes=4096, pending_bytes=300,
                   delivered_retained=1, refusals={"malformed": 2})
DEVICE = DeviceState("AA:BB:CC:DD:EE:01", "heart_rate", "connected", last_seen=T0)


def test_the_offline_status_document() -> None:
    binding = Binding("AA:BB:CC:DD:EE:01", "heart_rate", "pt-one", True, T0, "admin", None)
    doc = status_document(hub="hub-1", vault=STATS, cert_days=None, bindings=[binding])
    assert list(doc) == ["source", "hub", "queue_depth", "oldest_pending_age_s", "refusals",
                         "vault", "devices", "uplink", "cert_days_left"]
    assert doc["source"] == "vault" and doc["queue_depth"] == 3
    refusals = doc["refusals"]
    assert isinstance(refusals, dict)
    assert refusals["malformed"] == 2 and refusals["no_consent"] == 0
    assert doc["devices"] == [{"address": "AA:BB:CC:DD:EE:01", "kind": "heart_rate",
                               "state": "daemon not running", "last_seen": None}]
    assert doc["uplink"] == {"state": "daemon not running"}


def test_the_daemon_status_document() -> None:
    facts = DaemonFacts(started_at=T0, healthy=True, intake={"duplicates": 0},
                        devices=[DEVICE], uplink_state="connected",
                        uplink_stats={"state": "connected", "in_flight": 0},
                        parts={"ble": {"state": "running", "restarts": 0, "last_error": None}})
    doc = status_document(hub="hub-1", vault=STATS, cert_days=300.5, daemon=facts)
    assert list(doc) == ["source", "hub", "started_at", "healthy", "queue_depth",
                         "oldest_pending_age_s", "refusals", "vault", "intake", "devices",
                         "uplink", "cert_days_left", "parts"]
    assert doc["source"] == "daemon" and doc["started_at"] == T0.isoformat()
    devices = doc["devices"]
    assert isinstance(devices, list) and devices[0]["state"] == "connected"
    assert doc["uplink"] == {"state": "connected",
                             "stats": {"state": "connected", "in_flight": 0}}
    assert doc["cert_days_left"] == 300.5


def test_status_line_and_the_mqtt_devices_carry_no_address() -> None:
    assert status_line(3, [DEVICE], "connected") == (
        "queue 3; devices 1/1 connected; uplink connected")
    assert status_line(None, [], "stopped") == "queue ?; devices 0/0 connected; uplink stopped"
    public = mqtt_devices([DEVICE], healthy=True)
    assert public["bound"] == 1 and public["connected"] == 1 and public["healthy"] is True
    assert "AA:BB" not in str(public)
