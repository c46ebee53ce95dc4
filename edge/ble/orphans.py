"""Crash recovery for BLE links: release connections a previous daemon left behind.

BlueZ owns LE connections, not the process that asked for them. When the daemon is killed
(SIGKILL, OOM, power-cut of the process only), a bound device stays connected to the adapter;
a connected peripheral stops advertising, so the new daemon would wait for it forever. On
start-up the daemon is the only user of its bound devices (the control socket guarantees a
single instance), so any such connection is an orphan: disconnect it and let the device
supervisors connect afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from edge.log import get_logger

log = get_logger("edge.ble")

BLUEZ = "org.bluez"
DEVICE_IFACE = "org.bluez.Device1"


async def release_orphaned_links(addresses: Iterable[str], *, timeout_s: float = 10.0) -> int:
    """Disconnect every BlueZ device in ``addresses`` that is still connected; returns how
    many were released. Never raises: a failure is logged and the supervisors carry on."""
    wanted = {a.upper() for a in addresses}
    if not wanted:
        return 0
    try:
        return await asyncio.wait_for(_release(wanted), timeout_s)
    except Exception as exc:
        log.warning("ble.orphan_release_failed", error=type(exc).__name__)
        return 0


async def _release(wanted: set[str]) -> int:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(
            destination=BLUEZ, path="/", interface="org.freedesktop.DBus.ObjectManager",
            member="GetManagedObjects",
        ))
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            log.warning("ble.orphan_scan_failed")
            return 0
        # a{oa{sa{sv}}}: object path -> interface -> property -> Variant
        objects: dict[str, dict[str, dict[str, object]]] = reply.body[0]
        released = 0
        for path, ifaces in objects.items():
            dev = ifaces.get(DEVICE_IFACE)
            if not dev:
                continue
            address = str(_value(dev.get("Address")) or "").upper()
            if address not in wanted or not _value(dev.get("Connected")):
                continue
            done = await bus.call(Message(
                destination=BLUEZ, path=path, interface=DEVICE_IFACE, member="Disconnect",
            ))
            if done is not None and done.message_type == MessageType.METHOD_RETURN:
                released += 1
                log.info("ble.orphan_link_released", address=address)
            else:
                log.warning("ble.orphan_release_refused", address=address)
        return released
    finally:
        bus.disconnect()


def _value(v: object) -> object:
    """A property's value, unwrapped from its dbus-fast ``Variant``."""
    return getattr(v, "value", v)
