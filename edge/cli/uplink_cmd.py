"""``edge pki dev|csr|pin`` and ``edge uplink probe``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edge.cli.common import config_from_args, print_json
from edge.config import GatewayConfig
from edge.errors import ConfigError, ControlError, DaemonNotRunning, UsageError
from edge.uplink import pki
from edge.uplink.pins import spki_pin


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``pki`` and ``uplink`` command groups."""
    p_pki = sub.add_parser("pki", parents=[common], help="development PKI, CSRs and pins")
    pki_sub = p_pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    dev = pki_sub.add_parser(
        "dev", parents=[common], help="generate a development CA and certificates"
    )
    dev.add_argument("--out", required=True, type=Path, help="directory to write (made 0700)")
    dev.add_argument("--hub-id", default="hub-1", help="CN of the hub client certificate")
    dev.add_argument(
        "--clinician", action="append", metavar="NAME",
        help="a clinician identity (repeatable; default clinician-1)",
    )
    dev.add_argument("--admin", default="admin", help="CN of the admin identity")
    dev.add_argument(
        "--broker-host", action="append", metavar="NAME",
        help="DNS name for the broker certificate (repeatable; default localhost)",
    )
    dev.add_argument("--json", action="store_true", help="print paths and pins as JSON")
    dev.set_defaults(func=_cmd_pki_dev)

    csr = pki_sub.add_parser("csr", parents=[common], help="make a hub key and a CSR")
    csr.add_argument("--out", required=True, type=Path, help="directory for hub.key, hub.csr")
    csr.add_argument("--hub-id", required=True, help="the hub id (the certificate's CN)")
    csr.set_defaults(func=_cmd_pki_csr)

    pin = pki_sub.add_parser("pin", parents=[common], help="print a certificate's SPKI pin")
    pin.add_argument("cert", type=Path, help="PEM or DER certificate")
    pin.set_defaults(func=_cmd_pki_pin)

    p_up = sub.add_parser("uplink", parents=[common], help="the MQTT uplink")
    up_sub = p_up.add_subparsers(dest="uplink_command", required=True, metavar="ACTION")
    probe = up_sub.add_parser(
        "probe", parents=[common],
        help="connect as the daemon would and publish a status message (no readings); "
        "refused while the daemon runs (`edge status` shows its live link)",
    )
    probe.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    probe.add_argument(
        "--force", action="store_true",
        help="probe even while the daemon is running: the broker gives the hub's certificate "
        "one session, so the probe TAKES OVER the daemon's connection and the broker publishes "
        "the daemon's Last Will (offline) until the daemon reconnects",
    )
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(func=_cmd_probe)


def _cmd_pki_dev(args: argparse.Namespace) -> int:
    clinicians = {name: () for name in (args.clinician or ["clinician-1"])}
    result = pki.write_dev_pki(
        args.out,
        hub_id=args.hub_id,
        clinicians=clinicians,
        admin=args.admin,
        broker_hosts=tuple(args.broker_host or ["localhost"]),
    )
    rows = [("ca", result.ca), ("broker", result.broker), (f"hub {args.hub_id}", result.hub)]
    rows += [(f"clinician {n}", f) for n, f in result.clinicians.items()]
    if result.admin is not None:
        rows.append((f"admin {args.admin}", result.admin))
    if args.json:
        print_json(
            {
                name: {"cert": str(f.cert), "key": str(f.key), "pin": f.pin}
                for name, f in rows
            }
        )
        return 0
    for name, f in rows:
        print(f"{name:<22} {f.cert}  key {f.key}")
        print(f"{'':<22} pin {f.pin}")
    print()
    print("# gateway.toml: pin the broker and its CA (two pins allow a rotation)")
    print(f'pins = ["{result.broker.pin}", "{result.ca.pin}"]')
    return 0


def _cmd_pki_csr(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key = pki.new_key()
    key_path, csr_path = out / "hub.key", out / "hub.csr"
    pki.write_key(key_path, key)
    csr_path.write_bytes(pki.make_csr(args.hub_id, key).public_bytes(serialization.Encoding.PEM))
    print(f"key  {key_path} (0600; keep it on the hub)")
    print(f"csr  {csr_path} (send it to the CA; CN={args.hub_id}, clientAuth)")
    return 0


def _cmd_pki_pin(args: argparse.Namespace) -> int:
    try:
        data = Path(args.cert).read_bytes()
        pin = spki_pin(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "certificate unreadable",
            [f"{args.cert}: not a readable PEM or DER certificate — fix: check the path"],
        ) from exc
    print(pin)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from edge.log import configure_logging
    from edge.uplink.probe import probe

    cfg = config_from_args(args)
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    if not args.force:
        refuse_while_daemon_runs(cfg)
    result = asyncio.run(probe(cfg.uplink, cfg.hub.id, step_timeout=args.timeout, e2e=cfg.e2e))
    if args.json:
        print_json(result.as_dict())
    else:
        print("\n".join(result.lines()))
    return result.exit_code


def refuse_while_daemon_runs(cfg: GatewayConfig) -> None:
    """UsageError (exit 2, one line) when the daemon answers on its control socket — or
    cannot be asked. The broker ties a session to the certificate's CN, so a probe with the
    hub's certificate would take the daemon's connection over and fire its Last Will; the
    line shows the daemon's own view of the link instead (what `edge status` shows)."""
    from edge.daemon.control import ControlClient

    hub = cfg.hub.id
    try:
        status = ControlClient(cfg.daemon.control_socket, timeout_s=5.0).request("status")
    except DaemonNotRunning:
        return
    except ControlError as exc:
        raise UsageError(
            f"cannot tell whether the edge daemon is running ({exc}); a probe would take over "
            f"its broker connection as {hub} and fire its Last Will — run as the edge user, or "
            "pass --force if the daemon is stopped"
        ) from exc
    uplink = status.get("uplink") if isinstance(status, dict) else None
    state = uplink.get("state") if isinstance(uplink, dict) else uplink
    raise UsageError(
        f"the edge daemon is running and holds {hub}'s broker connection (uplink: {state}); "
        "not probing: the probe would take that connection over and fire the daemon's Last "
        "Will — see `edge status`, or pass --force"
    )
