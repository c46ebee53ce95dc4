"""``edge pair`` / ``edge unpair``: bond with a device, check it, bind it to a patient.

The BLE part (:func:`pair_device`, :func:`unpair_device`) is separate from the vault part (the
CLI) so each can be tested alone. While bonding, :func:`pair_device` can hold a pairing agent
(:func:`answering`: the given passkey, ``--confirm``, or the person at the terminal through
:class:`TerminalPrompter`); a bond that fails for a reason the operator can act on (wrong
passkey, cancelled by the device, timed out, no passkey to give) is a :class:`PairingFailed`,
and BlueZ is left without the half-made device.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TextIO

from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError

from edge.ble.agent import Prompter, pairing_agent
from edge.ble.agent_policy import PASSKEY_MAX, AgentLog, Method, Outcome, PairingPolicy, Why
from edge.ble.errors import (
    BLE_EXCEPTIONS,
    ble_error,
    is_auth_error,
    is_bond_lost,
    stack_error,
)
from edge.ble.ports import BleClient, ClientFactory, ScannerFactory
from edge.ble.profiles import (
    DEVICE_INFORMATION,
    KIND_SERVICES,
    KINDS,
    kind_from_services,
    normalize_address,
)
from edge.ble.scanner import scan_for
from edge.clock import Clock
from edge.errors import BleError, PairingRefused
from edge.log import get_logger

log = get_logger("edge.ble.pairing")

#: registers a pairing agent for the device with this address, for the block; yields its log
PairingAgentFactory = Callable[[str], AbstractAsyncContextManager[AgentLog]]


class PairingFailed(PairingRefused):
    """Bonding did not complete for a reason the operator can act on (exit 2). ``reason`` is
    a stable word (``wrong_passkey``, ``cancelled``, ``timeout`` …) for the audit; the message
    is one line naming no device, passkey or patient."""

    exit_code = 2

    def __init__(self, reason: str, what: str, fix: str) -> None:
        super().__init__(f"pairing failed: {what} — nothing was bound; {fix}")
        self.reason = reason


AGAIN = "run `edge pair` again"
#: reason -> (what happened, what to do), as the one line the operator reads
FAILURES: dict[str, tuple[str, str]] = {
    "wrong_passkey": ("wrong passkey",
                      f"check the 6-digit code the device shows (or its label) and {AGAIN}"),
    "cancelled": ("cancelled by the device",
                  f"wake the device, put it in pairing mode and {AGAIN}"),
    "aborted": ("cancelled at the prompt", AGAIN),
    "timeout": ("timed out", f"answer the device's request within its time and {AGAIN}"),
    "passkey_needed": ("the device asks for a passkey and there is no terminal to ask on",
                       "give it with --passkey NNNNNN"),
    "confirm_needed": ("the device asks to confirm a code and there is no terminal to ask on",
                       "check the code it shows and add --confirm"),
    "not_confirmed": ("the code was not confirmed", AGAIN),
}


def failed(reason: str) -> PairingFailed:
    what, fix = FAILURES[reason]
    return PairingFailed(reason, what, fix)


def failure_reason(error_name: str, agent_log: AgentLog | None, address: str) -> str | None:
    """Why ``Device1.Pair`` ended with ``error_name``, from what the agent was asked about
    ``address`` (pure). None: not one the operator can act on (the device refused)."""
    name = error_name.rsplit(".", 1)[-1]
    last = agent_log.last_for(address) if agent_log is not None else None
    if name == "AuthenticationTimeout":
        return "timeout"
    if name == "AuthenticationCanceled":
        return "aborted" if last is not None and last.outcome is Outcome.ABORTED else "cancelled"
    if name not in ("AuthenticationFailed", "AuthenticationRejected") or last is None:
        return None
    if last.outcome is Outcome.REJECTED:
        return {Why.NO_PASSKEY: "passkey_needed", Why.NO_CONFIRM: "confirm_needed"}.get(
            last.why or Why.UNSUPPORTED)
    if last.outcome is Outcome.DECLINED:
        return "not_confirmed"
    if last.outcome is Outcome.ANSWERED and last.request.method is Method.REQUEST_PASSKEY:
        return "wrong_passkey"
    return None


def parse_passkey(text: str) -> int | None:
    """A passkey as typed (up to 6 digits, 000000-999999), or None."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        return None
    value = int(text)
    return value if value <= PASSKEY_MAX else None


