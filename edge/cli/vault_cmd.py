"""``edge keys init|rotate|list|retire``, ``edge vault stats|backup|check-backup|salvage``,
``edge audit verify|tail``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import sqlcipher3

from edge.cli.common import admin_actor, print_json
from edge.config import GatewayConfig, load_config, resolve_config_path
from edge.config_env import check_environment
from edge.errors import ConfigError, KeyUnavailable, UsageError
from edge.log import configure_logging
from edge.vault import Vault, cipher, maintenance, retired
from edge.vault.keys import FileKeyProvider, key_id, key_provider
from edge.vault.rotation import open_vault, rotate_key
from edge.vault.salvage import SalvageReport, salvage

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
    p = keys_sub.add_parser(
        "list", parents=[common], help="the current key's id and the retired keys kept",
    )
    p.set_defaults(func=_keys_list)
    p = keys_sub.add_parser(
        "retire", parents=[common],
        help="remove a retired key (backups made with it no longer open; audited)",
    )
    p.add_argument("key_id", metavar="KEY_ID", help="the id `edge keys list` shows")
    p.set_defaults(func=_keys_retire)

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
    p = vault_sub.add_parser(
        "salvage", parents=[common],
        help="copy every readable row of a damaged vault into a new vault OUT (audited); "
             "lists what could not be read",
    )
    p.add_argument("out", metavar="OUT", type=Path)
    p.set_defaults(func=_vault_salvage)
    p = vault_sub.add_parser(
        "check-backup", parents=[common],
        help="whether a backup FILE opens, with which key, and passes its integrity checks",
    )
    p.add_argument("file", metavar="FILE", type=Path)
    p.set_defaults(func=_vault_check_backup)

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
    if isinstance(provider, FileKeyProvider) and (kept := retired.listing(provider.path)):
        print(f"the replaced key is kept as retired key {kept[-1].key_id} in "
              f"{retired.retired_dir(provider.path)} for the backups made with it; once none "
              f"is needed: `edge keys retire {kept[-1].key_id}` (`edge keys list` shows all)")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    provider = key_provider(cfg.vault)
    current = key_id(provider.load()) if provider.exists() else "none"
    print(f"current key   id {current} ({provider.describe()})")
    kept = retired.listing(provider.path) if isinstance(provider, FileKeyProvider) else []
    if not kept:
        print("retired keys  none")
    for k in kept:
        when = k.retired_at.isoformat().replace("+00:00", "Z")
        print(f"retired key   id {k.key_id} (retired {when}) {k.path}")
    return 0


def _keys_retire(args: argparse.Namespace) -> int:
    cfg = _config(args)
    provider = key_provider(cfg.vault)
    kid = str(args.key_id).strip().lower()
    if not isinstance(provider, FileKeyProvider):
        raise UsageError(f"the {provider.name} provider keeps no retired keys; rotation goes "
                         "through a file-provider copy of the key (see `edge keys rotate`)")
    if provider.exists() and key_id(provider.load()) == kid:
        raise UsageError(f"{kid} is the current vault key — it cannot be retired (rotate "
                         "first with `edge keys rotate`)")
    if not any(k.key_id == kid for k in retired.listing(provider.path)):
        retired.forget(provider.path, kid)  # raises, naming the kept ones
    if cfg.vault.path.exists():
        _with_vault(cfg, lambda v: v.audit(admin_actor(), "keys.retired", kid))
    gone = retired.forget(provider.path, kid)
    print(f"retired key {kid} removed ({gone.path}); backups that need it no longer open")
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
    needs = key_id(key_provider(cfg.vault).load())
    print(f"encrypted backup written to {dest} ({dest.stat().st_size} bytes), verified; it "
          f"opens with the current vault key, id {needs} (recorded in "
          f"{maintenance.backup_key_id_path(dest).name})")
    return 0


def _vault_check_backup(args: argparse.Namespace) -> int:
    cfg = _config(args)
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        needed: str | None = maintenance.backup_key_id_path(path).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        needed = None
    candidates = retired.candidate_keys(cfg.vault)
    candidates.sort(key=lambda c: key_id(c[1]) != needed)  # the recorded one first
    for label, key in candidates:
        if not cipher.opens_readonly(sqlcipher3, path, key):
            continue
        damage = maintenance.find_damage(sqlcipher3, path, key, None)
        if damage.damaged:
            print(f"{path} opens with {label}, but it is DAMAGED: {damage.describe()}")
            return 1
        print(f"{path} opens with {label}; it passes the cipher's HMAC check and quick_check")
        if needed and needed != key_id(key):
            print(f"note: {maintenance.backup_key_id_path(path).name} names key id {needed}")
        return 0
    tried = len(candidates)
    print(f"{path} does NOT open with any key edge holds ({tried} tried: the current key, an "
          "unfinished rotation's previous key, the retired keys)")
    if needed:
        print(f"it needs key id {needed} (recorded in "
              f"{maintenance.backup_key_id_path(path).name}); that key is not kept here — "
              "was it removed with `edge keys retire`?")
    return 1


def _vault_salvage(args: argparse.Namespace) -> int:
    cfg = _config(args)
    provider = key_provider(cfg.vault)
    current = provider.load()
    out: Path = args.out

    def run(source_key: bytes) -> SalvageReport:
        return salvage(cfg.vault, source_key, out, out_key=current, actor=admin_actor(),
                       driver=sqlcipher3)

    try:
        report = run(current)
    except KeyUnavailable:
        previous = provider.previous()  # an interrupted rotation had not re-keyed it yet
        if previous is None or previous == current:
            raise
        report = run(previous)
    print(f"salvaged {cfg.vault.path} into {out}, keyed with the current vault key:")
    for line in report.lines():
        print(f"  {line}")
    if report.complete:
        print("every row was read")
    else:
        print("SOME ROWS COULD NOT BE READ (listed above); consents and bindings that are "
              "missing must be granted and paired again")
    print("the salvage is recorded in the new vault's audit log")
    print(f"to use it: stop edge, move {cfg.vault.path} (and any -wal file) aside and keep it, "
          f"move {out} to {cfg.vault.path}, start edge")
    return 0 if report.complete else 1


# --- audit ---------------------------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> int:
    cfg = _config(args)
    n = _with_vault(cfg, lambda v: v.verify_audit())
    print(f"audit chain ok: {n} entries verified")
    return 0


def _audit_tail(args: argparse.Namespace) -> int:
    cfg = _config(args)
    entries = _with_vault(cfg, lambda v: v.audit_tail(max(0, args.n)))
    if not entries and not args.json:
        print("no audit entries")
        return 0
    for e in entries:
        if args.json:
            print_json(asdict(e))
        else:
            subject = f" {e.subject}" if e.subject else ""
            print(f"{e.id:>6} {e.at.isoformat(timespec='seconds')} {e.actor} {e.action}{subject}")
    return 0
