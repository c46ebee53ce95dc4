"""An in-process stand-in for bleak's scanner and client, backed by a :class:`Fleet`.

For fast unit tests of the gateway's BLE layer: no D-Bus, no daemon. It returns bleak's own
objects (``BLEDevice``, ``AdvertisementData``, ``BleakGATTServiceCollection``) and fails with the
exceptions bleak 3.1's BlueZ backend raises for the same BlueZ reply, because every simulated
failure is turned into the D-Bus error reply BlueZ would send and handed to bleak's own reply
checks (``assert_reply`` / ``assert_gatt_reply``). So, as with real bleak:

* ATT errors (``Operation failed with ATT error: 0x80``), ``NotAuthorized``, ``NotSupported``
  and ``ImproperlyConfigured`` on GATT operations raise ``BleakGATTProtocolError``;
  other BlueZ errors raise ``BleakDBusError(name, body)``;
* a device that is gone or was never seen raises ``BleakDeviceNotFoundError``;
* ``InProgress`` on a read or write is retried (bleak polls every 10 ms);
* a connect failing ``le-connection-abort-by-local`` is retried until the timeout
  (then ``TimeoutError``).

Durations (scan time, connect timeout, retry pauses) run on the fleet's clock, so with a
``ManualClock(autojump=True)`` a test never waits in real time.

Use::

    sim = SimBleak(fleet)
    async with sim.Scanner(service_uuids=[HR]) as scanner: ...
    devices = await sim.Scanner.discover(timeout=2, return_adv=True)
    async with sim.Client(ble_device, disconnected_callback=cb) as client: ...

``sim.Scanner`` / ``sim.Client`` are classes bound to the fleet, shaped like ``BleakScanner`` /
``BleakClient`` (constructor and classmethods), so the gateway can take them as factories.
:func:`inprocess_frontend` is the same pair as an async context manager, for test fixtures that
run one suite against several front ends.

Pairing asks ``sim.agent`` (a :class:`SimAgent`; :class:`PolicyAgent` answers with the
gateway's own policy) as bluetoothd asks the registered agent: passkey and numeric comparison
devices bond or fail with BlueZ's errors, as on the fake BlueZ.

The modules: :mod:`.binding` (``SimBleak``, front ends), :mod:`.agent` (pairing),
:mod:`.scanner`, :mod:`.client`, :mod:`.objects` (bleak's device/advertisement/GATT
objects), :mod:`.errors` (bleak's exceptions for simulated failures), :mod:`.events`
(callback plumbing).
"""

from firmware_sim.inprocess.agent import AgentSaidNo, PolicyAgent, SimAgent
from firmware_sim.inprocess.binding import (
    ClientFactory,
    Frontend,
    ScannerFactory,
    SimBleak,
    bound_sim,
    inprocess_frontend,
)
from firmware_sim.inprocess.client import SimBleakClient
from firmware_sim.inprocess.scanner import SimBleakScanner

__all__ = [
    "AgentSaidNo",
    "ClientFactory",
    "Frontend",
    "PolicyAgent",
    "ScannerFactory",
    "SimAgent",
    "SimBleak",
    "SimBleakClient",
    "SimBleakScanner",
    "bound_sim",
    "inprocess_frontend",
]
