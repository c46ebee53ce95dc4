"""The vault's files on disk: a private directory, 0600 files, and the inter-process flock.

The marker of the keys that have opened the vault (see :mod:`edge.vault.keys`) is here too.

Every process holds ``<vault>.lock`` shared from before it opens the vault until after its last
close (and that close's checkpoint); a re-key holds it exclusively.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from contextlib import suppress
from pathlib import Path

from edge.config import VaultConfig
from edge.errors import ConfigError, VaultError
from edge.vault.keys import key_id, write_private

#: how long an opener waits for another process's open or a re-key to let go of the lock
_OPEN_WAIT_S = 10.0
_OPEN_POLL_S = 0.01


def prepare_directory(directory: Path) -> None:
    """Create the vault's directory 0700 if absent; refuse one that others can enter."""
    if not directory.exists():
        old = os.umask(0o077)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
    st = directory.stat()
    if st.st_mode & stat.S_IRWXO:
        raise ConfigError(
            "vault directory is accessible by others",
            [f"vault.path: directory {directory} is accessible by others — "
             f"fix: chmod 700 {directory}"],
        )


def prepare_file(path: Path) -> bool:
    """Create an empty 0600 database file if there is none; True when the vault is new."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        # A new vault's first pages live in its WAL until the first checkpoint.
        wal = Path(str(path) + "-wal")
        return path.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0)
    os.close(fd)
    return True


def tighten(path: Path) -> None:
    """Make the database and its -wal/-shm files 0600 (SQLite creates them from the umask)."""
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        with suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)


def remove_database(path: Path) -> None:
    """Remove a database file and whatever journal files SQLite left beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def lock_for_open(path: Path) -> tuple[int, bool]:
    """The flock on ``<vault>.lock`` held while the vault is open here, and whether this
    process is alone with the vault.

    Getting it exclusively means no other process can be writing the files, so the key may be
    checked without SQLite's locking (:func:`edge.vault.cipher.key_opens`); the caller
    downgrades once open. Otherwise it is taken shared, waiting (bounded) through another
    opener's short exclusive moment or a re-key, which holds it exclusively."""
    fd = os.open(Path(str(path) + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, True
    except BlockingIOError:
        pass
    deadline = time.monotonic() + _OPEN_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd, False
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise VaultError(
                    "the vault's key is being changed by another process; try again when it "
                    "finishes"
                ) from None
            time.sleep(_OPEN_POLL_S)


def downgrade(fd: int) -> None:
    """Exclusive to shared. Downgrading a flock never conflicts; on Linux it is atomic."""
    fcntl.flock(fd, fcntl.LOCK_SH)


def try_upgrade(fd: int) -> bool:
    """Shared to exclusive without waiting; False (still shared) if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # Converting a flock is not atomic: take the shared lock back.
        fcntl.flock(fd, fcntl.LOCK_SH)
        return False
    return True


# --- the marker of the keys that have opened the vault -----------------------------------------

#: ids of keys kept in a marker (a vault re-keyed more often than this forgets the oldest)
_MARKER_IDS = 64


def vault_marker(config: VaultConfig) -> Path | None:
    """Where the ids of the keys that have opened the vault are recorded (see keys.py)."""
    if config.key_provider == "file" and config.key_file is not None:
        return config.key_file.with_name(f".{config.key_file.name}.opened")
    if config.key_provider == "systemd-credential":
        return config.path.with_name(f"{config.path.name}.opened")
    return None


def opened_key_ids(marker: Path) -> list[str]:
    """The key ids recorded in ``marker`` (none when it is absent or unreadable)."""
    try:
        return marker.read_text("ascii").split()
    except (OSError, UnicodeDecodeError):
        return []


def record_opened(marker: Path, key: bytes) -> None:
    """Record that ``key`` has opened the vault (durably, 0600; nothing if already known)."""
    ids = opened_key_ids(marker)
    if key_id(key) in ids:
        return
    ids = [*ids, key_id(key)][-_MARKER_IDS:]
    write_private(marker, "".join(i + "\n" for i in ids).encode("ascii"))
