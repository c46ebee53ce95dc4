"""``edge run``, ``edge status`` and ``edge consent grant|revoke|list``."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from edge.cli.common import admin_actor, config_from_args, print_json
from edge.config import GatewayConfig
from edge.daemon.control import ControlClient
from edge.daemon.control_handlers import NEVER_GRANTED, ever_granted
from edge.daemon.control_protocol import DEFAULT_SCOPE, check_scope
from edge.errors import ConfigError, ControlError, DaemonNotRunning, EdgeError, UsageError

if TYPE_CHECKING:
    from edge.vault import Vault


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run the gateway daemon (what systemd runs)")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "status", parents=[common],
        help="queue, refusals, devices, uplink — from the running daemon or the vault",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_status)

    p = sub.add_parser("consent", parents=[common], help="grant, revoke or list patient consent")
    csub = p.add_subparsers(dest="consent_command", required=True, metavar="ACTION")
    g = csub.add_parser("grant", parents=[common], help="grant consent for PSEUDONYM")
    g.add_argument("patient", metavar="PSEUDONYM")
    g.add_argument("--scope", default=DEFAULT_SCOPE,
                   help="what is consented to: 1-64 printable characters (default: vitals)")
    g.set_defaults(func=_consent_grant)
    r = csub.add_parser(
        "revoke", parents=[common],
        help="revoke consent: stops forwarding at once and purges pending readings",
    )
    r.add_argument("patient", metavar="PSEUDONYM")
    r.set_defaults(func=_consent_revoke)
    ls = csub.add_parser("list", parents=[common], help="list consent records")
    ls.add_argument("--json", action="store_true", help="print one JSON array")
    ls.set_defaults(func=_consent_list)


# --- edge run -------------------------------------------------------------------------------


def ensure_vault_dir(cfg: GatewayConfig) -> None:
    """Create the vault's directory 0700 if missing; refuse one that others can read."""
    d = cfg.vault.path.parent
    if not d.exists():
        d.mkdir(mode=0o700, parents=True)
    mode = d.stat().st_mode
    if mode & stat.S_IRWXO:
        raise ConfigError(
            "vault directory accessible by others",
            [f"vault.path: directory {d} is accessible by others — fix: chmod 700 {d}"],
        )


def load_key(cfg: GatewayConfig) -> bytes:
    """The vault key from the configured provider."""
    from edge.vault import key_provider

    return key_provider(cfg.vault).load()


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from edge.daemon import Daemon
    from edge.daemon.sdnotify import SdNotifier
    from edge.log import configure_logging, get_logger

    configure_logging(cfg.log.level, cfg.log.format)
    ensure_vault_dir(cfg)
    # Fail fast with the provider's one-line error before anything starts; the daemon then
    # opens through open_vault, which also finishes an interrupted key rotation.
    load_key(cfg)
    notifier = SdNotifier()

    def hard_exit() -> None:
        get_logger("edge.daemon").warning("daemon.forced_exit")
        sys.stdout.flush()
        os._exit(0)

    from edge.hubclock import sync_probe

    probe = sync_probe(cfg.clock.source, cfg.clock.flag_file)
    daemon = Daemon(cfg, notifier=notifier, hard_exit=hard_exit, sync_probe=probe)
    try:
        rc = asyncio.run(daemon.run())
    finally:
        notifier.close()
    get_logger("edge.daemon").info("daemon.exit", rc=rc)
    return rc


# --- offline access (the daemon is not running) ---------------------------------------------

T = TypeVar("T")


def with_vault(cfg: GatewayConfig, fn: Callable[[Vault], Awaitable[T]]) -> T:
    """Open the vault, run ``fn(vault)``, close it — in one event loop."""
    from edge.vault.rotation import open_vault

    async def go() -> T:
        vault = await open_vault(cfg.vault, actor=admin_actor())
        try:
            return await fn(vault)
        finally:
            await vault.close()

    return asyncio.run(go())


def quiet_logs() -> None:
    """Client commands print their result on stdout; their own logs go to stderr, warnings
    and above only."""
    from edge.log import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)


# --- edge status ------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    quiet_logs()
    try:
        status = ControlClient(cfg.daemon.control_socket).request("status")
    except DaemonNotRunning:
        from edge.daemon.status import offline_status

        status = with_vault(cfg, lambda v: offline_status(v, cfg.hub.id, cfg.uplink,
                                                          datetime.now(UTC)))
    if args.json:
        print_json(status)
    else:
        sys.stdout.write(format_status(status))
    return 0


