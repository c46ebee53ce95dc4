"""``python -m firmware_sim``: list, serve (as a subprocess, driven by bleak and ``ctl``), and
a clean stop that leaves no process, socket or directory behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from edge.testing import eventually
from firmware_sim.fleet import build_fleet
from tests.support.bluez import REPO, pid_alive, serve_process, use_fake_bluez

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WAIT = 10.0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_sim", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )


def ctl(address: str, *args: str) -> Any:
    done = run_cli("ctl", "--bus", address, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_list_shows_names_kinds_and_seed_stable_addresses() -> None:
    first = run_cli("list", "--devices", "hr:2,glucose:1", "--seed", "5")
    second = run_cli("list", "--devices", "hr:2,glucose:1", "--seed", "5")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    fleet = build_fleet(devices="hr:2,glucose:1", seed=5)
    rows = [line.split() for line in first.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (d.name, d.kind, d.address) for d in fleet.devices
    ]
    assert [r[0] for r in rows] == ["SIM-HR-1", "SIM-HR-2", "SIM-GLU-1"]
    as_json = json.loads(run_cli("list", "--devices", "hr:1", "--json").stdout)
    assert as_json[0]["name"] == "SIM-HR-1"


def test_list_of_a_scenario_file(tmp_path: Path) -> None:
    scenario = tmp_path / "two.toml"
    scenario.write_text('seed = 9\n[[devices]]\nkind = "glucose"\ncount = 2\n', encoding="utf-8")
    done = run_cli("list", "--scenario", str(scenario))
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [
        "SIM-GLU-1",
        "SIM-GLU-2",
    ]


def test_bad_arguments_are_one_line_errors_and_start_nothing(tmp_path: Path) -> None:
    done = run_cli("serve", "--scenario", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SYSTEM_BUS_ADDRESS"}
    done = run_cli("ctl", "list", env=env)
    assert done.returncode == 2
    assert "DBUS_SYSTEM_BUS_ADDRESS" in done.stderr


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT", "Ctrl-C-to-group"],
)
def test_serve_stops_cleanly_on_signal(signum: int, group: bool) -> None:
    with serve_process(["--devices", "hr:1,glucose:1", "--seed", "2"]) as served:
        socket_path = served.socket_path
        assert socket_path.exists()
        daemons = served.daemon_pids()
        assert len(daemons) == 1 and pid_alive(daemons[0])
        assert served.stop(signum, group=group) == 0, served.stderr()
        assert served.proc.stdout is not None
        assert served.proc.stdout.read() == b""  # the address line was the only output
        assert not pid_alive(daemons[0])
        assert not socket_path.exists()
        assert not socket_path.parent.exists()


async def test_serve_is_usable_by_bleak_and_driven_by_ctl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with serve_process(["--devices", "hr:1,glucose:1", "--seed", "4"]) as served:
        address = served.address
        use_fake_bluez(monkeypatch, address, tmp_path)
        listed = ctl(address, "list")
        assert [d["name"] for d in listed] == ["SIM-HR-1", "SIM-GLU-1"]
        added = ctl(address, "add", "hr", "resting_bpm=70")
        assert added["name"] == "SIM-HR-2"

        seen: dict[str, BLEDevice] = {}
        all_seen = asyncio.Event()

        def detected(device: BLEDevice, adv: AdvertisementData) -> None:
            seen[adv.local_name or ""] = device
            if {"SIM-HR-1", "SIM-HR-2", "SIM-GLU-1"} <= seen.keys():
                all_seen.set()

        async with BleakScanner(detected):
            await asyncio.wait_for(all_seen.wait(), WAIT)

        # a heart rate pinned from the command line arrives in the strap's notifications
        ctl(address, "hr", "SIM-HR-1", "142")
        beats: asyncio.Queue[bytes] = asyncio.Queue()
        dropped = asyncio.Event()
        client = BleakClient(seen["SIM-HR-1"], disconnected_callback=lambda _c: dropped.set())
        await client.connect()
        await client.start_notify(
            "00002a37-0000-1000-8000-00805f9b34fb", lambda _c, d: beats.put_nowait(bytes(d))
        )
        beat = await asyncio.wait_for(beats.get(), WAIT)  # the strap ticks once a second
        assert (beat[1] if not beat[0] & 1 else int.from_bytes(beat[1:3], "little")) == 142
        assert ctl(address, "drop", "SIM-HR-1") == {"dropped": True}
        await asyncio.wait_for(dropped.wait(), WAIT)
        assert not client.is_connected
        await client.disconnect()

        plan = ctl(address, "fault", "SIM-GLU-1", "connect_failures=1", "pairing_refused=failed")
        assert plan == {"connect_failures": 1, "pairing_refused": "failed"}
        record = ctl(address, "glucose", "SIM-GLU-1", "concentration=5.5", "unit=mmol/L")
        assert isinstance(record["sequence"], int)
        ctl(address, "visible", "SIM-HR-2", "no")
        ctl(address, "remove", "SIM-HR-2")
        assert [d["name"] for d in ctl(address, "list")] == ["SIM-HR-1", "SIM-GLU-1"]

        missing = run_cli("ctl", "--bus", address, "drop", "SIM-NOPE-9")
        assert missing.returncode == 1
        assert missing.stderr == "error: no simulated device 'SIM-NOPE-9' (see: ctl list)\n"
        assert served.stop() == 0


async def test_serve_killed_outright_still_takes_its_daemon_down() -> None:
    with serve_process(["--devices", "hr:1"]) as served:
        (daemon,) = served.daemon_pids()
        directory = served.socket_path.parent
        served.proc.kill()  # no chance to clean up: the kernel's parent-death signal must
        served.proc.wait(timeout=WAIT)
        try:
            await eventually(
                lambda: not pid_alive(daemon), within_s=WAIT, what="the daemon killed by the kernel"
            )
        finally:
            # only the directory is left behind after SIGKILL; tidy it for the test run
            for leftover in directory.glob("*"):
                leftover.unlink()
            directory.rmdir()


def test_serve_exits_with_an_error_when_its_bus_dies() -> None:
    with serve_process(["--devices", "hr:1"]) as served:
        (daemon,) = served.daemon_pids()
        directory = served.socket_path.parent
        os.kill(daemon, signal.SIGKILL)
        assert served.proc.wait(timeout=WAIT) == 1
        assert "sim.bus_lost" in served.stderr()
        assert not directory.exists()


def test_ctl_help_lists_the_fields_and_fault_keys_it_takes() -> None:
    top = run_cli("ctl", "--help")
    assert top.returncode == 0
    for key in ("connect_failures", "pairing_refused", "canceled", "concentration", "base_time"):
        assert key in top.stdout
    for command in ("forget-bond", "adapters", "add-adapter", "remove-adapter", "wedge"):
        assert command in top.stdout
    fault = run_cli("ctl", "fault", "--help")
    assert "racp_interrupt_after_records" in fault.stdout
    assert "mg_dl_value" in run_cli("ctl", "glucose", "--help").stdout
    add = run_cli("ctl", "add", "--help").stdout
    assert "passkey" in add and "pairing" in add and "resting_bpm" in add
    clear = run_cli("ctl", "clear-faults", "--help").stdout
    assert "every fault key back to its default" in clear


def _one_error_line(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "com.edge" not in done.stderr and "org." not in done.stderr
    assert "class" not in done.stderr and "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0]


def test_ctl_bad_values_are_one_clear_line_and_leave_no_traceback() -> None:
    with serve_process(["--devices", "hr:1,glucose:1", "--seed", "4"]) as served:
        bus = served.address
        def state() -> list[tuple[Any, ...]]:
            return [(d["name"], d["faults"], d.get("records")) for d in ctl(bus, "list")]

        before = state()
        _one_error_line(run_cli("ctl", "--bus", bus, "hr", "SIM-HR-1", "-5"), 2, "20-300")
        _one_error_line(run_cli("ctl", "--bus", bus, "hr", "SIM-HR-1", "fast"), 2, "20-300")
        _one_error_line(
            run_cli("ctl", "--bus", bus, "glucose", "SIM-GLU-1", "concentration=abc"),
            2,
            "concentration: expected a number",
        )
        _one_error_line(
            run_cli("ctl", "--bus", bus, "glucose", "SIM-GLU-1", "colour=red"),
            2,
            "unknown record field 'colour'",
        )
        _one_error_line(
            run_cli("ctl", "--bus", bus, "glucose", "SIM-GLU-1", "base_time=yesterday"),
            2,
            "base_time: expected ISO 8601",
        )
        _one_error_line(
            run_cli("ctl", "--bus", bus, "fault", "SIM-HR-1", "pairing_refused=maybe"),
            2,
            "pairing_refused",
        )
        _one_error_line(run_cli("ctl", "--bus", bus, "hr", "SIM-GLU-1", "80"), 1, "not a")
        _one_error_line(run_cli("ctl", "--bus", bus, "wedge", "hci7"), 1, "no adapter 'hci7'")
        assert state() == before  # nothing changed by the refused requests
        ctl(bus, "hr", "SIM-HR-1", "auto")

        # clear-faults does what its help says: every fault key back to its default
        ctl(bus, "fault", "SIM-HR-1", "connect_failures=2", "implausible=true")
        assert ctl(bus, "clear-faults", "SIM-HR-1") == {"faults": {}}
        assert ctl(bus, "list")[0]["faults"] == {}

        # bonds and adapters
        assert ctl(bus, "forget-bond", "SIM-GLU-1") == {"bond_forgotten": False}
        assert [a["name"] for a in ctl(bus, "adapters")] == ["hci0"]
        added = ctl(bus, "add-adapter", "hci1")
        assert (added["name"], added["powered"], added["wedged"]) == ("hci1", True, None)
        assert ctl(bus, "wedge", "hci1", "silent")["wedged"] == "silent"
        ctl(bus, "remove-adapter", "hci1")
        assert [a["name"] for a in ctl(bus, "adapters")] == ["hci0"]
        assert served.stop() == 0
        assert "Traceback" not in served.stderr()
