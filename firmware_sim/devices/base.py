"""The common machinery of a simulated peripheral: GATT table, link and bond state, security,
notifications, fault plan. Profiles (heart rate, glucose) subclass :class:`SimDevice`."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge.clock import Clock
from firmware_sim import encoders as enc
from firmware_sim.devices import bonding
from firmware_sim.faults import FaultPlan, FaultState
from firmware_sim.model.contract import (
    Advertisement,
    CharacteristicSpec,
    DescriptorSpec,
    Peripheral,
    PeripheralError,
    PeripheralEvents,
    Security,
    ServiceSpec,
    SimErrorCode,
    uuid16,
)
from firmware_sim.model.pairing import PairingChallenge, PairingSpec

CCCD_UUID = uuid16(0x2902)
ABORT_BY_LOCAL = "le-connection-abort-by-local"

ReadFn = Callable[[], bytes]
WriteFn = Callable[[bytes, bool], Awaitable[None]]


@dataclass
class Char:
    """A characteristic as the device serves it."""

    uuid: str
    flags: frozenset[str]
    security: Security = Security.NONE
    on_read: ReadFn | None = None
    on_write: WriteFn | None = None
    handle: int = 0
    cccd_handle: int | None = None
    #: 0 off, 1 notify, 2 indicate (the CCCD value)
    cccd: int = 0

    @property
    def can_notify(self) -> bool:
        return bool(self.flags & {"notify", "indicate"})

    def spec(self) -> CharacteristicSpec:
        descs = (DescriptorSpec(CCCD_UUID, self.cccd_handle),) if self.cccd_handle else ()
        return CharacteristicSpec(self.uuid, self.handle, self.flags, self.security, descs)


@dataclass
class Service:
    uuid: str
    chars: list[Char] = field(default_factory=list)
    handle: int = 0


def build_table(services: Iterable[Service], first_handle: int = 0x0001) -> list[Service]:
    """Assign BlueZ-style handles: service, then per characteristic its declaration handle
    (used as the characteristic's handle), value handle, and CCCD if it notifies/indicates."""
    h = first_handle
    out = []
    for svc in services:
        svc.handle = h
        h += 1
        for ch in svc.chars:
            ch.handle = h
            h += 2  # declaration + value
            if ch.can_notify:
                ch.cccd_handle = h
                h += 1
        out.append(svc)
    return out


class SimDevice:
    """A simulated BLE peripheral implementing :class:`firmware_sim.model.contract.Peripheral`.

    Transports install an event sink with :meth:`set_events`; extra observers (the in-process
    scanner, tests) use :meth:`add_events`. Control methods (``drop_link``, ``inject_fault`` …)
    are what the control interface calls.
    """

    kind: ClassVar[str] = "generic"
    #: ATT MTU the device negotiates (transports report it; 23 is the BLE default)
    mtu: int = 23
    #: seconds between periodic ticks
    tick_seconds: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        name: str,
        address: str,
        address_type: str,
        clock: Clock,
        rng: random.Random,
        faults: FaultPlan | None = None,
        rssi: int = -60,
        manufacturer_id: int = 0xFFFF,
    ) -> None:
        self.address = address
        self.address_type = address_type
        self.name = name
        self.clock = clock
        self.rng = rng
        self._rssi_base = rssi
        self._rssi = rssi
        self._manufacturer_id = manufacturer_id
        self._connected = False
        self._paired = False
        #: what pairing the device demands (the fleet sets it from the scenario)
        self.pairing = PairingSpec()
        self._challenge: PairingChallenge | None = None
        self._visible = True
        self._sink: PeripheralEvents | None = None
        self._observers: list[PeripheralEvents] = []
        self.fault_state = FaultState()
        self.fault_state.install(faults or FaultPlan())
        self._link_notifications = 0
        self.connections = 0
        self._services = build_table(self._build_services())
        self._chars: dict[int, Char] = {}
        self._cccds: dict[int, Char] = {}
        for svc in self._services:
            for ch in svc.chars:
                self._chars[ch.handle] = ch
                if ch.cccd_handle:
                    self._cccds[ch.cccd_handle] = ch
        self._specs = tuple(
            ServiceSpec(s.uuid, s.handle, tuple(c.spec() for c in s.chars)) for s in self._services
        )

    # ------------------------------------------------------------------ subclass hooks

    def _build_services(self) -> list[Service]:
        raise NotImplementedError

    def _advertised_uuids(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _manufacturer_payload(self) -> bytes:
        return b""

    def _link_lost(self) -> None:
        """Called when the link goes away (local disconnect, drop, unpair)."""

    async def tick(self) -> None:
        """One period of the device's own behaviour (RSSI wander, measurements …)."""
        self._rssi = max(-100, min(-30, self._rssi_base + round(self.rng.gauss(0, 4))))
        self._advertisement_changed()

    # ------------------------------------------------------------------ Peripheral

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def paired(self) -> bool:
        return self._paired

    @property
    def visible(self) -> bool:
        return self._visible and not self.fault_state.plan.invisible

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force."""
        return self.fault_state.plan

    def advertisement(self) -> Advertisement:
        payload = self._manufacturer_payload()
        return Advertisement(
            name=self.name,
            service_uuids=self._advertised_uuids(),
            rssi=self._rssi,
            manufacturer_data={self._manufacturer_id: payload} if payload else {},
            tx_power=None,
        )

    def services(self) -> tuple[ServiceSpec, ...]:
        return self._specs

    def set_events(self, events: PeripheralEvents | None) -> None:
        self._sink = events

    def add_events(self, events: PeripheralEvents) -> Callable[[], None]:
        """Add an observer next to the transport's sink; returns a function removing it."""
        self._observers.append(events)

        def remove() -> None:
            if events in self._observers:
                self._observers.remove(events)

        return remove

    def _all_sinks(self) -> list[PeripheralEvents]:
        sinks = list(self._observers)
        if self._sink is not None:
            sinks.insert(0, self._sink)
        return sinks

    async def connect(self) -> None:
        await self._slow()
        if not self.visible:
            raise PeripheralError(SimErrorCode.UNKNOWN_OBJECT, "device is gone")
        if self._connected:
            return
        fs = self.fault_state
        if fs.connect_failures_left > 0:
            fs.connect_failures_left -= 1
            raise PeripheralError(SimErrorCode.FAILED, ABORT_BY_LOCAL)
        p = fs.plan.connect_failure_probability
        if p and self.rng.random() < p:
            raise PeripheralError(SimErrorCode.FAILED, ABORT_BY_LOCAL)
        self._connected = True
        self.connections += 1
        self._link_notifications = 0

    async def disconnect(self) -> None:
        await self._slow()
        if self._connected:
            self._teardown()

    def pairing_challenge(self) -> PairingChallenge:
        """Start a pairing attempt: the method, the code the device shows, and whether it will
        cancel (the ``pairing_refused = "canceled"`` fault)."""
        self._challenge = bonding.challenge(
            self.pairing, self.rng, self.fault_state.plan.pairing_refused
        )
        return self._challenge

    async def pair(self, *, passkey: int | None = None, confirmed: bool = False) -> None:
        await self._slow()
        if not self.visible:
            raise PeripheralError(SimErrorCode.UNKNOWN_OBJECT, "device is gone")
        if self._paired:
            raise PeripheralError(SimErrorCode.ALREADY_EXISTS, "Already Exists")
        if not self._connected:
            # BlueZ's Pair brings the link up itself
            await self.connect()
        shown, self._challenge = self._challenge, None
        bonding.check_refusal(self.fault_state.plan.pairing_refused)
        bonding.check_answer(self.pairing, shown, passkey, confirmed)
        self._paired = True

    @property
    def displayed_code(self) -> int | None:
        """The 6-digit code on the device's display during a pairing (passkey or numeric
        comparison), else None."""
        return self._challenge.code if self._challenge is not None else None

    def forget_bond(self) -> bool:
        """Lose the bond as a reset or a battery change does (the host keeps its side); the
        link drops. Returns whether there was a bond."""
        had = self._paired
        self._paired = False
        self.drop_link("bond-lost")
        return had

    async def unpair(self) -> None:
        await self._slow()
        if self._connected:
            self._teardown()
        self._paired = False

    async def read(self, handle: int) -> bytes:
        ch = await self._gatt_op(self._chars, handle)
        if "read" not in ch.flags or ch.on_read is None:
            raise PeripheralError(SimErrorCode.NOT_PERMITTED, "Read not permitted")
        if ch.security is Security.ENCRYPTED and not self._paired:
            raise PeripheralError(SimErrorCode.NOT_AUTHORIZED)
        return ch.on_read()

    async def write(self, handle: int, value: bytes, *, with_response: bool) -> None:
        ch = await self._gatt_op(self._chars, handle)
        allowed = "write" if with_response else "write-without-response"
        if allowed not in ch.flags or ch.on_write is None:
            raise PeripheralError(SimErrorCode.NOT_PERMITTED, "Write not permitted")
        if ch.security is Security.ENCRYPTED and not self._paired:
            raise PeripheralError(SimErrorCode.NOT_PERMITTED, "Not paired")
        await ch.on_write(bytes(value), with_response)

    async def start_notify(self, handle: int) -> None:
        ch = await self._gatt_op(self._chars, handle)
        if not ch.can_notify:
            raise PeripheralError(SimErrorCode.NOT_SUPPORTED, "Operation is not supported")
        if ch.security is Security.ENCRYPTED and not self._paired:
            raise PeripheralError(SimErrorCode.NOT_PERMITTED, "Not paired")
        ch.cccd = 1 if "notify" in ch.flags else 2

    async def stop_notify(self, handle: int) -> None:
        ch = await self._gatt_op(self._chars, handle)
        if not ch.can_notify:
            raise PeripheralError(SimErrorCode.NOT_SUPPORTED, "Operation is not supported")
        ch.cccd = 0

    async def read_descriptor(self, handle: int) -> bytes:
        ch = await self._gatt_op(self._cccds, handle)
        return enc.uint16(ch.cccd)

    async def write_descriptor(self, handle: int, value: bytes) -> None:
        ch = await self._gatt_op(self._cccds, handle)
        if len(value) != 2:
            raise PeripheralError(SimErrorCode.INVALID_ARGUMENTS, "Invalid Length")
        if ch.security is Security.ENCRYPTED and not self._paired:
            raise PeripheralError(SimErrorCode.NOT_PERMITTED, "Not paired")
        ch.cccd = int.from_bytes(value, "little") & 0x03

    # ------------------------------------------------------------------ control

    def drop_link(self, reason: str = "connection-timeout") -> bool:
        """Drop the link as the device would (out of range, reset). False if not connected."""
        if not self._connected:
            return False
        self._teardown()
        for sink in self._all_sinks():
            sink.disconnected(reason)
        return True

    def inject_fault(self, spec: dict[str, Any] | FaultPlan) -> FaultPlan:
        """Merge ``spec`` (fault keys, see :mod:`firmware_sim.faults`) into the current plan, or
        install a whole :class:`FaultPlan`. Returns the plan now in force."""
        plan = spec if isinstance(spec, FaultPlan) else self.faults.merged(spec)
        was_visible = self.visible
        self.fault_state.install(plan)
        self._fault_installed(plan)
        if self.visible != was_visible:
            if not self.visible:
                self.drop_link("device-gone")
            self._advertisement_changed()
        return plan

    def clear_faults(self) -> None:
        """Back to a well-behaved device."""
        self.inject_fault(FaultPlan())

    def _fault_installed(self, plan: FaultPlan) -> None:
        """Hook for faults that act once when installed (e.g. a sequence reset)."""

    def set_visible(self, visible: bool) -> None:
        """Advertise (True) or vanish from scans and drop any link (False)."""
        was = self.visible
        self._visible = visible
        if was and not self.visible:
            self.drop_link("device-gone")
        if was != self.visible:
            self._advertisement_changed()

    def notifying(self, uuid: str) -> bool:
        """Whether the client has notifications/indications on for ``uuid``."""
        return any(c.cccd for c in self._chars.values() if c.uuid == uuid)

    def char(self, uuid: str) -> Char:
        """The characteristic with ``uuid``."""
        for c in self._chars.values():
            if c.uuid == uuid:
                return c
        raise KeyError(uuid)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``list`` and the control interface)."""
        return {
            "name": self.name,
            "address": self.address,
            "address_type": self.address_type,
            "kind": self.kind,
            "connected": self._connected,
            "paired": self._paired,
            "pairing": self.pairing.method.value,
            **self._passkey_summary(),
            "visible": self.visible,
            "faults": self.faults.to_dict(),
        }

    # ------------------------------------------------------------------ internals

    def _passkey_summary(self) -> dict[str, str]:
        passkey = self.pairing.passkey
        return {} if passkey is None else {"passkey": f"{passkey:06d}"}

    async def _slow(self) -> None:
        delay = self.fault_state.plan.slow_response_seconds
        if delay > 0:
            await self.clock.sleep(delay)

    async def _gatt_op(self, table: dict[int, Char], handle: int) -> Char:
        """The checks before any ATT operation; returns the characteristic ``handle`` names
        in ``table`` (``_chars`` for value handles, ``_cccds`` for CCCD handles)."""
        await self._slow()
        if not self._connected:
            raise PeripheralError(SimErrorCode.FAILED, "Not connected")
        if self.fault_state.next_operation_in_progress():
            raise PeripheralError(SimErrorCode.IN_PROGRESS, "In Progress")
        ch = table.get(handle)
        if ch is None:
            raise PeripheralError(
                SimErrorCode.FAILED, "Operation failed with ATT error: 0x01", 0x01
            )
        return ch

    def _teardown(self) -> None:
        self._connected = False
        for ch in self._chars.values():
            ch.cccd = 0
        self._link_lost()

    def _advertisement_changed(self) -> None:
        for sink in self._all_sinks():
            sink.advertisement_changed()

    def _emit(self, ch: Char, value: bytes) -> bool:
        """Send a notification/indication of ``ch`` if the client enabled it. Applies the
        link-drop fault. Returns whether it was sent."""
        if not self._connected or not ch.cccd:
            return False
        for sink in self._all_sinks():
            sink.notify(ch.handle, value)
        self._link_notifications += 1
        if self.fault_state.should_drop(self._link_notifications):
            self.drop_link("fault-drop-after-notifications")
        return True


def _conforms(device: SimDevice) -> Peripheral:
    """Static check (mypy): a SimDevice is a Peripheral."""
    return device
