"""The device's side of its bonds, one per adapter, as with real BlueZ.

A bond is a property of (adapter, device): the keys exchanged when the device paired with
that adapter's address. The hub's side is each adapter's ``Device1.Paired``
(:class:`~firmware_sim.bluez.device.DeviceNode`); the device's side is kept here, per
peripheral: the adapters it still holds keys for. A simulated device knows only "bonded or
not" (``Peripheral.paired``), so this follows it: when the device loses its keys
(``forget-bond``: reset, battery change) every one of its bonds goes at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from firmware_sim.devices import bonding
from firmware_sim.devices.base import SimDevice
from firmware_sim.model.contract import Peripheral, PeripheralError, SimErrorCode
from firmware_sim.model.pairing import PairingChallenge


class DeviceBonds:
    """The adapters one peripheral holds a bond with, by adapter address (what the device
    knows of the host)."""

    def __init__(self, peripheral: Peripheral, adapters: Iterable[str] = ()) -> None:
        """``adapters``: the addresses a device already bonded when served is bonded with."""
        self._peripheral = peripheral
        self._with: set[str] = set(adapters) if peripheral.paired else set()

    def _sync(self) -> None:
        # the device forgot its keys (it says so only through ``paired``)
        if not self._peripheral.paired:
            self._with.clear()

    def holds(self, adapter: str) -> bool:
        """Whether the device still holds the bond made through ``adapter``."""
        self._sync()
        return adapter in self._with

    @property
    def adapters(self) -> frozenset[str]:
        """The adapters the device holds a bond with."""
        self._sync()
        return frozenset(self._with)

    async def pair(
        self,
        adapter: str,
        challenge: PairingChallenge,
        *,
        passkey: int | None = None,
        confirmed: bool = False,
    ) -> None:
        """The device's side of pairing through ``adapter``: it checks the host's answer to
        ``challenge`` and keeps the bond. Raises :class:`PeripheralError` as the device does."""
        self._sync()
        if not self._with:
            await self._peripheral.pair(passkey=passkey, confirmed=confirmed)
        else:
            # A second bond (another adapter): a SimDevice models one bond only, so its
            # pairing would say AlreadyExists; apply the same checks it makes.
            device = self._peripheral
            if not isinstance(device, SimDevice):
                raise PeripheralError(SimErrorCode.ALREADY_EXISTS, "Already Exists")
            if not device.connected:
                await device.connect()
            bonding.check_refusal(device.faults.pairing_refused)
            bonding.check_answer(device.pairing, challenge, passkey, confirmed)
        self._with.add(adapter)

    async def remove(self, adapter: str) -> None:
        """``RemoveDevice`` on ``adapter``: that bond goes; the device is unpaired only when it
        was its last one (its other adapters' bonds stay)."""
        self._sync()
        self._with.discard(adapter)
        if not self._with and self._peripheral.paired:
            await self._peripheral.unpair()
