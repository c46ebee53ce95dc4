"""The control interface of a running simulator: a D-Bus object on the simulator's private bus.

Bus name ``com.edge.Sim``, object ``/com/edge/sim``, interface ``com.edge.Sim1``. Devices are
named by address or name (``SIM-HR-1``). Structured arguments and results are JSON strings so
that fault plans and glucose records keep their shape without a D-Bus type per field:

=================================================== ===========================================
``ListDevices() -> s``                              JSON list of device summaries
``AddDevice(s kind, s options_json) -> s``          adds ``hr``/``glucose``; the new summary
``RemoveDevice(s device)``                          link drops, device leaves the bus
``DropLink(s device) -> b``                         False when it was not connected
``InjectFault(s device, s spec_json) -> s``         merges fault keys; the plan in force (JSON)
``ClearFaults(s device)``                           back to a well-behaved device
``AddGlucoseRecord(s device, s fields_json) -> q``  the new record's sequence number
``SetHeartRate(s device, i bpm)``                   pins the heart rate (20-300); -1 releases it
``SetVisible(s device, b visible)``                 appear in / vanish from scans
``ForgetBond(s device) -> b``                       the device loses its bond (reset, battery
                                                    change); False when it had none
``ListAdapters() -> s``                             JSON list of adapter summaries
``AddAdapter(s name, s address) -> s``              plugs in ``hciN`` ("" address: derived)
``RemoveAdapter(s name)``                           unplugs it: links drop, objects go
``WedgeAdapter(s name, s mode) -> s``               ``in_progress`` | ``silent`` until the
                                                    adapter is power-cycled (Powered off, on)
=================================================== ===========================================

Errors: ``com.edge.Sim.Error.NoSuchDevice``, ``com.edge.Sim.Error.NoSuchAdapter``,
``com.edge.Sim.Error.InvalidArguments``, ``com.edge.Sim.Error.NotSupported`` (e.g. a heart rate
for a glucose meter). Each error's text is one line meant for a person.

:class:`ControlClient` is the matching client (used by ``python -m firmware_sim ctl``).
"""

# No ``from __future__ import annotations``: dbus-fast reads these annotations at class creation.
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusInt32, DBusStr, DBusUInt16
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import ServiceInterface, dbus_method

from firmware_sim.bluez.registry import default_address
from firmware_sim.control_args import check_bpm, check_glucose_fields
from firmware_sim.errors import BusNameTakenError, SimError

if TYPE_CHECKING:
    from firmware_sim.bluez.adapter import AdapterNode
    from firmware_sim.bluez.server import FakeBlueZ
    from firmware_sim.fleet import Fleet, SimDevice

log = logging.getLogger(__name__)

CONTROL_BUS_NAME = "com.edge.Sim"
CONTROL_PATH = "/com/edge/sim"
CONTROL_INTERFACE = "com.edge.Sim1"
_ERROR = "com.edge.Sim.Error"

T = TypeVar("T")


