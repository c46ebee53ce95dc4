"""Maintenance on the open vault: integrity checks, giving space back, backup, re-key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import sqlcipher3

from edge.errors import VaultError
from edge.vault import cipher, files
from edge.vault.engine import Engine

#: called with each re-key step's name once it is durable (tests inject crashes there)
RekeyHook = Callable[[str], None]


def integrity_check(db: Engine) -> list[str]:
    """``PRAGMA cipher_integrity_check`` and ``integrity_check``; empty when healthy."""
    problems: list[str] = []
    with db.errors():
        if db.driver is sqlcipher3:
            problems += [str(r[0]) for r in db.conn.execute("PRAGMA cipher_integrity_check")]
        rows = [str(r[0]) for r in db.conn.execute("PRAGMA integrity_check")]
    return problems + [r for r in rows if r != "ok"]


def reclaim(db: Engine) -> None:
    """Incremental vacuum and a WAL checkpoint: free pages go back to the file system."""
    with db.errors():
        db.conn.execute("PRAGMA incremental_vacuum").fetchall()
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def lock_exclusive(db: Engine) -> None:
    """Hold the vault exclusively (VaultError if another process has it open) until
    :func:`unlock_exclusive` or close: for changing the key."""
    assert db.lock_fd is not None
    if db.exclusive:
        return
    if not files.try_upgrade(db.lock_fd):
        raise VaultError(
            "the vault is open in another process (is edge running?); stop it before "
            "changing the key"
        )
    db.exclusive = True


def unlock_exclusive(db: Engine) -> None:
    """Back to the shared lock every opener holds."""
    if db.exclusive and db.lock_fd is not None:
        files.downgrade(db.lock_fd)
    db.exclusive = False


def rekey(db: Engine, new_key: bytes, hook: RekeyHook | None = None) -> None:
    """Re-encrypt every page with ``new_key``, atomically, holding the vault exclusively."""
    held = db.exclusive
    lock_exclusive(db)
    try:
        with db.errors():
            # An empty WAL first: the re-keyed pages then all land in the WAL and commit
            # atomically, so a crash leaves a database that opens with exactly one key.
            db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            if hook:
                hook("rekey_begin")
            cipher.rekey(db.conn, new_key)
            db.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if hook:
                hook("rekey_committed")
            db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        if not held:
            unlock_exclusive(db)


def backup(db: Engine, dest: Path, key: bytes | None) -> None:
    """A consistent copy at ``dest`` (0600, keyed with ``key``); refuses to overwrite."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot create the backup file {dest} ({exc.strerror})") from exc
    os.close(fd)
    try:
        target = db.driver.connect(str(dest), isolation_level=None)
        try:
            if key is not None:
                cipher.apply_key(target, key)
            with db.errors():
                # One step: a consistent snapshot (this thread is the only writer).
                db.conn.backup(target, pages=-1)
                target.execute("PRAGMA journal_mode = DELETE").fetchall()
        finally:
            target.close()
        dest.chmod(0o600)
    except BaseException:
        files.remove_database(dest)
        raise
