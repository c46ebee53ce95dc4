"""A meter that forgot its bond (``ctl forget-bond``), against the fake BlueZ and bleak's real
backend: BlueZ fails every Connect with ``le-connection-key-missing``; the device goes to
``needs_pairing`` (no reconnect storm), is audited once by its hash, ``edge status`` names the
fix; after RemoveDevice + a new pairing and the allow-list re-read, it syncs again."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ble.manager import NEEDS_PAIRING_ACTION
from edge.ble.pairing import pair_device
from edge.ble.ports import bleak_client_factory, bleak_scanner_factory
from edge.ble.state import NEEDS_PAIRING
from edge.clock import SystemClock
from edge.config import BleConfig
from edge.daemon.status import DaemonFacts, status_document
from edge.log import REDACTOR
from edge.readings import GlucoseReading
from edge.testing import eventually
from edge.testing.ble import FakeBinding
from edge.testing.vault import MemoryVault
from firmware_sim.control import ControlClient
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import build_fleet
from tests.support.ble_rig import live_manager
from tests.support.bluez import fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONFIG = BleConfig(scan_seconds=1.0, connect_timeout_s=10.0, reconnect_base_s=0.1,
                   reconnect_cap_s=0.5, racp_timeout_s=10.0, needs_pairing_retry_s=3600.0)
WAIT = 30.0


async def test_a_meter_that_lost_its_bond_needs_pairing_and_is_not_hammered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="glucose:1", seed=21)
    meter = fleet.devices[0]
    assert isinstance(meter, GlucoseMeter)
    clock = SystemClock()
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        paired = await pair_device(bleak_client_factory(), meter.address, kind="glucose",
                                   clock=clock, scanner_factory=bleak_scanner_factory(),
                                   connect_timeout_s=10)
        history = len(meter.records)
        binding = FakeBinding(paired.address, "glucose", "p-glu")
        async with live_manager(CONFIG, [binding]) as live:
            await live.sink.wait_for(lambda s: len(s.of_kind("glucose")) == history, WAIT)

            assert await ctl.forget_bond(meter.name) is True
            await eventually(lambda: live.state(meter.address) == NEEDS_PAIRING, within_s=WAIT,
                             what="needs_pairing")
            state = live.manager.device_states()[paired.address]
            assert state.last_error == "connect:key_missing"
            tried = len(live.attempts)
            assert live.audits == [(NEEDS_PAIRING_ACTION, REDACTOR.device_hash(meter.address))]

            # edge status: a problem line with the fix, and the daemon is not healthy
            doc = status_document(
                hub="hub-1", vault=await MemoryVault().stats(), cert_days=None,
                daemon=DaemonFacts(started_at=clock.now(), healthy=True, intake={},
                                   devices=[state], uplink_state="connected",
                                   uplink_stats=None, parts={}))
            assert doc["healthy"] is False
            problems = doc["problems"]
            assert isinstance(problems, list) and len(problems) == 1
            assert f"edge pair {paired.address} --patient" in problems[0]

            # the fix: `edge pair` again removes BlueZ's stale half itself and pairs afresh
            await pair_device(bleak_client_factory(), meter.address, kind="glucose",
                              clock=clock, scanner_factory=bleak_scanner_factory(),
                              connect_timeout_s=10)
            # meanwhile (seconds of real time) the daemon did not try again on its own
            assert len(live.attempts) == tried
            meter.add_glucose_record(mg_dl_value=111)
            await live.manager.refresh()
            await live.sink.wait_for(lambda s: len(s.of_kind("glucose")) == history + 1, WAIT)
            assert live.sink.duplicates == 0
            assert all(isinstance(r, GlucoseReading) for r in live.sink.of_kind("glucose"))
            assert len(live.audits) == 1
            assert live.state(meter.address) in ("connected", "syncing")
