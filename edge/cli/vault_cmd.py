"""``edge keys init|rotate``, ``edge vault stats|backup``, ``edge audit verify|tail``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from edge.cli.common import admin_actor, print_json
from edge.config import GatewayConfig, check_environment, load_config, resolve_config_path
from edge.errors import ConfigError
from edge.log import configure_logging
from edge.vault import Vault
from edge.vault.keys import key_provider
from edge.vault.rotation import open_vault, rotate_key

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="create or rotate the vault key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser(
        "init", parents=[common],
        help="create a random vault key with the configured provider (never overwrites)",
    )
    p.set_defaults(func=_keys_init)
    p = keys_sub.add_parser(
        "rotate", parents=[common],
        help="re-key the vault to a new random key; finishes an interrupted rotation",
    )
    p.set_defaults(func=_keys_rotate)

    vault = sub.add_parser("vault", parents=[common], help="inspect or back up the vault")
    vault_sub = vault.add_subparsers(dest="vault_command", required=True, metavar="ACTION")
    p = vault_sub.add_parser("stats", parents=[common], help="queue depth, sizes, refusals")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_vault_stats)
    p = vault_sub.add_parser(
        "backup", parents=[common], help="encrypted, consistent online backup to FILE (0600)"
    )
    p.add_argument("file", metavar="FILE", type=Path)
    p.set_defaults(func=_vault_backup)

    audit = sub.add_parser("audit", parents=[common], help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = audit_sub.add_parser(
        "verify", parents=[common], help="check the chain; exit 1 naming the first broken link"
    )
    p.set_defaults(func=_audit_verify)
    p = audit_sub.add_parser("tail", parents=[common], help="the last entries, oldest first")
    p.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_audit_tail)


# --- shared ----------------------------------------------------------------------------------




def _config(args: argparse.Namespace) -> GatewayConfig:
    """The config, with only the problems that concern the vault: these commands must work
    before the uplink's certificates exist."""
    cfg = load_config(resolve_config_path(args.config))
    # Output is for the operator; log events only when something is wrong, on stderr.
    configure_logging("warning", "console", stream=sys.stderr)
    problems = [p for p in check_environment(cfg) if p.startswith("vault.")]
    if problems:
        raise ConfigError("invalid configuration", problems)
    return cfg


def _with_vault(cfg: GatewayConfig, work: Callable[[Vault], Awaitable[T]]) -> T:
    async def run() -> T:
        if not cfg.vault.path.exists():
            raise ConfigError(
                "no vault",
                [f"vault.path: no vault at {cfg.vault.path} — it is created when edge first "
                 "runs (after `edge keys init`)"],
            )
        vault = await open_vault(cfg.vault, actor=admin_actor())
        try:
            return await work(vault)
        finally:
            await vault.close()

    return asyncio.run(run())


# --- keys --------------------------------------------------------------------------------------


def _keys_init(args: argparse.Namespace) -> int:
    cfg = _config(args)
    provider = key_provider(cfg.vault)
    if cfg.vault.path.exists():
        raise ConfigError(
            "vault exists",
            [f"vault.path: a vault already exists at {cfg.vault.path} — a new key cannot open "
             "it; `edge keys init` is for a new vault (use `edge keys rotate` to change keys)"],
        )
    if not provider.writable:
        # edge cannot write this key: say how the operator creates it.
        print(provider.guidance(), file=sys.stderr)
        return 2
    provider.create()
    print(f"created a new vault key: {provider.describe()}")
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    provider = key_provider(cfg.vault)
    if not provider.writable:
        print(provider.guidance(), file=sys.stderr)
        return 2
    if not cfg.vault.path.exists():
        raise ConfigError(
            "no vault", [f"vault.path: no vault at {cfg.vault.path} — nothing to re-key"]
        )
    outcome = asyncio.run(rotate_key(cfg.vault, actor=admin_actor(), provider=provider))
    print(outcome.message)
    return 0


# --- vault ---------------------------------------------------------------------------------------


def _vault_stats(args: argparse.Namespace) -> int:
    cfg = _config(args)
    stats = _with_vault(cfg, lambda v: v.stats())
    if args.json:
        print_json(asdict(stats))
        return 0
    age = "-" if stats.oldest_pending_age_s is None else f"{stats.oldest_pending_age_s:.0f} s"
    print(f"pending readings      {stats.pending}")
    print(f"oldest pending        {age}")
    print(f"pending bytes         {stats.pending_bytes}")
    print(f"delivered (retained)  {stats.delivered_retained}")
    print(f"database bytes        {stats.db_bytes}")
    if stats.refusals:
        print("refusals")
        for reason, n in stats.refusals.items():
            print(f"  {reason:<20}{n}")
    else:
        print("refusals              none")
    return 0


def _vault_backup(args: argparse.Namespace) -> int:
    cfg = _config(args)
    dest: Path = args.file
    if dest.exists():
        raise ConfigError("backup exists", [f"{dest}: exists — choose a new file name"])

    async def work(vault: Vault) -> None:
        await vault.backup(dest)
        await vault.audit(admin_actor(), "vault.backup")

    _with_vault(cfg, work)
    print(f"encrypted backup written to {dest} ({dest.stat().st_size} bytes); it opens with "
          "the current vault key")
    return 0


# --- audit ---------------------------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> int:
    cfg = _config(args)
    n = _with_vault(cfg, lambda v: v.verify_audit())
    print(f"audit chain ok: {n} entries verified")
    return 0


def _audit_tail(args: argparse.Namespace) -> int:
    cfg = _config(args)
    entries = _with_vault(cfg, lambda v: v.audit_tail(max(0, args.n)))
    for e in entries:
        if args.json:
            print_json(asdict(e))
        else:
            subject = f" {e.subject}" if e.subject else ""
            print(f"{e.id:>6} {e.at.isoformat(timespec='seconds')} {e.actor} {e.action}{subject}")
    return 0
