"""Canary: the D-Bus calls bleak makes in a standard session, against a committed list.

The fake BlueZ implements what bleak 3.1 calls. If a bleak upgrade calls something else (a new
method, other options, another order), this fails naming the difference, so the fake can be
checked against real BlueZ behaviour before the new bleak is trusted.

To accept a deliberate change, run this test with ``UPDATE_BLEAK_CANARY=1`` and review the
diff of ``tests/integration/data/bleak_calls.json``.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware_sim.bluez import BlueZOptions, RecordedCall
from firmware_sim.fleet import build_fleet
from firmware_sim.model.contract import uuid16
from tests.support.bluez import fake_bluez, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXPECTED = Path(__file__).parent / "data" / "bleak_calls.json"
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
HR_CONTROL_POINT = uuid16(0x2A39)


def _labelled(calls: list[RecordedCall]) -> list[str]:
    """Each call's shape, prefixed by which of bleak's bus connections made it (bus1 = the
    first connection seen, …): unique names differ between runs, the roles do not."""
    labels: dict[str, str] = {}
    out = []
    for call in calls:
        label = labels.setdefault(call.sender, f"bus{len(labels) + 1}")
        out.append(f"{label} {call.shape}")
    return out


async def test_bleak_standard_session_makes_the_recorded_dbus_calls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet = build_fleet(devices="hr:1", seed=3)
    strap = fleet.get("SIM-HR-1")
    async with fake_bluez(fleet, options=BlueZOptions(record_calls=True)) as sim:
        use_fake_bluez(monkeypatch, sim.address, tmp_path)

        found = asyncio.Event()
        device: list[BLEDevice] = []

        def detected(d: BLEDevice, _adv: AdvertisementData) -> None:
            if d.address == strap.address and not device:
                device.append(d)
                found.set()

        async with BleakScanner(detected):
            await asyncio.wait_for(found.wait(), 10)

        got: asyncio.Queue[bytes] = asyncio.Queue()
        client = BleakClient(device[0])
        await client.connect()
        await client.pair()
        assert await client.read_gatt_char(BODY_SENSOR_LOCATION)
        await client.start_notify(HR_MEASUREMENT, lambda _c, d: got.put_nowait(bytes(d)))
        await strap.tick()
        assert await asyncio.wait_for(got.get(), 10)
        await client.write_gatt_char(HR_CONTROL_POINT, b"\x01", response=True)
        await client.disconnect()
        actual = _labelled(sim.bluez.calls)

    if os.environ.get("UPDATE_BLEAK_CANARY"):
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(
            json.dumps({"bleak": version("bleak"), "calls": actual}, indent=2) + "\n",
            encoding="utf-8",
        )
    recorded = json.loads(EXPECTED.read_text(encoding="utf-8"))
    if actual != recorded["calls"]:
        diff = "\n".join(
            difflib.unified_diff(
                recorded["calls"],
                actual,
                fromfile=f"recorded with bleak {recorded['bleak']}",
                tofile=f"bleak {version('bleak')} now",
                lineterm="",
            )
        )
        pytest.fail(
            "bleak's D-Bus calls changed; check the fake BlueZ against real BlueZ for these, "
            "then refresh with UPDATE_BLEAK_CANARY=1:\n" + diff,
            pytrace=False,
        )
