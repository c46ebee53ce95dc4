"""``python -m firmware_sim ctl``: drive a running simulator through its control object
(:mod:`firmware_sim.control`). Bad input is one ``error:`` line and exit status 2; a refusal by
the simulator one line and status 1; never a D-Bus error name or a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from firmware_sim.cli import ENV_BUS, UsageError


def _value(text: str) -> Any:
    """A ``key=value`` value: JSON when it parses (numbers, true, null …), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: Sequence[str]) -> dict[str, Any]:
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            value = json.loads(items[0])
        except json.JSONDecodeError as err:
            raise UsageError(f"not a JSON object: {err.msg}") from err
        if not isinstance(value, dict):
            raise UsageError("expected a JSON object")
        return value
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {item!r}")
        out[key.replace("-", "_")] = _value(raw)
    return out


def _bpm(text: str) -> int | None:
    """``hr``'s BPM argument: ``auto`` (None) or a heart rate in range."""
    from firmware_sim.control_args import BPM_RANGE

    if text.strip().lower() == "auto":
        return None
    lo, hi = BPM_RANGE
    try:
        bpm = int(text)
    except ValueError:
        raise UsageError(f"heart rate must be {lo}-{hi} bpm or auto, got {text!r}") from None
    if not lo <= bpm <= hi:
        raise UsageError(f"heart rate must be {lo}-{hi} bpm or auto, got {bpm}")
    return bpm


async def _ctl_call(client: Any, args: argparse.Namespace) -> Any:
    cmd = args.ctl_command
    if cmd == "list":
        return await client.list_devices()
    if cmd == "add":
        options = _pairs(args.options)
        if args.name:
            options["name"] = args.name
        if args.address:
            options["address"] = args.address
        return await client.add_device(args.kind, **options)
    if cmd == "remove":
        await client.remove_device(args.device)
    elif cmd == "drop":
        return {"dropped": await client.drop_link(args.device)}
    elif cmd == "fault":
        return await client.inject_fault(args.device, _pairs(args.spec))
    elif cmd == "clear-faults":
        await client.clear_faults(args.device)
        return {"faults": {}}
    elif cmd == "glucose":
        return {"sequence": await client.add_glucose_record(args.device, **_pairs(args.fields))}
    elif cmd == "hr":
        await client.set_heart_rate(args.device, args.pinned)
    elif cmd == "visible":
        await client.set_visible(args.device, args.state in ("yes", "on", "true", "1"))
    elif cmd == "forget-bond":
        return {"bond_forgotten": await client.forget_bond(args.device)}
    elif cmd == "adapters":
        return await client.list_adapters()
    elif cmd == "add-adapter":
        return await client.add_adapter(args.adapter, args.address or "")
    elif cmd == "remove-adapter":
        await client.remove_adapter(args.adapter)
    elif cmd == "wedge":
        return await client.wedge_adapter(args.adapter, args.mode)
    return None


async def ctl(args: argparse.Namespace) -> int:
    """Drive a running simulator through its control object."""
    from firmware_sim.control import ControlClient, ControlError

    address = args.bus or os.environ.get(ENV_BUS)
    if not address:
        raise UsageError(f"no bus address: pass --bus or set {ENV_BUS}")
    if args.ctl_command == "hr":
        args.pinned = _bpm(args.bpm)  # a bad value is an error before anything is sent
    try:
        async with ControlClient(address) as client:
            result = await _ctl_call(client, args)
    except ControlError as err:
        # the simulator's own words, one line; bad input is a usage error
        print(f"error: {err.text or 'the simulator refused'}", file=sys.stderr)
        return 2 if err.name.endswith(".InvalidArguments") else 1
    except (OSError, ValueError) as err:
        print(f"error: cannot reach the simulator at {address}: {err}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def add_ctl_parser(sub: Any) -> None:
    """Add the ``ctl`` command and its subcommands to ``sub``."""
    from firmware_sim.bluez.adapter import WEDGE_MODES
    from firmware_sim.control_args import (
        device_options_help,
        fault_keys_help,
        glucose_fields_help,
    )

    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "ctl",
        help="drive a running simulator",
        formatter_class=raw,
        epilog="DEVICE is a device's name (SIM-HR-1) or address. "
        "Run 'ctl COMMAND --help' for a command's keys.\n\nfault keys:\n"
        + fault_keys_help()
        + "\n\nglucose record fields:\n"
        + glucose_fields_help(),
    )
    p.add_argument("--bus", metavar="ADDRESS", help=f"bus address (default: ${ENV_BUS})")
    csub = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    csub.add_parser("list", help="list devices (JSON)")
    c = csub.add_parser(
        "add",
        help="add a device: add hr|glucose [key=value ...]",
        formatter_class=raw,
        epilog="device options:\n" + device_options_help(),
    )
    c.add_argument("kind", help="hr | glucose")
    c.add_argument("--name")
    c.add_argument("--address")
    c.add_argument("options", nargs="*", metavar="key=value")
    for name, text in (
        ("remove", "remove a device"),
        ("drop", "drop a device's link"),
        (
            "clear-faults",
            "set every fault key back to its default (the pinned heart rate and "
            "visibility are not faults: see hr and visible)",
        ),
        ("forget-bond", "the device forgets its bond (reset / battery change); the hub keeps it"),
    ):
        csub.add_parser(name, help=text, description=text).add_argument(
            "device", help="name or address"
        )
    c = csub.add_parser(
        "fault",
        help="inject faults: fault DEVICE key=value ... | '{json}'",
        formatter_class=raw,
        epilog="fault keys (null restores a default):\n" + fault_keys_help(),
    )
    c.add_argument("device")
    c.add_argument("spec", nargs="+", metavar="key=value")
    c = csub.add_parser(
        "glucose",
        help="add a glucose record: glucose DEVICE [key=value ...]",
        formatter_class=raw,
        epilog="fields:\n" + glucose_fields_help(),
    )
    c.add_argument("device")
    c.add_argument("fields", nargs="*", metavar="key=value")
    c = csub.add_parser("hr", help="pin a heart rate: hr DEVICE BPM (20-300) | auto")
    c.add_argument("device")
    c.add_argument("bpm", metavar="BPM|auto")
    c = csub.add_parser("visible", help="visible DEVICE yes|no")
    c.add_argument("device")
    c.add_argument("state", choices=["yes", "no", "on", "off", "true", "false", "1", "0"])
    csub.add_parser("adapters", help="list adapters (JSON)")
    c = csub.add_parser("add-adapter", help="plug in an adapter: add-adapter hciN [--address A]")
    c.add_argument("adapter", metavar="hciN")
    c.add_argument("--address")
    c = csub.add_parser("remove-adapter", help="unplug an adapter: its links drop")
    c.add_argument("adapter", metavar="hciN")
    c = csub.add_parser(
        "wedge",
        help="wedge an adapter's discovery until it is power-cycled",
        description="in_progress: StartDiscovery fails org.bluez.Error.InProgress; silent: "
        "discovery runs and reports nothing. Powered off then on clears it.",
    )
    c.add_argument("adapter", metavar="hciN")
    c.add_argument("mode", nargs="?", default="in_progress", choices=list(WEDGE_MODES))
