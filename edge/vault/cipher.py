"""The SQLCipher boundary: the untyped driver, keying a connection, the lock-free key probe."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from edge.errors import VaultError

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
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".keycheck-") as tmp:
            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, Path(str(copy) + "-wal"))
            return _decrypts(driver, file_uri(copy, "mode=rw"), key)
    except OSError as exc:
        raise VaultError(
            f"the vault's key cannot be checked: no room for a private copy in {path.parent} "
            f"({exc.strerror})"
        ) from exc