def answering(
    *, passkey: int | None = None, confirm: bool = False, prompter: Prompter | None = None
) -> PairingAgentFactory:
    """The agent ``edge pair`` holds while bonding: answers ``RequestPasskey`` with
    ``passkey`` (else asks ``prompter``), accepts a numeric comparison with ``confirm`` (else
    asks), and only for the device being paired."""

    def factory(address: str) -> AbstractAsyncContextManager[AgentLog]:
        policy = PairingPolicy(normalize_address(address), passkey=passkey, confirm=confirm,
                               can_prompt=prompter is not None)
        return pairing_agent(policy, prompter=prompter)

    return factory


class TerminalPrompter:
    """Asks the person at a terminal: prompts on ``out``, reads a line from ``fd`` without
    blocking the event loop (so BlueZ's ``Cancel`` withdraws the question at once)."""

    def __init__(self, fd: int, out: TextIO, *, tries: int = 3) -> None:
        self._fd = fd
        self._out = out
        self._tries = tries
        self._buf = bytearray()

    async def passkey(self) -> int | None:
        for _ in range(self._tries):
            line = await self._ask("Enter the 6-digit passkey the device shows: ")
            if line is None:
                return None
            value = parse_passkey(line)
            if value is not None:
                return value
            self._say("a passkey is 6 digits, 000000 to 999999")
        return None

    async def confirm(self, code: str) -> bool | None:
        line = await self._ask(f"Does the device show {code}? [y/N] ")
        return None if line is None else line.strip().lower() in ("y", "yes")

    def show(self, code: str) -> None:
        self._say(f"Type {code} on the device")

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    async def _ask(self, prompt: str) -> str | None:
        self._out.write(prompt)
        self._out.flush()
        try:
            return await self._read_line()
        except asyncio.CancelledError:
            self._say("\n(the request was withdrawn)")
            raise

    async def _read_line(self) -> str | None:
        """The next line (without its newline); None at the end of input."""
        while b"\n" not in self._buf:
            chunk = await self._read_chunk()
            if not chunk:
                if not self._buf:
                    return None
                self._buf.extend(b"\n")
            self._buf.extend(chunk)
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        return line.decode("utf-8", "replace")

    async def _read_chunk(self) -> bytes:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(self._fd)
        try:
            return os.read(self._fd, 1024)
        except OSError:
            return b""


@dataclass(frozen=True)
class PairedDevice:
    """What pairing learned about a device."""

    #: identity address (after bonding a resolvable private address resolves to it)
    address: str
    kind: str
    device_info: dict[str, str] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()


def service_uuids(client: BleClient) -> tuple[str, ...]:
    """The resolved primary services' UUIDs (lower case)."""
    try:
        return tuple(str(s.uuid).lower() for s in client.services)
    except BLE_EXCEPTIONS:
        return ()


async def read_device_information(client: BleClient) -> dict[str, str]:
    """Manufacturer, model, serial and firmware strings that the device offers."""
    info: dict[str, str] = {}
    for name, uuid in DEVICE_INFORMATION.items():
        try:
            if client.services.get_characteristic(uuid) is None:
                continue
            raw = await client.read_gatt_char(uuid)
        except BLE_EXCEPTIONS:
            continue
        info[name] = bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return info


async def _find(scanner_factory: ScannerFactory | None, clock: Clock, address: str,
                seconds: float) -> BLEDevice | str:
    """The scanner's ``BLEDevice`` for ``address``, or the address itself when not seen."""
    if scanner_factory is None:
        return address
    found = await scan_for(scanner_factory, clock, address, seconds)
    if found is None:
        raise BleError("device not found nearby; is it advertising? (try `edge scan`)")
    return found


