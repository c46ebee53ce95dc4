"""Bonds per adapter from the gateway's side: ``edge pair --adapter`` bonds through the named
configured adapter (and refuses others), ``edge unpair`` removes the bond on every configured
adapter, and the daemon's BLE manager connects a meter through the adapter holding its bond;
when that adapter goes, the meter is placed on another one, where it has no bond, and goes
``needs_pairing``; when the same dongle comes back the meter returns to it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from edge.ble.agent import pairing_agent
from edge.ble.agent_policy import PairingPolicy
from edge.ble.pairing import pair_device
from edge.ble.ports import bleak_client_factory, bleak_scanner_factory
from edge.clock import SystemClock
from edge.config import BleConfig
from edge.testing import eventually
from edge.testing.ble import FakeBinding
from firmware_sim.control import ControlClient
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.fleet import build_fleet
from tests.integration.test_ble_cli import _config
from tests.integration.test_pairing_agent import (
    bindings_and_audit,
    consent,
    edge_env,
    edge_pair,
    last_line,
)
from tests.support.ble_rig import live_manager
from tests.support.bluez import REPO, fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SPEC = "glucose:1:pairing=passkey:passkey=123456"
PASSKEY = 123456
WAIT = 30.0
CONFIG = BleConfig(adapters=("hci0", "hci1"), scan_seconds=1.0, connect_timeout_s=10.0,
                   reconnect_base_s=0.1, reconnect_cap_s=0.5, racp_timeout_s=10.0,
                   stall_timeout_s=30.0, needs_pairing_retry_s=3600.0)


def two_adapter_config(tmp_path: Path) -> Path:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[ble]\n", '[ble]\nadapters = ["hci0", "hci1"]\n'))
    return cfg


async def bonded_on(ctl: ControlClient, address: str) -> set[str]:
    return {str(a["name"]) for a in await ctl.list_adapters() if address in a["bonded"]}


async def test_edge_pair_bonds_through_the_named_adapter_and_unpair_removes_every_bond(
    tmp_path: Path,
) -> None:
    cfg = two_adapter_config(tmp_path)
    await consent(tmp_path, "p-one")
    fleet = build_fleet(devices=SPEC, seed=5)
    meter = fleet.devices[0]
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        await ctl.add_adapter("hci1")
        env = edge_env(sim, cfg, tmp_path)

        # an adapter that is not configured: exit 2, one line naming the configured ones
        run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey",
                              str(PASSKEY), "--adapter", "hci2")
        assert run.rc == 2
        assert run.err.strip().count("\n") == 0, run.err
        assert "hci0, hci1" in last_line(run) and "--adapter" in last_line(run)
        assert await bonded_on(ctl, meter.address) == set()

        run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey",
                              str(PASSKEY), "--adapter", "hci1")
        assert run.rc == 0, run.err
        assert "via hci1" in run.out
        assert await bonded_on(ctl, meter.address) == {"hci1"}

        # without --adapter: the first configured adapter, as before
        run = await edge_pair(env, meter.address, "--patient", "p-one", "--passkey",
                              str(PASSKEY))
        assert run.rc == 0, run.err
        assert "via hci0" in run.out
        assert await bonded_on(ctl, meter.address) == {"hci0", "hci1"}

        # (a subprocess the event loop waits on: the fake BlueZ runs in this loop)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "unpair", meter.address, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith("unpaired")
        assert await bonded_on(ctl, meter.address) == set()
        assert not meter.paired
    bound, _audit, vault = await bindings_and_audit(tmp_path)
    await vault.close()
    assert bound == []


async def test_the_daemon_connects_a_meter_through_the_adapter_holding_its_bond(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices=SPEC, seed=5)
    meter = fleet.devices[0]
    assert isinstance(meter, GlucoseMeter)
    async with fake_bluez(fleet, control=True) as sim, ControlClient(sim.address) as ctl:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        hci1 = await ctl.add_adapter("hci1")
        async with pairing_agent(PairingPolicy(meter.address, passkey=PASSKEY)):
            paired = await pair_device(bleak_client_factory("hci1"), meter.address,
                                       kind="glucose", clock=SystemClock(),
                                       scanner_factory=bleak_scanner_factory("hci1"),
                                       connect_timeout_s=10)
        assert await bonded_on(ctl, meter.address) == {"hci1"}
        history = len(meter.records)
        binding = FakeBinding(paired.address, "glucose", "p")
        async with live_manager(CONFIG, [binding]) as live:
            await live.sink.wait_for(lambda s: len(s.of_kind("glucose")) == history, WAIT)
            # hci0 is first in order and as free: only the bond puts the meter on hci1
            assert live.adapter_of(meter.address) == "hci1"

            # the bonding dongle goes: the meter is placed on hci0, where it holds no bond.
            # The glucose session's pair() there is answered by no agent that knows the
            # passkey, so it fails: the session ends "pairing" and nothing is read
            await ctl.remove_adapter("hci1")
            await eventually(
                lambda: live.adapter_of(meter.address) == "hci0"
                and live.manager.device_states()[meter.address.upper()].last_error == "pairing",
                within_s=WAIT, what="pairing refused on hci0")
            # an authentication failure: needs_pairing (rare retries), not a retry storm
            await eventually(lambda: live.state(meter.address) == "needs_pairing",
                             within_s=WAIT, what="needs_pairing on hci0")
            assert len(live.sink.of_kind("glucose")) == history
            assert await bonded_on(ctl, meter.address) == set()  # no half-made bond on hci0

            # the same dongle comes back with its bond: the meter returns to it and syncs
            meter.add_glucose_record(mg_dl_value=101)
            await ctl.add_adapter("hci1", str(hci1["address"]))
            await live.sink.wait_for(lambda s: len(s.of_kind("glucose")) == history + 1, WAIT)
            assert live.adapter_of(meter.address) == "hci1"
            assert live.sink.duplicates == 0
