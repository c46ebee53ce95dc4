"""The fake BlueZ front end: simulated peripherals as ``org.bluez`` on a private D-Bus.

Typical use::

    with PrivateBus() as bus:                      # a dbus-daemon of our own
        async with FakeBlueZ(bus.address, fleet.devices) as bluez:
            ...  # DBUS_SYSTEM_BUS_ADDRESS=bus.address, then unchanged bleak works
"""

from firmware_sim.bluez.bus import APT_HINT, BusStartError, PrivateBus
from firmware_sim.bluez.server import BlueZOptions, FakeBlueZ, RecordedCall

__all__ = ["APT_HINT", "BlueZOptions", "BusStartError", "FakeBlueZ", "PrivateBus", "RecordedCall"]
