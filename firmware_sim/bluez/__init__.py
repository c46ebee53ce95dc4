"""The fake BlueZ front end: simulated peripherals as ``org.bluez`` on a private D-Bus.

Typical use::

    with PrivateBus() as bus:                      # a dbus-daemon of our own
        async with FakeBlueZ(bus.address, fleet.devices) as bluez:
            ...  # DBUS_SYSTEM_BUS_ADDRESS=bus.address, then unchanged bleak works

Modules: ``bus`` (the private dbus-daemon), ``server`` (FakeBlueZ: connection, exported objects,
message filter), ``registry`` (adapters coming and going, one device node per adapter),
``bonds`` (the device's side of its bonds, one per adapter), ``agent`` (AgentManager1 and
calling clients' Agent1 during Pair), ``adapter``, ``device``,
``gatt`` (the objects' state and behaviour),
``interfaces`` (their D-Bus surface), ``calls`` (caller and call recording), ``names`` (paths and
UUIDs as bluetoothd spells them), ``errors`` (simulated failures as BlueZ's D-Bus errors).
"""

from firmware_sim.bluez.bus import APT_HINT, BusStartError, PrivateBus
from firmware_sim.bluez.calls import RecordedCall
from firmware_sim.bluez.server import BlueZOptions, FakeBlueZ

__all__ = ["APT_HINT", "BlueZOptions", "BusStartError", "FakeBlueZ", "PrivateBus", "RecordedCall"]
