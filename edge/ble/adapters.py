"""The thin D-Bus shell over BlueZ's adapters (bleak gives no API for them): which adapters are
present and which hold a device's bond (``GetManagedObjects``), adapters coming and going
(``InterfacesAdded`` / ``InterfacesRemoved`` of ``org.bluez.Adapter1``), and power-cycling one
(``Adapter1.Powered`` false, then true). Decisions are made elsewhere
(:mod:`edge.ble.adapter_health`, :mod:`edge.ble.adapter_pool`); this only does what it is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from edge.ble.profiles import normalize_address
from edge.errors import BleError

BLUEZ = "org.bluez"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
_ADAPTER_PATH = re.compile(r"^/org/bluez/(hci\d+)$")
_DEVICE_PATH = re.compile(r"^/org/bluez/(hci\d+)/dev_([0-9A-Fa-f_]{17})$")
#: how long one call to BlueZ may take
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Snapshot:
    """The adapters BlueZ has, and which adapters hold each device's bond."""

    present: frozenset[str] = frozenset()
    bonds: dict[str, frozenset[str]] = field(default_factory=dict)

    def bonded_on(self, address: str) -> frozenset[str]:
        try:
            return self.bonds.get(normalize_address(address), frozenset())
        except ValueError:
            return frozenset()


def snapshot_of(objects: dict[str, dict[str, dict[str, Any]]]) -> Snapshot:
    """*Pure*: a :class:`Snapshot` from ``GetManagedObjects`` (values unwrapped)."""
    present: set[str] = set()
    bonds: dict[str, set[str]] = {}
    for path, ifaces in objects.items():
        m = _ADAPTER_PATH.match(path)
        if m and ADAPTER in ifaces:
            present.add(m.group(1))
            continue
        d = _DEVICE_PATH.match(path)
        props = ifaces.get(DEVICE)
        if d and props is not None and (props.get("Bonded") or props.get("Paired")):
            bonds.setdefault(d.group(2).replace("_", ":").upper(), set()).add(d.group(1))
    return Snapshot(frozenset(present), {a: frozenset(s) for a, s in bonds.items()})


class BluezAdapters:
    """:class:`~edge.ble.ports.AdapterControl` on the system bus (``DBUS_SYSTEM_BUS_ADDRESS``
    is honoured, as bleak does)."""

    def __init__(self, bus_address: str | None = None) -> None:
        self._bus_address = bus_address
        self._bus: MessageBus | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        await self.close()
        try:
            bus = await MessageBus(bus_address=self._bus_address,
                                   bus_type=BusType.SYSTEM).connect()
        except (OSError, EOFError, ValueError) as exc:
            raise BleError("cannot reach BlueZ on the system D-Bus to follow its adapters") \
                from exc
        except Exception as exc:  # dbus-fast's own errors: the type only, never the text
            raise BleError(f"cannot connect to the system D-Bus ({type(exc).__name__})") \
                from exc
        self._bus = bus
        bus.add_message_handler(self._on_message)
        for member in ("InterfacesAdded", "InterfacesRemoved"):
            await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "AddMatch", "s",
                             [f"type='signal',sender='{BLUEZ}',interface='{OBJECT_MANAGER}',"
                              f"member='{member}'"])
        self._changed.set()  # the first snapshot is taken at once

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL or msg.interface != OBJECT_MANAGER:
            return
        if msg.member in ("InterfacesAdded", "InterfacesRemoved") and msg.body:
            path, ifaces = msg.body[0], msg.body[1]
            if _ADAPTER_PATH.match(str(path)) and ADAPTER in ifaces:
                self._changed.set()
            elif _DEVICE_PATH.match(str(path)) and DEVICE in ifaces:
                self._changed.set()  # bonds are read from the device objects

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list[Any] | None = None) -> Message:
        bus = self._bus
        if bus is None:
            raise BleError("not connected to the system D-Bus")
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [])
        try:
            reply = await asyncio.wait_for(bus.call(msg), CALL_TIMEOUT_S)
        except (TimeoutError, OSError, EOFError) as exc:
            raise BleError(f"BlueZ did not answer {member} ({type(exc).__name__})") from exc
        if reply is None or reply.message_type is MessageType.ERROR:
            name = (reply.error_name if reply is not None else None) or "no reply"
            raise BleError(f"BlueZ refused {member} ({name.rsplit('.', 1)[-1]})")
        return reply

    async def snapshot(self) -> Snapshot:
        reply = await self._call(BLUEZ, "/", OBJECT_MANAGER, "GetManagedObjects")
        objects = {
            str(path): {str(i): {str(k): v.value for k, v in props.items()}
                        for i, props in ifaces.items()}
            for path, ifaces in reply.body[0].items()
        }
        return snapshot_of(objects)

    async def wait_changed(self) -> None:
        bus = self._bus
        if bus is None:
            raise BleError("not connected to the system D-Bus")
        changed = asyncio.ensure_future(self._changed.wait())
        # shielded: cancelling this waiter must not cancel the bus's own disconnect future
        gone = asyncio.ensure_future(
            asyncio.shield(bus.wait_for_disconnect()))  # type: ignore[no-untyped-call]
        try:
            await asyncio.wait({changed, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            gone.cancel()
        if not self._changed.is_set():
            raise BleError("lost the system D-Bus while following adapters")
        self._changed.clear()

    async def power_cycle(self, adapter: str) -> None:
        if not re.fullmatch(r"hci\d+", adapter):
            raise ValueError("adapter names look like hci0")
        path = f"/org/bluez/{adapter}"
        for on in (False, True):
            await self._call(BLUEZ, path, PROPERTIES, "Set", "ssv",
                             [ADAPTER, "Powered", Variant("b", on)])

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.disconnect()
