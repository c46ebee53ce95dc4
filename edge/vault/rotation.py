"""Opening the vault through its key provider, and key rotation that survives a crash.

Rotation, in order (each step durable before the next):

1. audit ``keys.rotation_started``;
2. the current key is written to ``<key_file>.old``, then the new key replaces ``<key_file>``
   (temp file, fsync, rename, fsync of the directory);
3. ``PRAGMA rekey`` re-encrypts every page into an emptied WAL and commits atomically;
4. audit ``keys.rotated``;
5. ``<key_file>.old`` is removed.

A crash anywhere leaves a database that opens with the current or the previous key. The next
``edge keys rotate`` (or :func:`open_vault`) tries the current key, then the previous one,
says which opened it, and finishes the interrupted rotation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge.clock import Clock
from edge.config import VaultConfig
from edge.errors import KeyUnavailable, VaultError
from edge.log import get_logger
from edge.vault.files import opened_key_ids, record_opened, vault_marker
from edge.vault.keys import KeyProvider, key_id, key_provider, new_key
from edge.vault.vault import Vault

log = get_logger("edge.vault")

Hook = Callable[[str], None]


@dataclass(frozen=True)
class RotationOutcome:
    """What happened, in words for the operator (no key material)."""

    #: ``current`` or ``previous``: which key opened the vault at the start
    opened_with: str
    #: an interrupted rotation was found and finished
    recovered: bool
    #: the vault now uses a new key (generated in this run or by the interrupted one)
    rotated: bool
    message: str


async def _recover(
    config: VaultConfig, provider: KeyProvider, clock: Clock | None, actor: str
) -> tuple[Vault, RotationOutcome | None]:
    """Open the vault, finishing an interrupted rotation if there is one."""
    current = provider.load()
    previous = provider.previous()
    refuse_a_vanished_vault(config, current, previous)
    try:
        vault = await Vault.open(config, current, clock=clock)
    except KeyUnavailable:
        if previous is None or previous == current:
            raise
        vault = await Vault.open(config, previous, clock=clock)
        try:
            await vault.rekey(current)
            await vault.audit(actor, "keys.rotated", f"{provider.name} (recovered)")
        except BaseException:
            await vault.close()
            raise
        provider.finish_rotation()
        log.warning("vault.rotation_recovered", opened_with="previous")
        return vault, RotationOutcome(
            "previous", True, True,
            "the vault opened with the PREVIOUS key: an interrupted rotation had not re-keyed "
            "it yet; it is now re-keyed to the new key and the previous key was removed",
        )
    if previous is None:
        return vault, None
    if previous == current:
        provider.finish_rotation()
        return vault, RotationOutcome(
            "current", True, False,
            "the vault opened with the CURRENT key: an interrupted rotation had not stored a "
            "new key yet; the leftover copy of the key was removed",
        )
    try:
        tail = await vault.audit_tail(1)
        if not tail or tail[0].action != "keys.rotated":
            await vault.audit(actor, "keys.rotated", f"{provider.name} (recovered)")
    except BaseException:
        await vault.close()
        raise
    provider.finish_rotation()
    log.warning("vault.rotation_recovered", opened_with="current")
    return vault, RotationOutcome(
        "current", True, True,
        "the vault opened with the NEW key: an interrupted rotation had already re-keyed it; "
        "the previous key was removed",
    )


async def open_vault(
    config: VaultConfig, *, clock: Clock | None = None, actor: str = "system"
) -> Vault:
    """Open the vault with the configured provider's key, finishing an interrupted rotation.
    A vault that has existed and is missing now is an error, never replaced by an empty one."""
    provider = key_provider(config)
    vault, _ = await _recover(config, provider, clock, actor)
    remember_opened(config, provider.load())
    return vault


def refuse_a_vanished_vault(config: VaultConfig, *keys: bytes | None) -> None:
    """VaultError when the vault file is missing although one of ``keys`` has opened a vault
    there before (the marker says so): opening would create an empty vault in its place."""
    marker = vault_marker(config)
    if marker is None or config.path.exists():
        return
    known = set(opened_key_ids(marker))
    if not any(k is not None and key_id(k) in known for k in keys):
        return
    raise VaultError(
        f"vault.path: the vault {config.path} is missing, but this vault key has opened a "
        "vault there before — edge will not put an empty vault in its place. Fix: restore the "
        f"vault (or a backup) to {config.path}; to start again with an empty vault, move the "
        "old key aside and create a new one with `edge keys init`"
    )


def remember_opened(config: VaultConfig, key: bytes) -> None:
    """Record that ``key`` opened the vault (see :mod:`edge.vault.keys`); a marker that cannot
    be written is logged, not fatal (the vault itself is fine)."""
    marker = vault_marker(config)
    if marker is None:
        return
    try:
        record_opened(marker, key)
    except OSError as exc:
        log.warning("vault.marker_unwritable", error=exc.strerror or type(exc).__name__)


async def rotate_key(
    config: VaultConfig,
    *,
    actor: str,
    clock: Clock | None = None,
    hook: Hook | None = None,
    provider: KeyProvider | None = None,
) -> RotationOutcome:
    """Re-key the vault to a fresh random key (see the module docstring). ``hook`` is called
    with each step's name after it is durable (tests inject crashes there)."""
    provider = provider or key_provider(config)
    vault, recovered = await _recover(config, provider, clock, actor)
    try:
        remember_opened(config, provider.load())
        if recovered is not None and recovered.rotated:
            return recovered
        step = hook or (lambda _name: None)
        await vault.lock_exclusive()  # before any key file changes
        fresh = new_key()
        remember_opened(config, fresh)  # before any copy of the vault can need it
        await vault.audit(actor, "keys.rotation_started", provider.name)
        step("started")
        provider.stage_rotation(fresh, hook=step)
        step("key_written")
        await vault.rekey(fresh, hook=step)
        await vault.audit(actor, "keys.rotated", provider.name)
        step("audited")
        provider.finish_rotation()
        step("finished")
    finally:
        await vault.close()
    log.info("vault.key_rotated", provider=provider.name)
    prefix = (recovered.message + "; then ") if recovered is not None else ""
    return RotationOutcome(
        "current", recovered is not None, True,
        prefix + f"the vault is re-keyed with a new key from the {provider.name} provider "
        f"({provider.describe()})",
    )
