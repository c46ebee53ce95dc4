"""BlueZ's own ``bluetoothctl`` (Debian package ``bluez``) as an independent client of the fake
BlueZ: scan, connect, list attributes, notify, and pair a passkey meter with bluetoothctl's own
agent answering the passkey prompt.

bluetoothctl runs on a pseudo-terminal (it prompts there) with ``DBUS_SYSTEM_BUS_ADDRESS``
pointing at the simulator's private bus, so it never sees a system bluetoothd. Every wait is a
bounded read of its output for an expected line.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from firmware_sim.fleet import build_fleet
from tests.support.bluez import REPO, serve_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WAIT = 10.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x01|\x02|\r")
HR_MEASUREMENT = "00002a37-0000-1000-8000-00805f9b34fb"
PASSKEY_SPEC = "glucose:1:pairing=passkey:passkey=123456"


class Bluetoothctl:
    """``bluetoothctl`` on a pty: :meth:`send` a command line, :meth:`expect` output."""

    def __init__(self, bus_address: str) -> None:
        exe = shutil.which("bluetoothctl")
        if exe is None:
            pytest.fail(
                "bluetoothctl not found: install Debian's bluez package "
                "(sudo apt-get install -y bluez; `make setup` does)",
                pytrace=False,
            )
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus_address, TERM="dumb")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.execve(exe, [exe], env)
        self.output = ""
        self._seen = 0

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def expect(self, pattern: str, within_s: float = WAIT) -> re.Match[str]:
        """Read until ``pattern`` (a regex) matches output not yet matched; returns the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within_s
        while True:
            found = regex.search(self.output, self._seen)
            if found is not None:
                self._seen = found.end()
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = self.output[-2000:]
                raise AssertionError(f"bluetoothctl never printed /{pattern}/; last:\n{tail}")
            ready, _w, _x = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child is gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"bluetoothctl exited; output:\n{self.output[-2000:]}")
                self.output += ANSI.sub("", chunk.decode(errors="replace"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send("quit")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            done, _status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            ready, _w, _x = select.select([self.fd], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    os.read(self.fd, 65536)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@contextlib.contextmanager
def bluetoothctl(bus_address: str) -> Iterator[Bluetoothctl]:
    ctl = Bluetoothctl(bus_address)
    try:
        # connected to the fake bluetoothd: bluetoothctl registers its own agent at once
        ctl.expect(r"Agent registered")
        yield ctl
    finally:
        ctl.close()


def sim_devices(bus_address: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "ctl", "--bus", bus_address, "list"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )  # fmt: skip
    devices: list[dict[str, object]] = json.loads(done.stdout)
    return devices


def scan_for(ctl: Bluetoothctl, address: str, name: str) -> None:
    ctl.send("scan on")
    ctl.expect(rf"\[NEW\] Device {address} {name}")
    ctl.send("scan off")
    ctl.expect("Discovery stopped")


def test_scan_connect_list_attributes_and_notify() -> None:
    strap = build_fleet(devices="hr:1", seed=6).devices[0]
    with (
        serve_process(["--devices", "hr:1", "--seed", "6"]) as served,
        bluetoothctl(served.address) as ctl,
    ):
        ctl.send("list")
        ctl.expect(r"Controller 00:1A:7D:DA:71:13 sim-hci0 \[default\]")
        scan_for(ctl, strap.address, "SIM-HR-1")
        ctl.send(f"connect {strap.address}")
        ctl.expect(rf"Device {strap.address} ServicesResolved: yes")
        ctl.expect("Connection successful")
        ctl.send("menu gatt")
        ctl.send("list-attributes")
        ctl.expect(rf"char\w{{4}}\s+{HR_MEASUREMENT}\s+Heart Rate Measurement")
        ctl.expect(r"Battery Level")
        ctl.send(f"select-attribute {HR_MEASUREMENT}")
        ctl.send("attribute-info")
        ctl.expect(r"Characteristic - Heart Rate Measurement")
        ctl.expect(r"Flags: notify")
        ctl.send("notify on")
        ctl.expect("Notify started")
        # the strap beats once a second: a value change arrives as bluetoothctl shows it
        ctl.expect(r"\[CHG\] Attribute \S+/char\w{4} Value:\n[^\n]*\s[0-9a-f]{2} [0-9a-f]{2} ")
        ctl.send("notify off")
        ctl.expect("Notify stopped")
        ctl.send("back")
        ctl.send(f"disconnect {strap.address}")
        ctl.expect("Successful disconnected")
        assert served.stop() == 0


def test_pair_a_passkey_meter_with_bluetoothctls_own_agent() -> None:
    meter = build_fleet(devices=PASSKEY_SPEC, seed=6).devices[0]
    with (
        serve_process(["--devices", PASSKEY_SPEC, "--seed", "6"]) as served,
        bluetoothctl(served.address) as ctl,
    ):
        ctl.send("agent off")
        ctl.expect("Agent unregistered")
        ctl.send("agent KeyboardOnly")
        ctl.expect("Agent registered")
        ctl.send("default-agent")
        ctl.expect("Default agent request successful")
        scan_for(ctl, meter.address, "SIM-GLU-1")
        ctl.send(f"pair {meter.address}")
        ctl.expect(r"Enter passkey \(number in 0-999999\):")
        ctl.send("123456")
        ctl.expect(rf"Device {meter.address} Paired: yes")
        ctl.expect("Pairing successful")
        ctl.send(f"info {meter.address}")
        ctl.expect(r"Paired: yes")
        (summary,) = sim_devices(served.address)
        assert summary["paired"] is True


def test_a_wrong_passkey_from_bluetoothctl_bonds_nothing() -> None:
    meter = build_fleet(devices=PASSKEY_SPEC, seed=6).devices[0]
    with (
        serve_process(["--devices", PASSKEY_SPEC, "--seed", "6"]) as served,
        bluetoothctl(served.address) as ctl,
    ):
        ctl.send("default-agent")  # bluetoothctl's own agent, registered at start
        ctl.expect("Default agent request successful")
        scan_for(ctl, meter.address, "SIM-GLU-1")
        ctl.send(f"pair {meter.address}")
        ctl.expect(r"Enter passkey \(number in 0-999999\):")
        ctl.send("654321")
        ctl.expect(r"Failed to pair: org\.bluez\.Error\.AuthenticationFailed")
        ctl.send(f"info {meter.address}")
        ctl.expect(r"Paired: no")
        ctl.expect(r"Bonded: no")
        (summary,) = sim_devices(served.address)
        assert summary["paired"] is False