class ControlError(SimError):
    """A control request failed; ``name`` is the D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


def _invalid(text: str) -> DBusError:
    return DBusError(f"{_ERROR}.InvalidArguments", text)


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _invalid(f"{what}: not JSON ({err.msg})") from err
    if not isinstance(value, dict):
        raise _invalid(f"{what}: expected a JSON object")
    return value


class ControlInterface(ServiceInterface):
    """``com.edge.Sim1`` over a :class:`~firmware_sim.fleet.Fleet`."""

    def __init__(self, fleet: "Fleet", bluez: "FakeBlueZ | None" = None) -> None:
        super().__init__(CONTROL_INTERFACE)
        self._fleet = fleet
        self._bluez = bluez

    def _device(self, device: str) -> "SimDevice":
        found = self._fleet.find(device)
        if found is None:
            raise DBusError(
                f"{_ERROR}.NoSuchDevice", f"no simulated device {device!r} (see: ctl list)"
            )
        return found

    def _server(self) -> "FakeBlueZ":
        if self._bluez is None:
            raise DBusError(f"{_ERROR}.NotSupported", "no fake BlueZ behind this simulator")
        return self._bluez

    def _adapter(self, name: str) -> "AdapterNode":
        found = self._server().registry.adapters.get(name)
        if found is None:
            raise DBusError(
                f"{_ERROR}.NoSuchAdapter", f"no adapter {name!r} (see: ctl adapters)"
            )
        return found

    def _control(self, device: str, method: str, kind: str) -> Callable[..., Any]:
        """The device's kind-specific control ``method``; NotSupported if it is not ``kind``."""
        found: Callable[..., Any] | None = getattr(self._device(device), method, None)
        if found is None:
            raise DBusError(f"{_ERROR}.NotSupported", f"not {kind}")
        return found

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DBusError:
            raise
        except KeyError as err:
            raise _invalid(str(err.args[0]) if err.args else "not found") from err
        except (ValueError, TypeError, ArithmeticError) as err:
            raise _invalid(str(err)) from err

    @dbus_method()
    def ListDevices(self) -> DBusStr:
        """JSON list of device summaries."""
        return json.dumps(self._fleet.describe(), default=str)

    @dbus_method()
    def AddDevice(self, kind: DBusStr, options_json: DBusStr) -> DBusStr:
        """Add a device of ``kind``; returns its summary (JSON)."""
        options = _json_object(options_json, "options")
        device = self._call(lambda: self._fleet.add(kind, **options))
        log.info("sim.control_device_added")
        return json.dumps(device.describe(), default=str)

    @dbus_method()
    def RemoveDevice(self, device: DBusStr) -> None:
        """Remove a device; its link drops first."""
        self._device(device)
        self._fleet.remove(device)
        log.info("sim.control_device_removed")

    @dbus_method()
    def DropLink(self, device: DBusStr) -> DBusBool:
        """Drop the device's link; False when not connected."""
        return self._device(device).drop_link("control-drop")

    @dbus_method()
    def InjectFault(self, device: DBusStr, spec_json: DBusStr) -> DBusStr:
        """Merge fault keys into the device's plan; returns the plan in force (JSON)."""
        dev = self._device(device)
        spec = _json_object(spec_json, "fault spec")
        plan = self._call(lambda: dev.inject_fault(spec))
        return json.dumps(plan.to_dict(), default=str)

    @dbus_method()
    def ClearFaults(self, device: DBusStr) -> None:
        """Back to a well-behaved device."""
        self._device(device).clear_faults()

    @dbus_method()
    def AddGlucoseRecord(self, device: DBusStr, fields_json: DBusStr) -> DBusUInt16:
        """Store a record on a meter; returns its sequence number."""
        add = self._control(device, "add_glucose_record", "a glucose meter")
        fields = self._call(lambda: check_glucose_fields(_json_object(fields_json, "record")))
        return int(self._call(lambda: add(**fields)))

    @dbus_method()
    def SetHeartRate(self, device: DBusStr, bpm: DBusInt32) -> None:
        """Pin a strap's heart rate; -1 releases it."""
        setter = self._control(device, "set_heart_rate", "a heart-rate strap")
        pinned = self._call(lambda: check_bpm(bpm))
        self._call(lambda: setter(pinned))

    @dbus_method()
    def SetVisible(self, device: DBusStr, visible: DBusBool) -> None:
        """Appear in or vanish from scans."""
        self._device(device).set_visible(visible)


    @dbus_method()
    def ForgetBond(self, device: DBusStr) -> DBusBool:
        """The device forgets its bond (the host keeps its half); its link drops."""
        had = self._device(device).forget_bond()
        log.info("sim.control_bond_forgotten")
        return had


    @dbus_method()
    def ListAdapters(self) -> DBusStr:
        """JSON list of adapter summaries."""
        return json.dumps([a.summary() for a in self._server().adapters])

    @dbus_method()
    def AddAdapter(self, name: DBusStr, address: DBusStr) -> DBusStr:
        """Plug in an adapter (InterfacesAdded); returns its summary (JSON)."""
        server = self._server()
        adapter = self._call(lambda: server.add_adapter(name, address or default_address(name)))
        log.info("sim.control_adapter_added")
        return json.dumps(adapter.summary())

    @dbus_method()
    def RemoveAdapter(self, name: DBusStr) -> None:
        """Unplug an adapter: its links drop, its objects go (InterfacesRemoved)."""
        self._adapter(name)
        self._server().remove_adapter(name)
        log.info("sim.control_adapter_removed")

    @dbus_method()
    def WedgeAdapter(self, name: DBusStr, mode: DBusStr) -> DBusStr:
        """Wedge the adapter's discovery (``in_progress`` | ``silent``) until power-cycled."""
        adapter = self._adapter(name)
        self._call(lambda: adapter.wedge(mode or "in_progress"))
        log.info("sim.control_adapter_wedged")
        return json.dumps(adapter.summary())


