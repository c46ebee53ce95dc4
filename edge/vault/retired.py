"""Retired vault keys: what old backups need, kept until the installer retires them.

``edge keys rotate`` (file provider) keeps the key it replaces in ``<key_file>.retired/``
(0700, beside the key file, so apart from the data like the key itself), one 0600 file per
key named ``<retired-at>-<key id>.key`` in the key file format (64 hex characters and a
newline): pointed at by ``vault.key_file`` it opens what that key encrypted.
``edge keys retire KEY_ID`` overwrites and removes one; ``edge vault check-backup FILE``
tries the current, previous and retired keys on a backup. A backup records the id of the key
it needs in ``<backup>.keyid`` (:func:`edge.vault.maintenance.backup`).

The systemd-credential provider's directory is read-only to edge: rotation there goes through
a file-provider copy (see :mod:`edge.vault.keys`), whose retired keys land beside that copy.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.config import VaultConfig
from edge.errors import KeyUnavailable, UsageError
from edge.vault.keys import (
    FileKeyProvider,
    decode_key,
    encode_key,
    fsync_dir,
    key_id,
    key_provider,
    write_private,
)

_NAME = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{16})\.key$")
_STAMP = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class RetiredKey:
    """A kept key: its id, when it stopped being the vault's key, and its file."""

    key_id: str
    retired_at: datetime
    path: Path


def retired_dir(key_file: Path) -> Path:
    """Where the file provider keeps retired keys."""
    return key_file.with_name(key_file.name + ".retired")


def keep(key_file: Path, key: bytes, now: datetime | None = None) -> RetiredKey:
    """Keep ``key`` (durably, 0600) unless it is kept already."""
    kid = key_id(key)
    for kept in listing(key_file):
        if kept.key_id == kid:
            return kept
    directory = retired_dir(key_file)
    old = os.umask(0o077)
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    finally:
        os.umask(old)
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    path = directory / f"{when.strftime(_STAMP)}-{kid}.key"
    write_private(path, encode_key(key))
    fsync_dir(key_file.parent)
    return RetiredKey(kid, when, path)


def listing(key_file: Path) -> list[RetiredKey]:
    """The retired keys kept for ``key_file``, oldest first."""
    directory = retired_dir(key_file)
    try:
        names = sorted(p.name for p in directory.iterdir())
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME.match(name)
        if m:
            when = datetime.strptime(m.group(1), _STAMP).replace(tzinfo=UTC)
            out.append(RetiredKey(m.group(2), when, directory / name))
    return out


def load(kept: RetiredKey) -> bytes:
    """The key in a retired key's file (refused when others can read it, or malformed)."""
    fd = os.open(kept.path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyUnavailable(f"retired key {kept.path} is accessible by group or others "
                                 f"— fix: chmod 600 {kept.path}")
        key = decode_key(os.read(fd, 4096))
    finally:
        os.close(fd)
    if key is None or key_id(key) != kept.key_id:
        raise KeyUnavailable(f"retired key {kept.path} is not the key its name says")
    return key


def forget(key_file: Path, kid: str) -> RetiredKey:
    """Overwrite and remove the retired key ``kid``; UsageError when none is kept."""
    for kept in listing(key_file):
        if kept.key_id == kid:
            fd = os.open(kept.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.write(fd, b"0" * 64 + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            kept.path.unlink()
            fsync_dir(kept.path.parent)
            return kept
    known = ", ".join(k.key_id for k in listing(key_file)) or "none"
    raise UsageError(f"no retired key with id {kid} (retired keys kept: {known})")


def candidate_keys(config: VaultConfig) -> list[tuple[str, bytes]]:
    """Every key edge holds for this vault, labelled for the operator: the current key, an
    unfinished rotation's previous key, and the retired keys (newest first). None is read
    that cannot be (a missing current key is simply not a candidate)."""
    provider = key_provider(config)
    out: list[tuple[str, bytes]] = []
    with suppress(KeyUnavailable):
        current = provider.load()
        out.append((f"the current key (id {key_id(current)})", current))
    try:
        previous = provider.previous()
    except KeyUnavailable:
        previous = None
    if previous is not None:
        out.append((f"the previous key of an unfinished rotation (id {key_id(previous)})",
                    previous))
    if isinstance(provider, FileKeyProvider):
        for kept in reversed(listing(provider.path)):
            try:
                key = load(kept)
            except (KeyUnavailable, OSError):
                continue
            out.append((f"retired key {kept.key_id} (retired "
                        f"{kept.retired_at.isoformat().replace('+00:00', 'Z')}, kept in "
                        f"{kept.path})", key))
    return out
