"""``python -m firmware_sim``: serve a simulated fleet as a fake BlueZ, list a scenario's
devices, or drive a running simulator.

``serve`` prints exactly one line on stdout, ``DBUS_SYSTEM_BUS_ADDRESS=<address>``, once the
devices are discoverable; everything else goes to stderr. It runs until SIGINT or SIGTERM and
then stops the dbus-daemon it started and removes its temporary directory and socket.

Typical use::

    python -m firmware_sim serve --devices hr:2,glucose:1 > /tmp/sim.env &
    until [ -s /tmp/sim.env ]; do sleep 0.1; done; export "$(cat /tmp/sim.env)"
    python -m edge scan                                    # unchanged bleak finds SIM-HR-1 …
    python -m firmware_sim ctl hr SIM-HR-1 150             # drive it (bus from the env)
    python -m firmware_sim ctl fault SIM-GLU-1 connect_failures=2 pairing_refused=failed
    python -m firmware_sim ctl glucose SIM-GLU-1 concentration=5.5 unit=mmol/L
    python -m firmware_sim ctl drop SIM-HR-1
    python -m firmware_sim ctl add hr resting_bpm=70 ; python -m firmware_sim ctl list
    python -m firmware_sim ctl forget-bond SIM-GLU-1      # battery change: bond lost
    python -m firmware_sim ctl wedge hci0 in_progress     # until Powered off -> on
    python -m firmware_sim ctl add-adapter hci1 ; python -m firmware_sim ctl remove-adapter hci1

``--devices`` takes ``KIND[:COUNT][:pairing=passkey|numeric_comparison|just_works]
[:passkey=NNNNNN]`` entries, e.g. ``hr:2,glucose:1:pairing=passkey:passkey=123456``.

Real-BlueZ quirks are off unless asked for: ``--keep-gatt``, ``--remove-temporary-after 30``,
``--read-emits-value``. The control interface is described in :mod:`firmware_sim.control`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from asyncio import FIRST_COMPLETED
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from firmware_sim.errors import SimError

log = logging.getLogger("firmware_sim")

ENV_BUS = "DBUS_SYSTEM_BUS_ADDRESS"


class UsageError(SimError):
    """A user error: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------- fleet arguments


def scenario_path(value: str | None) -> Path | None:
    """A scenario file, or the packaged scenario of that name (``default``, …)."""
    if value is None:
        return None
    path = Path(value)
    if path.exists() or "/" in value or value.endswith(".toml"):
        return path
    packaged = resources.files("firmware_sim") / "scenarios" / f"{value}.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return path


def _add_fleet_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", metavar="FILE", help="scenario TOML file (or a packaged scenario name)"
    )
    parser.add_argument("--devices", metavar="SPEC", help="devices to add, e.g. hr:2,glucose:1")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: the scenario's)")


def _build_fleet(args: argparse.Namespace) -> Any:
    from firmware_sim.fleet import build_fleet

    try:
        return build_fleet(
            scenario=scenario_path(args.scenario), devices=args.devices, seed=args.seed
        )
    except (ValueError, OSError) as err:
        raise UsageError(str(err)) from err


# ---------------------------------------------------------------------------- serve


async def serve(args: argparse.Namespace) -> int:
    """Run the private bus, the fake BlueZ and the control object until a signal arrives."""
    from firmware_sim.bluez import BlueZOptions, FakeBlueZ, PrivateBus
    from firmware_sim.control import ControlServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    fleet = _build_fleet(args)
    options = BlueZOptions(
        keep_gatt_after_disconnect=args.keep_gatt,
        temporary_device_timeout=args.remove_temporary_after,
        read_emits_value=args.read_emits_value,
        advertising_interval=args.advertising_interval or None,
    )
    bus = PrivateBus()
    status = 0
    bluez: FakeBlueZ | None = None
    control: ControlServer | None = None
    try:
        bus.start()
        bluez = FakeBlueZ(bus.address, options=options)
        bluez.follow(fleet)
        await bluez.start()
        control = ControlServer(bus.address, fleet, bluez)
        await control.start()
        await fleet.start()
        log.info("sim.serving devices=%d", len(fleet.devices))
        sys.stdout.write(f"{ENV_BUS}={bus.address}\n")
        sys.stdout.flush()
        stopped = asyncio.ensure_future(stop.wait())
        bus_lost = asyncio.ensure_future(bluez.wait_closed())
        done, pending = await asyncio.wait({stopped, bus_lost}, return_when=FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if stopped in done:
            log.info("sim.stopping")
        else:
            log.error("sim.bus_lost")  # the dbus-daemon died under us
            status = 1
    finally:
        with contextlib.suppress(Exception):
            await fleet.stop()
        if control is not None:
            with contextlib.suppress(Exception):
                await control.stop()
        if bluez is not None:
            with contextlib.suppress(Exception):
                await bluez.stop()
        bus.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return status


# ---------------------------------------------------------------------------- list


def list_devices(args: argparse.Namespace) -> int:
    """Print the devices a scenario / spec would serve."""
    fleet = _build_fleet(args)
    summaries = [d.describe() for d in fleet.devices]
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
        return 0
    width = max([4, *(len(s["name"]) for s in summaries)])
    print(f"{'NAME':<{width}} {'KIND':<10} {'ADDRESS':<17} TYPE")
    for s in summaries:
        print(f"{s['name']:<{width}} {s['kind']:<10} {s['address']:<17} {s['address_type']}")
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m firmware_sim``."""
    parser = argparse.ArgumentParser(
        prog="python -m firmware_sim", description="BLE device simulator behind a fake BlueZ"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the devices on a private D-Bus as org.bluez")
    _add_fleet_args(p)
    p.add_argument(
        "--keep-gatt",
        action="store_true",
        help="keep GATT objects after a disconnect (BlueZ's cache)",
    )
    p.add_argument(
        "--remove-temporary-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="remove unpaired devices this long after discovery stops (BlueZ: 30)",
    )
    p.add_argument(
        "--read-emits-value",
        action="store_true",
        help="also emit a read value as a Value change (duplicate notifications)",
    )
    p.add_argument(
        "--advertising-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="while scanning, re-announce a device not heard from for this long (0: never)",
    )

    p = sub.add_parser("list", help="show the devices of a scenario")
    _add_fleet_args(p)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    from firmware_sim.ctl import add_ctl_parser

    add_ctl_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        if args.command == "serve":
            return asyncio.run(serve(args))
        if args.command == "list":
            return list_devices(args)
        from firmware_sim.ctl import ctl

        return asyncio.run(ctl(args))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``… | head``): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as err:
        from firmware_sim.bluez import BusStartError

        if isinstance(err, BusStartError):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise
