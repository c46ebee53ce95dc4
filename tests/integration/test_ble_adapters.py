"""The daemon's BLE manager on bleak's real backend against the fake BlueZ: a wedged adapter
(``StartDiscovery`` -> InProgress, or a discovery that hears nothing) is power-cycled through
``Adapter1.Powered`` and readings resume with nothing lost; devices spread over two adapters,
move when one is unplugged, and a plugged-in one is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.ble.pairing import pair_device
from edge.ble.ports import bleak_client_factory, bleak_scanner_factory
from edge.clock import SystemClock
from edge.config import BleConfig
from edge.testing import eventually
from edge.testing.ble import FakeBinding
from firmware_sim.control import ControlClient
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import build_fleet
from tests.support.ble_rig import live_manager
from tests.support.bluez import fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONFIG = BleConfig(scan_seconds=1.0, connect_timeout_s=10.0, reconnect_base_s=0.1,
                   reconnect_cap_s=0.5, racp_timeout_s=10.0, stall_timeout_s=30.0,
                   wedge_scan_failures=3, wedge_silent_windows=3,
                   power_cycle_min_interval_s=3600.0)
WAIT = 30.0


@pytest.mark.parametrize(("mode", "reason"), [("in_progress", "scan_failures"),
                                              ("silent", "silent")])
async def test_a_wedged_adapter_is_power_cycled_and_readings_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str, reason: str
) -> None:
    fleet = build_fleet(devices="glucose:1", seed=31)
    meter = fleet.devices[0]
    assert isinstance(meter, GlucoseMeter)
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        paired = await pair_device(bleak_client_factory(), meter.address, kind="glucose",
                                   clock=SystemClock(), scanner_factory=bleak_scanner_factory(),
                                   connect_timeout_s=10)
        history = len(meter.records)
        async with live_manager(CONFIG, [FakeBinding(paired.address, "glucose", "p")]) as live:
            await live.sink.wait_for(lambda s: len(s.of_kind("glucose")) == history, WAIT)
            assert live.manager.adapter_stats()["hci0"]["power_cycles"] == 0

            await ctl.wedge_adapter("hci0", mode)
            meter.add_glucose_record(mg_dl_value=101)
            assert await ctl.drop_link(meter.name)  # the meter must be found by a scan again
            # the manager notices, power-cycles hci0, finds the meter and syncs the new record
            await live.sink.wait_for(lambda s: len(s.of_kind("glucose")) == history + 1, WAIT)
            assert (await ctl.list_adapters())[0]["wedged"] is None
            stats = live.manager.adapter_stats()["hci0"]
            assert stats["power_cycles"] == 1
            assert stats["last_power_cycle_reason"] == reason
            assert ("ble.adapter_power_cycled", f"hci0 {reason}") in live.audits
            assert live.sink.duplicates == 0
            cursor = await live.registry.cursor(paired.address)
            assert cursor is not None and cursor.last_sequence == meter.records[-1].sequence


async def test_devices_spread_over_adapters_move_when_one_goes_and_use_one_that_comes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:3", seed=32)
    s1, s2, s3 = fleet.devices
    config = CONFIG.model_copy(update={"adapters": ("hci0", "hci1")})
    async with fake_bluez(fleet, control=True, start_fleet=True) as sim, \
            ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        await ctl.add_adapter("hci1")
        bindings = [FakeBinding(s.address, "heart_rate", f"p-{i}") for i, s in enumerate((s1, s2))]
        async with live_manager(config, bindings) as live:
            def streaming(*straps: object) -> bool:
                got = {r.device_id for r in live.sink.of_kind("heart_rate")}
                return all(getattr(s, "address", "") in got for s in straps)

            await live.sink.wait_for(lambda _s: streaming(s1, s2), WAIT)
            on = {live.adapter_of(s1.address), live.adapter_of(s2.address)}
            assert on == {"hci0", "hci1"}  # one each: spread, not piled on the first
            moved = s1 if live.adapter_of(s1.address) == "hci1" else s2

            # unplug hci1: its device is moved to hci0 and streams again
            await ctl.remove_adapter("hci1")
            await eventually(lambda: live.manager.adapter_stats()["hci1"]["present"] is False,
                             within_s=WAIT, what="hci1 gone")
            before = len(live.sink.of_kind("heart_rate"))
            await eventually(lambda: live.adapter_of(moved.address) == "hci0"
                             and live.state(moved.address) == "connected",
                             within_s=WAIT, what="moved to hci0")
            await live.sink.wait_for(
                lambda s: sum(1 for r in list(s.readings.values())[before:]
                              if r.device_id == moved.address) >= 2, WAIT)
            assert ("ble.adapter_removed", "hci1 devices 1") in live.audits

            # plug it back: it is used for the next device
            await ctl.add_adapter("hci1")
            await eventually(lambda: live.manager.adapter_stats()["hci1"]["present"] is True,
                             within_s=WAIT, what="hci1 back")
            live.registry.bind(FakeBinding(s3.address, "heart_rate", "p-3"))
            await live.manager.refresh()
            await live.sink.wait_for(lambda _s: streaming(s3), WAIT)
            assert live.adapter_of(s3.address) == "hci1"
            stats = live.manager.adapter_stats()
            assert (stats["hci0"]["devices"], stats["hci1"]["devices"]) == (2, 1)
