"""``edge scan``, ``edge pair``, ``edge unpair``, ``edge devices``.

These print addresses and pseudonyms on stdout for the operator who asked; nothing of that
kind goes to the logs at INFO or above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from edge.ble.pairing import (
    PairedDevice,
    PairingAgentFactory,
    PairingFailed,
    TerminalPrompter,
    answering,
    pair_device,
    parse_passkey,
    unpair_device,
)
from edge.ble.ports import bleak_client_factory, bleak_scanner_factory
from edge.ble.profiles import KINDS, normalize_address
from edge.ble.scanner import scan_nearby
from edge.cli.common import admin_actor, config_from_args, print_json
from edge.clock import SystemClock
from edge.config import BleConfig, GatewayConfig, load_config, resolve_config_path
from edge.errors import ConfigError, EdgeError, PairingRefused, UsageError
from edge.log import configure_logging
from edge.readings import check_pseudonym

if TYPE_CHECKING:
    from edge.vault import Binding, Vault


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("scan", parents=[common], help="list nearby BLE devices")
    p.add_argument("--seconds", type=float, default=5.0, metavar="N",
                   help="how long to scan (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.set_defaults(func=_scan)

    p = sub.add_parser("pair", parents=[common],
                       help="bond with a device and bind it to a patient")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--patient", required=True, metavar="PSEUDONYM",
                   help="the patient's pseudonymous id (never a name)")
    p.add_argument("--kind", choices=KINDS, help="expected device kind (default: inferred)")
    p.add_argument("--passkey", metavar="NNNNNN",
                   help="the 6-digit passkey the device shows or has printed on it "
                        "(default: asked on the terminal if the device wants one)")
    p.add_argument("--confirm", action="store_true",
                   help="accept the code a numeric-comparison device shows, without asking")
    p.add_argument("--adapter", metavar="hciN",
                   help="bond through this adapter, one of [ble] adapters (default: the "
                        "first of them); bonds are per adapter and the daemon connects the "
                        "device through the adapter that holds its bond")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_pair)

    p = sub.add_parser("unpair", parents=[common],
                       help="remove a device's binding and its bond on every configured "
                            "adapter in BlueZ")
    p.add_argument("address", metavar="ADDRESS")
    p.set_defaults(func=_unpair)

    p = sub.add_parser("devices", parents=[common], help="bound devices, state and last seen")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.set_defaults(func=_devices)


def _quiet_logs() -> None:
    """stdout is for the operator's answer (JSON included); warnings go to stderr."""
    configure_logging("warning", "console", stream=sys.stderr)


def _address(raw: str) -> str:
    try:
        return normalize_address(raw)
    except ValueError as exc:
        raise ConfigError(str(exc), [f"ADDRESS: {exc} — fix: copy it from `edge scan`"]) from exc


def _ble_config(args: argparse.Namespace) -> BleConfig:
    """``[ble]`` of the config; defaults when no config was named and none is installed (so
    ``edge scan`` works on a fresh hub). Only the schema is checked: scanning needs no keys."""
    path = resolve_config_path(args.config)
    if args.config is None and not path.exists():
        return BleConfig()
    return load_config(path).ble


@contextlib.asynccontextmanager
async def _vault(cfg: GatewayConfig) -> AsyncIterator[Vault]:
    from edge.vault.rotation import open_vault

    vault = await open_vault(cfg.vault, actor=admin_actor())
    try:
        yield vault
    finally:
        await vault.close()


def _tell_daemon(cfg: GatewayConfig) -> bool:
    """Ask a running daemon to re-read the bindings; False when it is not running."""
    from edge.daemon.control import ControlClient

    try:
        ControlClient(cfg.daemon.control_socket).request("devices.refresh")
    except EdgeError:
        return False
    return True


def _scan(args: argparse.Namespace) -> int:
    _quiet_logs()
    ble = _ble_config(args)
    if args.seconds <= 0:
        raise ConfigError("--seconds must be positive", ["--seconds: must be > 0"])
    found = asyncio.run(
        scan_nearby(bleak_scanner_factory(ble.adapter), SystemClock(), args.seconds)
    )
    if args.json:
        print_json([n.as_dict() for n in found])
        return 0
    if not found:
        print("no devices found")
        return 0
    print(f"{'ADDRESS':<17}  {'KIND':<10}  {'RSSI':>4}  NAME")
    for n in found:
        print(f"{n.address:<17}  {n.kind:<10}  {n.rssi:>4}  {n.name or ''}")
    return 0


def _pair(args: argparse.Namespace) -> int:
    _quiet_logs()
    address = _address(args.address)
    check_pseudonym(args.patient)
    agent = _pairing_agent(args)
    cfg = config_from_args(args)
    adapter = pairing_adapter(cfg.ble, args.adapter)
    paired = asyncio.run(
        _pair_and_bind(cfg, address, args.patient, args.kind, agent, adapter=adapter))
    running = _tell_daemon(cfg)
    result = {
        "address": paired.address,
        "kind": paired.kind,
        "patient": args.patient,
        "adapter": adapter,
        "bonded": True,
        "device_information": paired.device_info,
        "daemon_notified": running,
    }
    if args.json:
        print_json(result)
    else:
        info = ", ".join(f"{k} {v}" for k, v in paired.device_info.items()) or "no device info"
        print(f"paired {paired.kind} {paired.address} to {args.patient} via {adapter} "
              f"({info})")
    return 0


def pairing_adapter(ble: BleConfig, requested: str | None) -> str:
    """The adapter ``edge pair`` bonds through: ``--adapter`` when it is one of ``[ble]
    adapters`` (exit 2 naming them otherwise), else the first configured one."""
    if requested is None:
        return ble.adapter
    if requested not in ble.adapters:
        raise UsageError(f"--adapter: {requested!r} is not one of the configured [ble] adapters "
                         f"({', '.join(ble.adapters)})")
    return requested


