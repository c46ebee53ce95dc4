"""The simulator's one exception root.

Every exception the simulator defines derives from :class:`SimError`; some also derive from a
builtin (``ValueError`` …) that callers catch. Failures that must look like the real thing stay
the real thing's types: the in-process bleak double raises bleak's exceptions and the fake
BlueZ replies with dbus-fast ``DBusError`` named ``org.bluez.Error.*``.
"""

from __future__ import annotations


class SimError(Exception):
    """Base of every simulator exception."""


class BusNameTakenError(SimError, RuntimeError):
    """Another connection already owns the well-known bus name the simulator wants."""
