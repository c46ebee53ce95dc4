"""The ``org.bluez`` D-Bus interfaces, as thin dbus-fast shells over the fake's state.

Each interface object holds a reference to a node (:mod:`.adapter`, :mod:`.device`,
:mod:`.gatt`) that owns the state and the behaviour; the classes here only declare the D-Bus
surface (names, signatures, read/write access) that bleak and other BlueZ clients rely on.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads the annotations at class
# creation and takes a string "None" return annotation for a signature.
from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt32,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

if TYPE_CHECKING:
    from firmware_sim.bluez.adapter import AdapterNode
    from firmware_sim.bluez.agent import AgentManager
    from firmware_sim.bluez.device import DeviceNode
    from firmware_sim.bluez.gatt import CharacteristicNode, DescriptorNode, ServiceNode

ADAPTER_INTERFACE = "org.bluez.Adapter1"
DEVICE_INTERFACE = "org.bluez.Device1"
SERVICE_INTERFACE = "org.bluez.GattService1"
CHARACTERISTIC_INTERFACE = "org.bluez.GattCharacteristic1"
DESCRIPTOR_INTERFACE = "org.bluez.GattDescriptor1"
AGENT_MANAGER_INTERFACE = "org.bluez.AgentManager1"

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
DBusServiceData = Annotated[dict[str, Variant], DBusSignature("a{sv}")]

_READ = PropertyAccess.READ


class AgentManagerInterface(ServiceInterface):
    """``org.bluez.AgentManager1`` at ``/org/bluez``."""

    def __init__(self, manager: "AgentManager") -> None:
        super().__init__(AGENT_MANAGER_INTERFACE)
        self._manager = manager

    @dbus_method()
    def RegisterAgent(self, agent: DBusObjectPath, capability: DBusStr) -> None:
        self._manager.register(agent, capability)

    @dbus_method()
    def UnregisterAgent(self, agent: DBusObjectPath) -> None:
        self._manager.unregister(agent)

    @dbus_method()
    def RequestDefaultAgent(self, agent: DBusObjectPath) -> None:
        self._manager.request_default(agent)


class AdapterInterface(ServiceInterface):
    """``org.bluez.Adapter1``."""

    def __init__(self, node: "AdapterNode") -> None:
        super().__init__(ADAPTER_INTERFACE)
        self._node = node

    @dbus_property(access=_READ)
    def Address(self) -> DBusStr:
        return self._node.address

    @dbus_property(access=_READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=_READ)
    def Name(self) -> DBusStr:
        return self._node.alias

    @dbus_property(access=_READ)
    def Alias(self) -> DBusStr:
        return self._node.alias

    @dbus_property(access=_READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property()
    def Powered(self) -> DBusBool:
        return self._node.powered

    @Powered.setter
    def _set_powered(self, value: DBusBool) -> None:
        self._node.set_powered(value)

    @dbus_property(access=_READ)
    def PowerState(self) -> DBusStr:
        return "on" if self._node.powered else "off"

    @dbus_property(access=_READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=_READ)
    def DiscoverableTimeout(self) -> DBusUInt32:
        return 180

    @dbus_property(access=_READ)
    def Pairable(self) -> DBusBool:
        return True

    @dbus_property(access=_READ)
    def PairableTimeout(self) -> DBusUInt32:
        return 0

    @dbus_property(access=_READ)
    def Discovering(self) -> DBusBool:
        return self._node.discovering

    @dbus_property(access=_READ)
    def UUIDs(self) -> DBusStrList:
        return []

    @dbus_property(access=_READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d0548"

    @dbus_property(access=_READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        self._node.set_discovery_filter(properties)

    @dbus_method()
    def StartDiscovery(self) -> None:
        self._node.start_discovery()

    @dbus_method()
    def StopDiscovery(self) -> None:
        self._node.stop_discovery()

    @dbus_method()
    async def RemoveDevice(self, device: DBusObjectPath) -> None:
        await self._node.remove_device(device)

    @dbus_method()
    def GetDiscoveryFilters(self) -> DBusStrList:
        return [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]


class DeviceInterface(ServiceInterface):
    """``org.bluez.Device1``."""

    def __init__(self, node: "DeviceNode") -> None:
        super().__init__(DEVICE_INTERFACE)
        self._node = node

    @dbus_property(access=_READ)
    def Address(self) -> DBusStr:
        return self._node.address

    @dbus_property(access=_READ)
    def AddressType(self) -> DBusStr:
        return self._node.address_type

    @dbus_property(access=_READ)
    def Name(self) -> DBusStr:
        return self._node.adv.name

    @dbus_property(access=_READ)
    def Alias(self) -> DBusStr:
        return self._node.adv.name or self._node.address.replace(":", "-")

    @dbus_property(access=_READ)
    def Adapter(self) -> DBusObjectPath:
        return self._node.adapter_path

    @dbus_property(access=_READ)
    def Connected(self) -> DBusBool:
        return self._node.connected

    @dbus_property(access=_READ)
    def ServicesResolved(self) -> DBusBool:
        return self._node.services_resolved

    @dbus_property(access=_READ)
    def Paired(self) -> DBusBool:
        return self._node.paired

    @dbus_property(access=_READ)
    def Bonded(self) -> DBusBool:
        return self._node.paired

    @dbus_property()
    def Trusted(self) -> DBusBool:
        return self._node.trusted

    @Trusted.setter
    def _set_trusted(self, value: DBusBool) -> None:
        self._node.set_trusted(value)

    @dbus_property(access=_READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(access=_READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=_READ)
    def UUIDs(self) -> DBusStrList:
        return self._node.uuids()

    @dbus_property(access=_READ)
    def RSSI(self) -> DBusInt16:
        return self._node.adv.rssi

    @dbus_property(access=_READ)
    def ManufacturerData(self) -> DBusManufacturerData:
        return {k: Variant("ay", bytes(v)) for k, v in self._node.adv.manufacturer_data.items()}

    @dbus_property(access=_READ)
    def ServiceData(self) -> DBusServiceData:
        return {k: Variant("ay", bytes(v)) for k, v in self._node.adv.service_data.items()}

    @dbus_method()
    async def Connect(self) -> None:
        await self._node.connect()

    @dbus_method()
    async def Disconnect(self) -> None:
        await self._node.disconnect()

    @dbus_method()
    async def Pair(self) -> None:
        await self._node.pair()

    @dbus_method()
    def CancelPairing(self) -> None:
        self._node.cancel_pairing()

    @dbus_method()
    def ConnectProfile(self, uuid: DBusStr) -> None:
        self._node.not_supported()

    @dbus_method()
    def DisconnectProfile(self, uuid: DBusStr) -> None:
        self._node.not_supported()


class GattServiceInterface(ServiceInterface):
    """``org.bluez.GattService1``."""

    def __init__(self, node: "ServiceNode") -> None:
        super().__init__(SERVICE_INTERFACE)
        self._node = node

    @dbus_property(access=_READ)
    def UUID(self) -> DBusStr:
        return self._node.spec.uuid

    @dbus_property(access=_READ)
    def Device(self) -> DBusObjectPath:
        return self._node.device_path

    @dbus_property(access=_READ)
    def Primary(self) -> DBusBool:
        return self._node.spec.primary

    @dbus_property(access=_READ)
    def Handle(self) -> DBusUInt16:
        return self._node.spec.handle

    @dbus_property(access=_READ)
    def Includes(self) -> DBusPathList:
        return []


class _GattAttributeInterface(ServiceInterface):
    """What ``GattCharacteristic1`` and ``GattDescriptor1`` have alike: a UUID and a value,
    read and written through the node."""

    _node: "CharacteristicNode | DescriptorNode"

    @dbus_property(access=_READ)
    def UUID(self) -> DBusStr:
        return self._node.spec.uuid

    @dbus_property(access=_READ)
    def Handle(self) -> DBusUInt16:
        # the attribute handle the object path is named after, as bluetoothctl prints it
        return self._node.spec.handle

    @dbus_property(access=_READ)
    def Value(self) -> DBusBytes:
        return self._node.value

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        return await self._node.read_value(options)

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        await self._node.write_value(bytes(value), options)


class GattCharacteristicInterface(_GattAttributeInterface):
    """``org.bluez.GattCharacteristic1`` of a characteristic without notify/indicate.

    ``AcquireNotify`` is answered by the server's message filter (it passes a file
    descriptor whose local copy must be closed once the reply is written).
    """

    _node: "CharacteristicNode"

    def __init__(self, node: "CharacteristicNode") -> None:
        super().__init__(CHARACTERISTIC_INTERFACE)
        self._node = node

    @dbus_property(access=_READ)
    def Service(self) -> DBusObjectPath:
        return self._node.service_path

    @dbus_property(access=_READ)
    def Flags(self) -> DBusStrList:
        return self._node.flags()

    @dbus_property(access=_READ)
    def MTU(self) -> DBusUInt16:
        return self._node.mtu()

    @dbus_method()
    async def StartNotify(self) -> None:
        await self._node.start_notify()

    @dbus_method()
    async def StopNotify(self) -> None:
        await self._node.stop_notify()


class IndicatingCharacteristicInterface(GattCharacteristicInterface):
    """A characteristic with indicate but not notify: bluetoothd adds ``Notifying`` (notify
    or indicate) but not ``NotifyAcquired`` (notify only), so bleak uses StartNotify."""

    @dbus_property(access=_READ)
    def Notifying(self) -> DBusBool:
        return self._node.notifying


class NotifyingCharacteristicInterface(IndicatingCharacteristicInterface):
    """A characteristic with notify: ``NotifyAcquired`` exists, and bleak picks AcquireNotify
    for it when asked to (``use_start_notify=False``)."""

    @dbus_property(access=_READ)
    def NotifyAcquired(self) -> DBusBool:
        return self._node.notify_acquired


class GattDescriptorInterface(_GattAttributeInterface):
    """``org.bluez.GattDescriptor1``."""

    _node: "DescriptorNode"

    def __init__(self, node: "DescriptorNode") -> None:
        super().__init__(DESCRIPTOR_INTERFACE)
        self._node = node

    @dbus_property(access=_READ)
    def Characteristic(self) -> DBusObjectPath:
        return self._node.characteristic_path


def option(options: dict[str, Variant], key: str, default: Any) -> Any:
    """The plain value of ``options[key]`` (a Variant) or ``default``."""
    found = options.get(key)
    return default if found is None else found.value