def _pairing_agent(args: argparse.Namespace) -> PairingAgentFactory:
    """The agent held while bonding: ``--passkey`` / ``--confirm``, else the terminal's
    answers (none without a terminal: the error then names ``--passkey``)."""
    passkey = None
    if args.passkey is not None:
        passkey = parse_passkey(args.passkey)
        if passkey is None:  # the value itself is never repeated back
            raise UsageError("--passkey: expected 6 digits, 000000 to 999999")
    try:
        tty = sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        tty = False
    prompter = TerminalPrompter(sys.stdin.fileno(), sys.stderr) if tty else None
    return answering(passkey=passkey, confirm=args.confirm, prompter=prompter)


async def _pair_and_bind(
    cfg: GatewayConfig, address: str, patient: str, kind: str | None,
    agent: PairingAgentFactory | None = None, *, adapter: str | None = None,
) -> PairedDevice:
    """Open the vault first (a wrong key fails before anything is bonded), check the patient's
    consent (without it every reading would be refused), bond through ``adapter`` (default:
    the first configured), bind."""
    ble = cfg.ble
    adapter = adapter or ble.adapter
    async with _vault(cfg) as vault:
        if not any(c.patient == patient and c.active for c in await vault.consents()):
            raise UsageError(NO_CONSENT)
        try:
            paired = await pair_device(
                bleak_client_factory(adapter),
                address,
                kind=kind,
                clock=SystemClock(),
                scanner_factory=bleak_scanner_factory(adapter),
                connect_timeout_s=ble.connect_timeout_s,
                agent=agent,
            )
        except PairingFailed as exc:  # wrong passkey, cancelled, timed out: no PHI, a hash
            await vault.audit(admin_actor(), "device.pairing_failed",
                              f"{vault.device_hash(address)} {exc.reason}")
            raise
        except PairingRefused:
            await vault.audit(admin_actor(), "device.pairing_refused", vault.device_hash(address))
            raise
        # bind_device audits ``device.bound`` in the same transaction
        await vault.bind_device(
            paired.address, paired.kind, patient, bonded=True, actor=admin_actor()
        )
    return paired


#: pairing a patient without consent (nothing is bonded or bound; no pseudonym in it)
NO_CONSENT = ("this patient has no consent, so every reading the device sent would be refused "
              "— fix: `edge consent grant PSEUDONYM` first, then pair again")


def _unpair(args: argparse.Namespace) -> int:
    _quiet_logs()
    address = _address(args.address)
    cfg = config_from_args(args)
    removed = asyncio.run(_unbind(cfg, address))
    # the daemon drops its supervisor (and link) before BlueZ forgets the device
    _tell_daemon(cfg)
    in_bluez = asyncio.run(_unpair_everywhere(cfg.ble, address))
    if not removed:
        print(f"{address} was not bound" + ("; removed from BlueZ" if in_bluez else ""))
    else:
        print(f"unpaired {address}" + ("" if in_bluez else " (BlueZ did not know it)"))
    return 0


async def _unpair_everywhere(ble: BleConfig, address: str) -> bool:
    """Remove the bond on every configured adapter (bonds are per adapter): an unbound device
    keeps no keys on the hub, wherever it was paired. True if any adapter knew it."""
    found = False
    for adapter in ble.adapters:
        found |= await unpair_device(bleak_client_factory(adapter), address,
                                     connect_timeout_s=ble.connect_timeout_s)
    return found


async def _unbind(cfg: GatewayConfig, address: str) -> bool:
    async with _vault(cfg) as vault:
        # unbind_device audits ``device.unbound`` (and drops the meter's cursor)
        return bool(await vault.unbind_device(address, actor=admin_actor()))


def _live_states(cfg: GatewayConfig) -> dict[str, Mapping[str, object]]:
    from edge.daemon.control import ControlClient

    try:
        status = ControlClient(cfg.daemon.control_socket, timeout_s=5.0).request("status")
    except EdgeError:
        return {}
    devices = status.get("devices") if isinstance(status, dict) else None
    states: dict[str, Mapping[str, object]] = {}
    if isinstance(devices, dict):
        devices = list(devices.values())
    for d in devices or []:
        address = d.get("address") if isinstance(d, dict) else None
        if isinstance(address, str):
            with contextlib.suppress(ValueError):
                states[normalize_address(address)] = d
    return states


async def _bindings(cfg: GatewayConfig) -> list[Binding]:
    async with _vault(cfg) as vault:
        return list(await vault.bindings())


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _devices(args: argparse.Namespace) -> int:
    _quiet_logs()
    cfg = config_from_args(args)
    bindings = asyncio.run(_bindings(cfg))
    live = _live_states(cfg)
    rows = []
    for b in bindings:
        state = live.get(normalize_address(b.address), {})
        rows.append(
            {
                "address": b.address,
                "kind": b.kind,
                "patient": b.patient,
                "bonded": b.bonded,
                "bound_at": _iso(b.bound_at),
                "state": state.get("state", "daemon_not_running" if not live else "unknown"),
                "last_seen": state.get("last_seen") or _iso(b.last_seen),
            }
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no devices bound (pair one with `edge pair ADDRESS --patient PSEUDONYM`)")
        return 0
    print(f"{'ADDRESS':<17}  {'KIND':<10}  {'PATIENT':<16}  {'STATE':<18}  LAST SEEN")
    for r in rows:
        print(f"{r['address']:<17}  {r['kind']:<10}  {r['patient']:<16}  {r['state']:<18}  "
              f"{r['last_seen'] or 'never'}")
    return 0
