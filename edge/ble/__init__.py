"""The thin async shell over bleak: allow-list scanning, pairing, one supervisor per bound
device, heart-rate streaming and glucose RACP sync sessions.

``BleManager`` and ``DeviceSupervisor`` are imported lazily so that the CLI's pairing and
scanning commands do not load the session code (and its codecs) they do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.ble.ports import ClientFactory, IntakeSink, ScannerFactory
from edge.ble.state import DeviceState

if TYPE_CHECKING:
    from edge.ble.manager import BleManager
    from edge.ble.supervisor import DeviceSupervisor

__all__ = [
    "BleManager",
    "ClientFactory",
    "DeviceState",
    "DeviceSupervisor",
    "IntakeSink",
    "ScannerFactory",
]


def __getattr__(name: str) -> object:
    if name == "BleManager":
        from edge.ble import manager

        return manager.BleManager
    if name == "DeviceSupervisor":
        from edge.ble import supervisor

        return supervisor.DeviceSupervisor
    raise AttributeError(name)