async def pair_device(
    client_factory: ClientFactory,
    address: str,
    *,
    kind: str | None = None,
    clock: Clock,
    scanner_factory: ScannerFactory | None = None,
    connect_timeout_s: float = 20.0,
    agent: PairingAgentFactory | None = None,
) -> PairedDevice:
    """Connect, bond (holding ``agent`` while bonding), read Device Information and check the
    expected service.

    Raises :class:`PairingFailed` when bonding failed for a reason the operator can act on,
    :class:`PairingRefused` when the device refuses to bond or lacks the service, and
    :class:`BleError` when it cannot be reached. A failed pairing leaves no device in BlueZ.
    """
    address = normalize_address(address)
    if kind is not None and kind not in KINDS:
        raise PairingRefused(f"unknown device kind {kind!r}; use one of {', '.join(KINDS)}")
    target = await _find(scanner_factory, clock, address, connect_timeout_s)
    client = client_factory(target, timeout=connect_timeout_s)
    try:
        await client.connect()
    except BLE_EXCEPTIONS as exc:
        if not is_bond_lost(exc):
            raise stack_error("connect", exc) from exc
        # The device forgot its bond (battery change, factory reset) while BlueZ kept its
        # half: BlueZ refuses every connect until the stale bond is removed. Remove it, find
        # the device again and pair afresh: this is what "edge pair ... again" promises.
        log.info("ble.pair_stale_bond_removed", address=address)
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await client.unpair()
        target = await _find(scanner_factory, clock, address, connect_timeout_s)
        client = client_factory(target, timeout=connect_timeout_s)
        try:
            await client.connect()
        except BLE_EXCEPTIONS as exc2:
            raise stack_error("connect", exc2) from exc2
    try:
        seen: AgentLog | None = None
        try:
            if agent is None:
                await client.pair()
            else:
                async with agent(address) as seen:
                    await client.pair()
        except BLE_EXCEPTIONS as exc:
            name = exc.dbus_error if isinstance(exc, BleakDBusError) else ""
            reason = failure_reason(name, seen, address)
            if reason is not None:
                log.info("ble.pairing_failed", address=address, reason=reason)
                raise failed(reason) from exc
            if is_auth_error(exc):
                raise PairingRefused("the device refused to bond") from exc
            raise PairingRefused(f"bonding failed ({ble_error('pair', exc).reason})") from exc
        uuids = service_uuids(client)
        found_kind = kind_from_services(uuids)
        if kind is None:
            if found_kind == "other":
                raise PairingRefused(
                    "the device offers neither the Heart Rate nor the Glucose service"
                )
            kind = found_kind
        elif KIND_SERVICES[kind] not in uuids:
            label = "Heart Rate" if kind == "heart_rate" else "Glucose"
            raise PairingRefused(f"the device does not offer the {label} service")
        info = await read_device_information(client)
        try:
            identity = normalize_address(client.address)
        except ValueError:
            identity = address
        log.info("ble.paired", address=identity, kind=kind)
        return PairedDevice(identity, kind, info, uuids)
    except PairingRefused:
        # Leave no half-bonded device behind in BlueZ.
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await client.unpair()
        raise
    finally:
        with contextlib.suppress(*BLE_EXCEPTIONS):
            await client.disconnect()


async def unpair_device(
    client_factory: ClientFactory, address: str, *, connect_timeout_s: float = 20.0
) -> bool:
    """Remove the bond in BlueZ (RemoveDevice). False when BlueZ did not know the device."""
    client = client_factory(normalize_address(address), timeout=connect_timeout_s)
    try:
        await client.unpair()
    except BLE_EXCEPTIONS as exc:
        log.info("ble.unpair_skipped", address=address, reason=ble_error("unpair", exc).reason)
        return False
    log.info("ble.unpaired", address=address)
    return True
