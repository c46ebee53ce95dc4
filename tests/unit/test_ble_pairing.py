"""Pairing, unpairing and scanning against the in-process double (bleak's API and exceptions)."""

from __future__ import annotations

import pytest

from edge.ble.pairing import pair_device, unpair_device
from edge.ble.profiles import kind_from_services, normalize_address
from edge.ble.scanner import scan_for, scan_nearby
from edge.errors import BleError, PairingRefused
from firmware_sim.devices.base import SimDevice
from firmware_sim.fleet import build_fleet
from firmware_sim.inprocess import SimBleak
from firmware_sim.model.clock import ManualClock

pytestmark = pytest.mark.timeout(30)


def _sim(spec: str, seed: int = 2) -> tuple[SimBleak, ManualClock]:
    clock = ManualClock(autojump=True)
    return SimBleak(build_fleet(devices=spec, seed=seed, clock=clock)), clock


def _dev(sim: SimBleak, kind: str) -> SimDevice:
    return next(d for d in sim.fleet.devices if d.kind == kind)


async def test_pair_infers_kind_bonds_and_reads_device_information() -> None:
    sim, clock = _sim("hr:1,glucose:1")
    for kind, model in (("heart_rate", "SIM-HRS-200"), ("glucose", "SIM-BGM-30")):
        dev = _dev(sim, kind)
        paired = await pair_device(sim.Client, dev.address.lower(), clock=clock,
                                   scanner_factory=sim.Scanner)
        assert paired.kind == kind
        assert paired.address == dev.address
        assert paired.device_info["model"] == model
        assert set(paired.device_info) == {"manufacturer", "model", "serial", "firmware"}
        assert dev.paired and not dev.connected


async def test_wrong_kind_is_refused_and_leaves_no_bond() -> None:
    sim, clock = _sim("hr:1")
    strap = _dev(sim, "heart_rate")
    with pytest.raises(PairingRefused, match="Glucose service") as err:
        await pair_device(sim.Client, strap.address, kind="glucose", clock=clock,
                          scanner_factory=sim.Scanner)
    assert strap.address not in str(err.value)
    assert not strap.paired and not strap.connected


@pytest.mark.parametrize("how", ["failed", "rejected"])
async def test_device_refusing_to_bond_is_a_pairing_refusal(how: str) -> None:
    sim, clock = _sim("glucose:1")
    meter = _dev(sim, "glucose")
    meter.inject_fault({"pairing_refused": how})
    with pytest.raises(PairingRefused) as err:
        await pair_device(sim.Client, meter.address, clock=clock,
                          scanner_factory=sim.Scanner)
    assert meter.address not in str(err.value)
    assert not meter.paired and not meter.connected


async def test_absent_device_is_a_transient_error_after_the_scan_window() -> None:
    sim, clock = _sim("hr:1")
    strap = _dev(sim, "heart_rate")
    strap.set_visible(False)
    with pytest.raises(BleError, match="not found nearby"):
        await pair_device(sim.Client, strap.address, clock=clock,
                          scanner_factory=sim.Scanner, connect_timeout_s=7)
    assert clock.monotonic() >= 7


async def test_unpair_removes_the_bond() -> None:
    sim, clock = _sim("glucose:1")
    meter = _dev(sim, "glucose")
    await pair_device(sim.Client, meter.address, clock=clock, scanner_factory=sim.Scanner)
    assert meter.paired
    assert await unpair_device(sim.Client, meter.address)
    assert not meter.paired


async def test_scan_lists_every_device_with_its_kind() -> None:
    sim, clock = _sim("hr:2,glucose:1")
    found = await scan_nearby(sim.Scanner, clock, 3.0)
    assert {(n.name, n.kind) for n in found} == {
        ("SIM-HR-1", "heart_rate"), ("SIM-HR-2", "heart_rate"), ("SIM-GLU-1", "glucose")
    }
    assert {n.address for n in found} == {d.address for d in sim.fleet}
    assert [n.rssi for n in found] == sorted((n.rssi for n in found), reverse=True)
    assert clock.monotonic() >= 3.0


async def test_scan_for_finds_one_address_or_gives_up() -> None:
    sim, clock = _sim("hr:1")
    strap = _dev(sim, "heart_rate")
    seen = await scan_for(sim.Scanner, clock, strap.address.lower(), 5)
    assert seen is not None and seen.address == strap.address
    assert await scan_for(sim.Scanner, clock, "00:11:22:33:44:55", 5) is None


def test_kinds_and_addresses() -> None:
    assert kind_from_services(["180d"]) == "heart_rate"
    assert kind_from_services(["00001808-0000-1000-8000-00805f9b34fb", "180f"]) == "glucose"
    assert kind_from_services(["180f"]) == "other"
    assert normalize_address("aa-bb-cc-dd-ee-0f") == "AA:BB:CC:DD:EE:0F"
    with pytest.raises(ValueError) as err:
        normalize_address("12:34:56:78:9A")
    assert "12:34" not in str(err.value)
