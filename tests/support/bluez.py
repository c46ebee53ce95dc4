"""Start a fake BlueZ for tests: in process (:func:`fake_bluez`) or as the real command line
(:func:`serve_process`).

In-process use with bleak (one fake per event loop; pytest-asyncio gives each test its own)::

    async def test_x(monkeypatch, tmp_path):
        fleet = build_fleet(devices="hr:1", seed=1)
        async with fake_bluez(fleet) as sim:
            use_fake_bluez(monkeypatch, sim.address, tmp_path)
            async with BleakClient(...) ...

``use_fake_bluez`` sets ``DBUS_SYSTEM_BUS_ADDRESS`` (bleak reads it when it first connects in a
loop) and puts a ``bluetoothctl`` shim on PATH so bleak's version probe never reaches a real
BlueZ tool. Both need a real ``dbus-daemon``; without one the helpers raise (never skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from edge.testing import eventually
from firmware_sim.bluez import BlueZOptions, FakeBlueZ, PrivateBus
from firmware_sim.control import ControlServer
from firmware_sim.fleet import Fleet

ENV_BUS = "DBUS_SYSTEM_BUS_ADDRESS"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class SimBus:
    """A running private bus with the fake BlueZ (and optionally the control object)."""

    address: str
    bus: PrivateBus
    bluez: FakeBlueZ
    fleet: Fleet
    control: ControlServer | None = None


@contextlib.asynccontextmanager
async def fake_bluez(
    fleet: Fleet,
    *,
    options: BlueZOptions | None = None,
    control: bool = False,
    start_fleet: bool = False,
) -> AsyncIterator[SimBus]:
    """Start a private dbus-daemon and a fake BlueZ serving ``fleet``; stop both on exit.

    ``start_fleet`` also runs the devices' periodic behaviour on the fleet's clock (leave it off
    to drive the devices by hand, e.g. ``await strap.tick()``).
    """
    bus = PrivateBus()
    bus.start()
    bluez: FakeBlueZ | None = None
    server: ControlServer | None = None
    try:
        bluez = FakeBlueZ(bus.address, options=options)
        bluez.follow(fleet)
        await bluez.start()
        if control:
            server = ControlServer(bus.address, fleet, bluez)
            await server.start()
        if start_fleet:
            await fleet.start()
        yield SimBus(bus.address, bus, bluez, fleet, server)
    finally:
        if start_fleet:
            await fleet.stop()
        if server is not None:
            await server.stop()
        if bluez is not None:
            await bluez.stop()
        bus.stop()


def bluetoothctl_shim(directory: Path, version: str = "5.66") -> Path:
    """Write an executable ``bluetoothctl`` answering ``--version`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "bluetoothctl"
    shim.write_text(f"#!/bin/sh\necho 'bluetoothctl: {version}'\n", encoding="utf-8")
    shim.chmod(0o755)
    return directory


def use_fake_bluez(monkeypatch: pytest.MonkeyPatch, address: str, tmp_path: Path) -> None:
    """Point bleak (in this test's event loop) at ``address``, with a bluetoothctl shim."""
    shim_dir = bluetoothctl_shim(tmp_path / "shim-bin")
    monkeypatch.setenv(ENV_BUS, address)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}")


# ---------------------------------------------------------------------------- the CLI


def socket_path_of(address: str) -> Path:
    """The socket path in a ``unix:path=…,guid=…`` D-Bus address."""
    for part in address.removeprefix("unix:").split(","):
        key, _, value = part.partition("=")
        if key == "path":
            return Path(value)
    raise ValueError("not a unix:path= address")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in task.read_text().split()]
    return found


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class ServeProcess:
    """A running ``python -m firmware_sim serve``."""

    proc: subprocess.Popen[bytes]
    address: str
    stderr_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def socket_path(self) -> Path:
        return socket_path_of(self.address)

    def daemon_pids(self) -> list[int]:
        """The serve process's children (its dbus-daemon)."""
        return child_pids(self.proc.pid)

    def stop(
        self, signum: int = signal.SIGTERM, timeout: float = 15.0, *, group: bool = False
    ) -> int:
        """Send ``signum`` (to its whole process group with ``group``, as a terminal's Ctrl-C
        does) and wait for the exit status."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (proc.poll() is not None and not sel.select(0)):
                break
            if not sel.select(min(remaining, 0.5)):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf


@contextlib.contextmanager
def serve_process(
    args: Sequence[str] = (),
    *,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
) -> Iterator[ServeProcess]:
    """Run ``python -m firmware_sim serve *args``, wait for its ``DBUS_SYSTEM_BUS_ADDRESS=``
    line and yield it; on exit SIGTERM it (SIGKILL if it will not stop)."""
    fd, name = tempfile.mkstemp(prefix="fsim-serve-", suffix=".log")
    stderr_path = Path(name)
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONPATH"] = f"{REPO}{os.pathsep}{run_env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=fd,
        stdin=subprocess.DEVNULL,
        env=run_env,
        cwd=REPO,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    os.close(fd)
    try:
        line = _read_line(proc, timeout)
        text = line.decode(errors="replace")
        if not text.startswith(f"{ENV_BUS}=") or not text.endswith("\n"):
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"serve printed {text!r} instead of the address line; stderr:\n"
                + stderr_path.read_text(errors="replace")
            )
        yield ServeProcess(proc, text.strip().split("=", 1)[1], stderr_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        stderr_path.unlink(missing_ok=True)


def bluez_frontend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, options: BlueZOptions | None = None
) -> Any:
    """The fake-BlueZ front end in the shape of ``firmware_sim.inprocess.inprocess_frontend``:
    ``async with bluez_frontend(mp, tmp)(fleet) as (BleakScanner, BleakClient): ...`` serves
    ``fleet`` on a private bus, points bleak at it and starts the fleet if it is not running."""
    from bleak import BleakClient, BleakScanner

    @contextlib.asynccontextmanager
    async def frontend(fleet: Fleet) -> AsyncIterator[tuple[Any, Any]]:
        start = not fleet.running
        async with fake_bluez(fleet, options=options, start_fleet=start) as sim:
            use_fake_bluez(monkeypatch, sim.address, tmp_path)
            yield BleakScanner, BleakClient

    return frontend


# ---------------------------------------------------------------------------- pairing agents


#: a D-Bus method's "no return value" that survives this module's deferred annotations
NoReply = Annotated[None, DBusSignature("")]


class RecordingAgent(ServiceInterface):
    """An ``org.bluez.Agent1`` for tests: answers ``RequestPasskey`` with ``passkey``,
    confirms unless ``confirm`` is False, replies ``error`` (a D-Bus error name) to every
    request when set, or never answers (until ``Cancel``) with ``hang``. Records each call."""

    def __init__(
        self,
        *,
        passkey: int = 0,
        confirm: bool = True,
        error: str | None = None,
        hang: bool = False,
    ) -> None:
        super().__init__("org.bluez.Agent1")
        self.passkey = passkey
        self.confirm = confirm
        self.error = error
        self.hang = hang
        self.calls: list[tuple[Any, ...]] = []
        self.canceled = asyncio.Event()

    async def _answer(self) -> None:
        if self.hang:
            await self.canceled.wait()
            raise DBusError("org.bluez.Error.Canceled", "Canceled")
        if self.error is not None:
            raise DBusError(self.error, "no")

    @dbus_method()
    async def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        self.calls.append(("RequestPasskey", device))
        await self._answer()
        return self.passkey

    @dbus_method()
    async def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> NoReply:
        self.calls.append(("RequestConfirmation", device, passkey))
        await self._answer()
        if not self.confirm:
            raise DBusError("org.bluez.Error.Rejected", "no")

    @dbus_method()
    async def RequestAuthorization(self, device: DBusObjectPath) -> NoReply:
        self.calls.append(("RequestAuthorization", device))
        await self._answer()

    @dbus_method()
    def Cancel(self) -> NoReply:
        self.calls.append(("Cancel",))
        self.canceled.set()

    @dbus_method()
    def Release(self) -> NoReply:
        self.calls.append(("Release",))


class BlueZClient:
    """A plain D-Bus client of the fake BlueZ (its own connection), for what bleak cannot
    show: agents, raw replies, properties."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.changes: list[tuple[str, dict[str, Any]]] = []
        #: Agent1 methods called on this connection, in the order they arrived
        self.agent_calls: list[str] = []
        #: InterfacesAdded / InterfacesRemoved: (path, interface names)
        self.added: list[tuple[str, list[str]]] = []
        self.removed: list[tuple[str, list[str]]] = []
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls, address: str) -> BlueZClient:
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        client = cls(bus)
        await client.call(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch",
            "s", ["type='signal',sender='org.bluez'"],
        )  # fmt: skip
        return client

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.METHOD_CALL and msg.interface == "org.bluez.Agent1":
            self.agent_calls.append(msg.member or "")
        if msg.message_type is MessageType.SIGNAL and msg.member == "InterfacesAdded":
            self.added.append((msg.body[0], list(msg.body[1])))
        if msg.message_type is MessageType.SIGNAL and msg.member == "InterfacesRemoved":
            self.removed.append((msg.body[0], list(msg.body[1])))
        if msg.message_type is MessageType.SIGNAL and msg.member == "PropertiesChanged":
            changed = {k: v.value for k, v in msg.body[1].items()}
            self.changes.append((msg.path or "", changed))

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
    ) -> Message:
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        return reply

    async def bluez(
        self, path: str, interface: str, member: str, signature: str = "", *body: Any
    ) -> Message:
        """Call ``org.bluez``; returns the reply (an error reply is returned, not raised)."""
        return await self.call("org.bluez", path, interface, member, signature, body)

    async def register_agent(
        self, agent: ServiceInterface, capability: str, *, default: bool = True
    ) -> str:
        """Export ``agent`` at /test/agent, register it (and make it the default)."""
        path = "/test/agent"
        self.bus.export(path, agent)
        reply = await self.bluez(
            "/org/bluez", "org.bluez.AgentManager1", "RegisterAgent", "os", path, capability
        )
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        if default:
            reply = await self.bluez(
                "/org/bluez", "org.bluez.AgentManager1", "RequestDefaultAgent", "o", path
            )
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return path

    async def managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """GetManagedObjects, with plain values."""
        reply = await self.bluez("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return {
            path: {iface: {k: v.value for k, v in props.items()} for iface, props in ifaces.items()}
            for path, ifaces in reply.body[0].items()
        }

    async def set_prop(self, path: str, interface: str, name: str, value: Any) -> Message:
        """Properties.Set (the reply, errors included)."""
        return await self.bluez(
            path, "org.freedesktop.DBus.Properties", "Set", "ssv", interface, name, value
        )

    async def prop(self, path: str, interface: str, name: str) -> Any:
        reply = await self.bluez(
            path, "org.freedesktop.DBus.Properties", "Get", "ss", interface, name
        )
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body[0].value

    async def discover(self, sim: SimBus, address: str) -> str:
        """Run a discovery until the device with ``address`` is on the bus; its path."""
        return await self.discover_on(sim, address, sim.bluez.adapter.name)

    async def discover_on(self, sim: SimBus, address: str, adapter: str) -> str:
        """Like :meth:`discover`, on ``adapter`` (hciN)."""
        path = sim.bluez.device_path(address, adapter)
        adapter_path = f"/org/bluez/{adapter}"
        reply = await self.bluez(adapter_path, "org.bluez.Adapter1", "StartDiscovery")
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        await eventually(
            lambda: sim.bluez.is_exported(path), within_s=10, what="the device discovered"
        )
        await self.bluez(adapter_path, "org.bluez.Adapter1", "StopDiscovery")
        return path

    def close(self) -> None:
        self.bus.disconnect()


def error_of(reply: Message) -> tuple[str | None, str]:
    """``(error name, text)`` of a reply (name None for a method return)."""
    if reply.message_type is not MessageType.ERROR:
        return None, ""
    return reply.error_name, str(reply.body[0]) if reply.body else ""
