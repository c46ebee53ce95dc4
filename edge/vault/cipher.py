"""The SQLCipher boundary: the untyped driver, keying a connection, the lock-free key probe."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from edge.errors import EdgeError, VaultError

#: A DB-API connection of the driver (sqlcipher3, or sqlite3 in the benchmark). sqlcipher3 ships
#: no type information, so its connections and cursors are ``Any``; this alias is the one place
#: that says so.
Connection = Any
#: the DB-API module itself (``sqlcipher3``; the benchmark substitutes ``sqlite3``)
Driver = ModuleType

#: SQLite's primary result codes that the vault tells apart
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
#: "file is not a database": what SQLCipher reports for a wrong key
SQLITE_NOTADB = 26


def file_uri(path: Path, mode: str) -> str:
    """A SQLite URI for ``path`` (``mode`` is the query string, e.g. ``mode=rw``)."""
    return f"file:{quote(str(path))}?{mode}"


def apply_key(conn: Connection, key: bytes) -> None:
    """Key a fresh connection with a raw 256-bit key."""
    # SQLCipher logs decryption failures to stderr; the caller reports them in one line.
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")


def rekey(conn: Connection, key: bytes) -> None:
    """Re-encrypt the open database with ``key``."""
    conn.execute(f"PRAGMA rekey = \"x'{key.hex()}'\"")


def _decrypts(driver: Driver, uri: str, key: bytes) -> bool:
    conn = driver.connect(uri, uri=True, isolation_level=None)
    try:
        apply_key(conn, key)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return True
    except driver.DatabaseError:
        return False
    finally:
        conn.close()


def opens_readonly(driver: Driver, path: Path, key: bytes) -> bool:
    """Whether ``key`` opens the database file at ``path`` (a backup: no WAL), reading it
    immutable: not a byte of it changes."""
    return path.stat().st_size > 0 and _decrypts(
        driver, file_uri(path, "mode=ro&immutable=1"), key)


def key_opens(driver: Driver, path: Path, key: bytes) -> bool:
    """Whether ``key`` opens the vault, without changing a byte of its files.

    A normal connection that fails to decrypt still checkpoints a crashed writer's WAL when it
    closes, so the key is tried on the main file opened immutable (no locks, no WAL, no
    writes). The main file can lag the WAL in one case: a re-key committed to the WAL but not
    yet checkpointed. If the immutable try fails while a WAL exists, the key is tried on a
    private copy of the database and its WAL.
    """
    if path.stat().st_size > 0 and _decrypts(
        driver, file_uri(path, "mode=ro&immutable=1"), key
    ):
        return True
    wal = Path(str(path) + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return False
    needed = path.stat().st_size + wal.stat().st_size + COPY_MARGIN
    free = free_space(path.parent)
    if free < needed:
        raise VaultError(_no_room(path, needed, f"only {_mib(free)} is free"))
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".keycheck-") as tmp:
            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, Path(str(copy) + "-wal"))
            return _decrypts(driver, file_uri(copy, "mode=rw"), key)
    except OSError as exc:
        raise VaultError(_no_room(path, needed, exc.strerror or type(exc).__name__)) from exc


#: kept free beyond the private copy itself
COPY_MARGIN = 1 << 20


def free_bytes(directory: Path) -> int:
    """Bytes available to this user on the file system holding ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


#: the free-space probe :func:`key_opens` consults (tests substitute one)
free_space: Callable[[Path], int] = free_bytes


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _no_room(path: Path, needed: int, why: str) -> str:
    return (
        f"the vault's key cannot be checked: the vault has a WAL (an interrupted key rotation "
        f"or a crash), and the key is checked on a private copy of the database and its WAL, "
        f"which needs {_mib(needed)} ({needed} bytes) free in {path.parent}; {why}. Fix: free "
        "that much space there (or move the vault to a larger disk), then run the command "
        "again — the vault itself is unchanged"
    )


# --- the key check value: a damaged vault is not a wrong key ----------------------------------


def key_check_path(path: Path) -> Path:
    """``<vault>.keyid``: the id (:func:`edge.vault.keys.key_id`, an HMAC of a constant under
    the key: a check value, never key material) of the key the vault is keyed with, kept in a
    file of its own so that damage to the database cannot take it along."""
    return Path(str(path) + ".keyid")


def recorded_key_id(path: Path) -> str | None:
    """The key id recorded for the vault at ``path`` (None: none, or unreadable)."""
    try:
        text = key_check_path(path).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{16}", text) else None


def record_key_check(path: Path, key: bytes) -> None:
    """Record that the vault at ``path`` is keyed with ``key`` (after it opened with it, or
    after a re-key committed); a file that cannot be written only costs the diagnosis."""
    from edge.vault.keys import key_id, write_private

    kid = key_id(key)
    if recorded_key_id(path) == kid:
        return
    with suppress(OSError):
        write_private(key_check_path(path), (kid + "\n").encode("ascii"))


def not_opened(path: Path, key: bytes | None, wrong_key: str) -> EdgeError:
    """The error for a vault that ``key`` does not decrypt: VaultCorrupt when ``key`` is the
    key the vault was keyed with (its check value matches), else the wrong-key error."""
    from edge.errors import KeyUnavailable, VaultCorrupt
    from edge.vault.keys import key_id

    recorded = recorded_key_id(path)
    if key is not None and recorded is not None and recorded == key_id(key):
        return VaultCorrupt(
            f"the vault {path} is damaged: it does not decrypt with the key it was keyed with "
            f"(key id {recorded} matches {key_check_path(path).name}), so its first page or "
            "its header is damaged — it is not a wrong key. Recovery: restore a backup "
            "(`edge vault check-backup FILE` says whether it opens); keep the damaged files"
        )
    if key is not None and recorded is not None:
        return KeyUnavailable(
            f"{wrong_key}; this key's id is {key_id(key)}, the vault was last keyed with "
            f"key id {recorded}"
        )
    return KeyUnavailable(wrong_key)
