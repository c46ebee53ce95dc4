"""The 50-device scenario through unchanged bleak: one scan finds all 50, and the gateway's
pattern of connecting to 10 devices at once works."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware_sim.cli import scenario_path
from firmware_sim.fleet import build_fleet
from firmware_sim.model.contract import uuid16
from tests.support.bluez import fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BATTERY_LEVEL = uuid16(0x2A19)
MODEL_NUMBER = uuid16(0x2A24)


async def test_one_scan_finds_all_50_then_10_concurrent_connections(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(scenario=scenario_path("fleet50"))
    assert len(fleet.devices) == 50
    async with fake_bluez(fleet) as sim:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)
        wanted = {d.address for d in fleet.devices}
        seen: dict[str, BLEDevice] = {}
        all_seen = asyncio.Event()

        def detected(device: BLEDevice, _adv: AdvertisementData) -> None:
            seen[device.address] = device
            if wanted <= seen.keys():
                all_seen.set()

        async with BleakScanner(detected):
            await asyncio.wait_for(all_seen.wait(), 20)
        assert set(seen) == wanted

        chosen = fleet.devices[::5]  # 10 devices, straps and meters
        assert len(chosen) == 10

        async def read_one(address: str) -> tuple[bytes, bytes]:
            async with BleakClient(seen[address], timeout=20) as client:
                return (
                    bytes(await client.read_gatt_char(BATTERY_LEVEL)),
                    bytes(await client.read_gatt_char(MODEL_NUMBER)),
                )

        results = await asyncio.wait_for(asyncio.gather(*(read_one(d.address) for d in chosen)), 60)
        for device, (battery, model) in zip(chosen, results, strict=True):
            assert battery == bytes([device.battery.level])  # type: ignore[attr-defined]
            assert model == device.info.model.encode()  # type: ignore[attr-defined]
            assert not device.connected