class ControlServer:
    """Exports :class:`ControlInterface` on its own connection to the simulator's bus."""

    def __init__(
        self, bus_address: str, fleet: "Fleet", bluez: "FakeBlueZ | None" = None
    ) -> None:
        self._address = bus_address
        self._iface = ControlInterface(fleet, bluez)
        self._bus: MessageBus | None = None

    async def start(self) -> None:
        """Connect, export the object and claim ``com.edge.Sim``."""
        bus = MessageBus(bus_address=self._address, bus_type=BusType.SYSTEM)
        await bus.connect()
        bus.export(CONTROL_PATH, self._iface)
        reply = await bus.request_name(CONTROL_BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise BusNameTakenError(f"{CONTROL_BUS_NAME} is already owned on this bus")
        self._bus = bus

    async def stop(self) -> None:
        """Leave the bus."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()


class ControlClient:
    """Calls ``com.edge.Sim1`` on a running simulator's bus."""

    def __init__(self, bus_address: str) -> None:
        self._address = bus_address
        self._bus: MessageBus | None = None

    async def __aenter__(self) -> "ControlClient":
        bus = MessageBus(bus_address=self._address, bus_type=BusType.SYSTEM)
        await bus.connect()
        self._bus = bus
        return self

    async def __aexit__(self, *exc: object) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()

    async def _call(self, member: str, signature: str = "", *body: Any) -> Any:
        if self._bus is None:
            raise RuntimeError("ControlClient used outside 'async with'")
        reply = await self._bus.call(
            Message(
                destination=CONTROL_BUS_NAME,
                path=CONTROL_PATH,
                interface=CONTROL_INTERFACE,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise ControlError(reply.error_name or "unknown", str(text))
        return reply.body[0] if reply.body else None

    async def list_devices(self) -> list[dict[str, Any]]:
        """Summaries of every device."""
        result: list[dict[str, Any]] = json.loads(await self._call("ListDevices"))
        return result

    async def add_device(self, kind: str, **options: Any) -> dict[str, Any]:
        """Add a device of ``kind`` (``hr``/``glucose``); returns its summary."""
        result: dict[str, Any] = json.loads(
            await self._call("AddDevice", "ss", kind, json.dumps(options))
        )
        return result

    async def remove_device(self, device: str) -> None:
        """Remove a device (address or name)."""
        await self._call("RemoveDevice", "s", device)

    async def drop_link(self, device: str) -> bool:
        """Drop the device's link; False if it was not connected."""
        return bool(await self._call("DropLink", "s", device))

    async def inject_fault(self, device: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Merge fault keys into the device's plan; returns the plan in force."""
        result: dict[str, Any] = json.loads(
            await self._call("InjectFault", "ss", device, json.dumps(spec))
        )
        return result

    async def clear_faults(self, device: str) -> None:
        """Remove every fault."""
        await self._call("ClearFaults", "s", device)

    async def add_glucose_record(self, device: str, **fields: Any) -> int:
        """Store a glucose record on a meter; returns its sequence number."""
        return int(
            await self._call("AddGlucoseRecord", "ss", device, json.dumps(fields, default=str))
        )

    async def set_heart_rate(self, device: str, bpm: int | None) -> None:
        """Pin a strap's heart rate (None releases it)."""
        await self._call("SetHeartRate", "si", device, -1 if bpm is None else bpm)

    async def list_adapters(self) -> list[dict[str, Any]]:
        """Summaries of every adapter."""
        result: list[dict[str, Any]] = json.loads(await self._call("ListAdapters"))
        return result

    async def add_adapter(self, name: str, address: str = "") -> dict[str, Any]:
        """Plug in adapter ``name`` (hciN); returns its summary."""
        result: dict[str, Any] = json.loads(await self._call("AddAdapter", "ss", name, address))
        return result

    async def remove_adapter(self, name: str) -> None:
        """Unplug adapter ``name``."""
        await self._call("RemoveAdapter", "s", name)

    async def wedge_adapter(self, name: str, mode: str = "in_progress") -> dict[str, Any]:
        """Wedge the adapter's discovery until it is power-cycled; returns its summary."""
        result: dict[str, Any] = json.loads(await self._call("WedgeAdapter", "ss", name, mode))
        return result

    async def forget_bond(self, device: str) -> bool:
        """Make the device lose its bond; False if it had none."""
        return bool(await self._call("ForgetBond", "s", device))

    async def set_visible(self, device: str, visible: bool) -> None:
        """Make a device appear in or vanish from scans."""
        await self._call("SetVisible", "sb", device, visible)