def _fmt_age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# The status is JSON from the control socket (or the same shape built here): Any is json's.
def format_status(status: Mapping[str, Any]) -> str:
    """The human-readable ``edge status``."""
    src = status.get("source")
    lines = [
        "edge status — from the running daemon" if src == "daemon"
        else "edge status — the daemon is not running; figures from the vault",
        f"  queue:      {status.get('queue_depth')} pending, oldest "
        f"{_fmt_age(status.get('oldest_pending_age_s'))}",
    ]
    refusals = status.get("refusals") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()) if v) or "none"
    lines.append(f"  refusals:   {shown}")
    uplink = status.get("uplink") or {}
    lines.append(f"  uplink:     {uplink.get('state') if isinstance(uplink, dict) else uplink}")
    days = status.get("cert_days_left")
    lines.append(f"  client cert: {days if days is not None else '?'} days left")
    intake, figures = status.get("intake"), status.get("vault")
    clock = intake.get("clock") if isinstance(intake, dict) else None
    if isinstance(clock, dict) or isinstance(figures, dict):
        state = clock.get("state") if isinstance(clock, dict) else "daemon not running"
        if isinstance(clock, dict) and clock.get("source"):
            state = f"{state} (source {clock['source']})"
        held = figures.get("held", 0) if isinstance(figures, dict) else "?"
        lines.append(f"  clock:      {state}; {held} reading(s) held back until it is "
                     "synchronised")
    if src == "daemon":
        lines.append(f"  healthy:    {'yes' if status.get('healthy') else 'NO'}")
        pairing = status.get("pairing")
        if isinstance(pairing, dict):
            lines.append(f"  pairing:    agent {pairing.get('agent')}; "
                         f"{pairing.get('unsolicited_pairing_rejected', 0)} unsolicited requests "
                         "rejected")
    adapters = status.get("adapters")
    if isinstance(adapters, dict) and adapters:
        lines.append("  adapters:   " + "; ".join(
            f"{n} {'present' if a.get('present') else 'ABSENT'}, {a.get('devices', 0)} devices, "
            f"{a.get('power_cycles', 0)} power-cycles"
            + (f" (looks wedged: {a['suspected_wedge']})" if a.get("suspected_wedge") else "")
            for n, a in sorted(adapters.items())))
    devices = status.get("devices") or []
    lines.append(f"  devices:    {len(devices)}")
    for d in devices:
        lines.append(
            f"    {d.get('address')}  {d.get('kind', '?'):<10}  {d.get('state')}"
            f"  last seen {d.get('last_seen') or 'never'}"
            + (f"  via {d['adapter']}" if d.get("adapter") else "")
        )
    lines += [f"  problem:    {p}" for p in status.get("problems") or []]
    return "\n".join(lines) + "\n"


# --- edge consent -----------------------------------------------------------------------------


def _refused(exc: ControlError) -> EdgeError:
    """A request the daemon refused for what was given (exit 2), else the error as it is."""
    if exc.code in ("bad_request", "not_granted"):
        return UsageError(str(exc))
    return exc


def _consent_grant(args: argparse.Namespace) -> int:
    from edge.readings import check_pseudonym

    check_pseudonym(args.patient)
    check_scope(args.scope)
    cfg = config_from_args(args)
    quiet_logs()
    try:
        ControlClient(cfg.daemon.control_socket).request(
            "consent.grant", patient=args.patient, scope=args.scope
        )
        where = "in the running daemon"
    except DaemonNotRunning:
        with_vault(cfg, lambda v: v.grant_consent(args.patient, scope=args.scope,
                                                  actor=admin_actor()))
        where = "in the vault (daemon not running)"
    except ControlError as exc:
        raise _refused(exc) from None
    print(f"consent granted {where}")
    return 0


def _consent_revoke(args: argparse.Namespace) -> int:
    from edge.readings import check_pseudonym

    check_pseudonym(args.patient)
    cfg = config_from_args(args)
    quiet_logs()
    try:
        result = ControlClient(cfg.daemon.control_socket).request(
            "consent.revoke", patient=args.patient
        )
        purged = result.get("purged") if isinstance(result, dict) else None
        where = "in the running daemon"
    except DaemonNotRunning:
        purged = with_vault(cfg, lambda v: _revoke_offline(v, args.patient))
        where = "in the vault (daemon not running)"
    except ControlError as exc:
        raise _refused(exc) from None
    print(f"consent revoked {where}; {purged} pending readings purged")
    return 0


async def _revoke_offline(vault: Vault, patient: str) -> int:
    """Revoke in the vault; UsageError when consent was never granted (nothing changes)."""
    if not ever_granted(await vault.consents(), patient):
        raise UsageError(NEVER_GRANTED)
    return await vault.revoke_consent(patient, actor=admin_actor())


def _consent_list(args: argparse.Namespace) -> int:
    from edge.daemon.status import consent_json

    cfg = config_from_args(args)
    quiet_logs()
    consents: Any  # JSON from the daemon, or the same shape built from the vault
    try:
        consents = ControlClient(cfg.daemon.control_socket).request("consent.list")
    except DaemonNotRunning:
        records = with_vault(cfg, lambda v: v.consents())
        consents = [consent_json(c) for c in records]
    if args.json:
        print_json(consents)
        return 0
    if not consents:
        print("no consent records (grant one with `edge consent grant PSEUDONYM`)")
    for c in consents or []:
        state = "revoked" if c.get("revoked_at") else "active"
        print(f"{c.get('patient')}  {state}  scope={c.get('scope')}  granted={c.get('granted_at')}"
              + (f"  revoked={c.get('revoked_at')}" if c.get("revoked_at") else ""))
    return 0
