"""A device, ``/org/bluez/hci0/dev_XX_…``: connect, pair and remove as bluetoothd does them,
its GATT objects while connected, and forgetting devices only seen in a scan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from firmware_sim.bluez.agent import AgentSaidNo
from firmware_sim.bluez.calls import SENDER
from firmware_sim.bluez.errors import bluez_error, to_dbus_error
from firmware_sim.bluez.gatt import CharacteristicNode, ServiceNode
from firmware_sim.bluez.interfaces import DeviceInterface
from firmware_sim.bluez.names import device_path, norm_uuid
from firmware_sim.model.contract import Peripheral, PeripheralError
from firmware_sim.model.pairing import Association, PairingChallenge, association

if TYPE_CHECKING:
    from firmware_sim.bluez.adapter import AdapterNode
    from firmware_sim.bluez.bonds import DeviceBonds
    from firmware_sim.bluez.server import FakeBlueZ

log = logging.getLogger(__name__)

LE_ABORT = "le-connection-abort-by-local"
#: bluetoothd's Connect failure when the device no longer has the bond's key (HCI "PIN or Key
#: Missing" on encryption; src/error.h ERR_LE_CONN_KEY_MISSING)
KEY_MISSING = "le-connection-key-missing"


class DeviceNode:
    """State and behaviour of one ``org.bluez.Device1`` and its GATT objects.

    It is also the peripheral's :class:`~firmware_sim.model.contract.PeripheralEvents` sink.
    """

    def __init__(
        self,
        server: FakeBlueZ,
        adapter: AdapterNode,
        peripheral: Peripheral,
        bonds: DeviceBonds,
        *,
        paired: bool = False,
    ) -> None:
        self.server = server
        #: the device's side of its bonds, shared by its nodes on every adapter
        self.bonds = bonds
        self.adapter = adapter
        self.peripheral = peripheral
        self.address = peripheral.address.upper()
        self.address_type = peripheral.address_type
        self.adapter_path = adapter.path
        self.path = device_path(self.adapter_path, self.address)
        self.iface = DeviceInterface(self)
        self.adv = peripheral.advertisement()
        self.announced_at = 0.0
        self.connected = False
        self.services_resolved = False
        #: the hub's side of this adapter's bond with the device (Paired / Bonded)
        self.paired = paired
        self.trusted = False
        #: a device only seen in a scan; bluetoothd forgets these (see schedule_removal)
        self.temporary = not self.paired
        self.exported = False
        self._gatt_exported = False
        self._gatt_uuids: list[str] = []
        self.services: list[ServiceNode] = []
        self.characteristics: dict[int, CharacteristicNode] = {}
        self._connecting = False
        self._pairing: asyncio.Task[None] | None = None
        self._pair_cancelled = False
        self._removal: asyncio.TimerHandle | None = None
        self._build_gatt()

    def _build_gatt(self) -> None:
        for spec in self.peripheral.services():
            service = ServiceNode(self, spec)
            self.services.append(service)
            for char in service.characteristics:
                self.characteristics[char.spec.handle] = char

    # exported state ------------------------------------------------------------------------

    def uuids(self) -> list[str]:
        """Advertised service UUIDs, plus the GATT services once resolved (as BlueZ does)."""
        found = [norm_uuid(u) for u in self.adv.service_uuids]
        for uuid in self._gatt_uuids:
            if uuid not in found:
                found.append(uuid)
        return found

    def export(self) -> None:
        """Put the Device1 object on the bus (InterfacesAdded)."""
        if self.exported:
            return
        self.exported = True
        self.server.export_object(self.path, self.iface)

    def unexport(self) -> None:
        """Remove the device and its GATT objects from the bus."""
        self.cancel_removal()
        self._unexport_gatt()
        if self.exported:
            self.exported = False
            self.server.unexport_object(self.path)

    def _export_gatt(self) -> None:
        if self._gatt_exported:
            return
        self._gatt_exported = True
        for service in self.services:
            self.server.export_object(service.path, service.iface)
            for char in service.characteristics:
                self.server.export_object(char.path, char.iface)
                for desc in char.descriptors:
                    self.server.export_object(desc.path, desc.iface)

    def _unexport_gatt(self) -> None:
        if not self._gatt_exported:
            return
        self._gatt_exported = False
        for service in reversed(self.services):
            for char in service.characteristics:
                for desc in char.descriptors:
                    self.server.unexport_object(desc.path)
                self.server.unexport_object(char.path)
            self.server.unexport_object(service.path)

    def set_trusted(self, value: bool) -> None:
        """The ``Trusted`` property setter (bleak sets it before Pair)."""
        if value:
            self.temporary = False
        if value != self.trusted:
            self.trusted = value
            self.iface.emit_properties_changed({"Trusted": value})

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        names = {"connected": "Connected", "services_resolved": "ServicesResolved"}
        self.iface.emit_properties_changed({names[k]: v for k, v in changes.items()})

    # temporary devices ----------------------------------------------------------------------

    def schedule_removal(self, delay: float) -> None:
        """Forget this temporary device after ``delay`` seconds."""
        if self.connected or not self.temporary:
            return
        self.cancel_removal()
        loop = asyncio.get_running_loop()
        self._removal = loop.call_later(delay, self._expire)

    def cancel_removal(self) -> None:
        """Keep the device after all."""
        if self._removal is not None:
            self._removal.cancel()
            self._removal = None

    def _expire(self) -> None:
        self._removal = None
        if self.temporary and not (self.connected or self.adapter.discovering):
            self.unexport()

    # Device1 methods ---------------------------------------------------------------------------

    def not_supported(self) -> None:
        """For methods the fake does not implement."""
        raise bluez_error("NotSupported", "Operation is not supported")

    async def connect(self) -> None:
        """Device1.Connect: link up, GATT objects, then ServicesResolved."""
        if self.connected:
            return
        if self._connecting:
            # A second Connect while one is under way, as bluetoothd answers it.
            raise bluez_error("InProgress", "In Progress")
        if not self.adapter.powered:
            raise bluez_error("NotReady", "Resource Not Ready")
        if self.peripheral.connected:
            # connected through another adapter: it no longer advertises, the attempt fails
            raise bluez_error("Failed", LE_ABORT)
        self.cancel_removal()
        self.temporary = False  # as bluetoothd's Connect does
        self._connecting = True
        try:
            await self.peripheral.connect()
        except PeripheralError as err:
            if LE_ABORT in err.message:
                # bluetoothd reports the link that came up and went down again; bleak waits
                # for Connected to drop before retrying.
                self._set(connected=True)
                self._set(connected=False)
            raise to_dbus_error(err) from err
        finally:
            self._connecting = False
        if self.paired and not self.bonds.holds(self.adapter.address):
            # This adapter holds a bond the device lost (reset, battery change): the link
            # comes up, the encryption with the old key fails and the link goes. Only a new
            # pairing (after RemoveDevice) fixes it; retrying does not.
            with contextlib.suppress(PeripheralError):
                await self.peripheral.disconnect()
            self._set(connected=True)
            self._set(connected=False)
            raise bluez_error("Failed", KEY_MISSING)
        self._link_up()

    def _link_up(self) -> None:
        self._set(connected=True)
        self._export_gatt()
        previous = self.uuids()
        self._gatt_uuids = [norm_uuid(s.spec.uuid) for s in self.services if s.spec.primary]
        if self.uuids() != previous:
            self.iface.emit_properties_changed({"UUIDs": self.uuids()})
        self._set(services_resolved=True)

    def drop_link(self, *, hardware: bool = False) -> None:
        """The link is gone: notify sessions end, GATT objects go (unless cached).
        ``hardware``: our side went (adapter unplugged or powered off), so the peripheral
        loses the link too."""
        if not self.connected:
            return
        if hardware and self.peripheral.connected:
            self.server.spawn(self._peripheral_disconnect())
        for char in self.characteristics.values():
            char.link_down()
        self._set(services_resolved=False)
        if not self.server.options.keep_gatt_after_disconnect:
            self._unexport_gatt()
        self._set(connected=False)
        timeout = self.server.options.temporary_device_timeout
        if timeout is not None and not self.adapter.discovering:
            self.schedule_removal(timeout)

    async def _peripheral_disconnect(self) -> None:
        with contextlib.suppress(PeripheralError):
            await self.peripheral.disconnect()

    async def disconnect(self) -> None:
        """Device1.Disconnect (also cancels a pairing under way)."""
        if self._pairing is not None:
            self._pair_cancelled = True
            self._pairing.cancel()
        if not self.connected:
            return
        try:
            await self.peripheral.disconnect()
        except PeripheralError as err:
            raise to_dbus_error(err) from err
        finally:
            self.drop_link()

    async def pair(self) -> None:
        """Device1.Pair: connects first if needed, then pairs as the device demands, asking
        the caller's agent (else the default agent) as bluetoothd does. A failed pairing
        leaves no bond behind."""
        if self.paired:
            raise bluez_error("AlreadyExists", "Already Exists")
        if self._pairing is not None:
            raise bluez_error("InProgress", "In Progress")
        caller = SENDER.get()
        if not self.connected:
            await self.connect()
        self._pair_cancelled = False
        self._pairing = asyncio.get_running_loop().create_task(self._pair_through_agent(caller))
        try:
            await self._pairing
        except asyncio.CancelledError:
            if not self._pair_cancelled:
                raise
            raise bluez_error("AuthenticationCanceled", "Authentication Canceled") from None
        except PeripheralError as err:
            raise to_dbus_error(err) from err
        finally:
            self._pairing = None
        self.paired = True
        self.temporary = False
        self.cancel_removal()
        # bluetoothd leaves Trusted alone: trusting is the client's business (bleak sets it)
        self.iface.emit_properties_changed({"Paired": True, "Bonded": True})

    async def _pair_through_agent(self, caller: str) -> None:
        challenge = self.peripheral.pairing_challenge()
        agents = self.server.agents
        agent = agents.for_caller(caller)
        how = association(challenge.method, agent.capability if agent is not None else None)
        if agent is None or how in (Association.NONE, Association.IMPOSSIBLE):
            # Just Works asks nobody; a device needing more than our IO allows fails itself
            await self._bond(challenge)
            return
        signature = "o" if how is Association.ENTER_PASSKEY else "ou"
        body: list[Any] = [self.path]
        if how is Association.CONFIRM:
            body.append(challenge.code or 0)
        if challenge.device_cancels:
            # the device gives up while the user is being asked: the prompt is withdrawn
            agents.prompt_and_withdraw(agent, how.value, signature, body)
            await self._bond(challenge)
            return
        try:
            answer = await agents.ask(
                agent, how.value, signature, body, self.server.options.agent_timeout
            )
        except TimeoutError:
            raise bluez_error("AuthenticationTimeout", "Authentication Timeout") from None
        except AgentSaidNo as no:
            if no.canceled:
                raise bluez_error("AuthenticationCanceled", "Authentication Canceled") from None
            raise bluez_error("AuthenticationFailed", "Authentication Failed") from None
        if how is Association.ENTER_PASSKEY:
            await self._bond(challenge, passkey=answer if isinstance(answer, int) else None)
        else:
            await self._bond(challenge, confirmed=True)

    async def _bond(
        self, challenge: PairingChallenge, *, passkey: int | None = None, confirmed: bool = False
    ) -> None:
        await self.bonds.pair(self.adapter.address, challenge, passkey=passkey, confirmed=confirmed)

    def cancel_pairing(self) -> None:
        """Device1.CancelPairing."""
        if self._pairing is None:
            raise bluez_error("DoesNotExist", "Does Not Exist")
        self._pair_cancelled = True
        self._pairing.cancel()

    async def remove(self) -> None:
        """Adapter1.RemoveDevice: drop the link, forget this adapter's bond (the device's
        bonds with other adapters stay), remove the objects."""
        if self.connected:
            with contextlib.suppress(PeripheralError):
                await self.peripheral.disconnect()
            self.drop_link()
        with contextlib.suppress(PeripheralError):
            await self.bonds.remove(self.adapter.address)
        self.paired = False
        self.trusted = False
        self.temporary = True
        self.unexport()

    # PeripheralEvents -------------------------------------------------------------------------

    def notify(self, handle: int, value: bytes) -> None:
        """PeripheralEvents: a notification or indication."""
        char = self.characteristics.get(handle)
        if char is not None and self.connected:
            char.deliver(value)

    def disconnected(self, reason: str) -> None:
        """PeripheralEvents: the device dropped the link."""
        log.debug("sim.link_dropped reason=%s", reason)
        self.drop_link()

    def advertisement_changed(self) -> None:
        """PeripheralEvents: re-announce while discovering."""
        if self.server.running and self.adapter.discovering:
            self.adapter.announce(node=self)

    # housekeeping -----------------------------------------------------------------------------

    def client_left(self, name: str) -> None:
        """A client left the bus: its notify sessions end."""
        for char in self.characteristics.values():
            char.client_left(name)

    def shutdown(self) -> None:
        """Stop timers and pairing, end notify sessions."""
        self.cancel_removal()
        if self._pairing is not None:
            self._pairing.cancel()
        for char in self.characteristics.values():
            char.link_down()
