"""Maintenance on the open vault: integrity checks, giving space back, backup, re-key."""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import sqlcipher3

from edge.errors import VaultCorrupt, VaultError
from edge.vault import cipher, files
from edge.vault.cipher import Connection, Driver
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
            cipher.record_key_check(db.config.path, new_key)
            if hook:
                hook("rekey_committed")
            db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        if not held:
            unlock_exclusive(db)


def backup(db: Engine, dest: Path, key: bytes | None) -> None:
    """A consistent copy at ``dest`` (0600, keyed with ``key``); refuses to overwrite.

    Written under a temporary name in ``dest``'s directory, verified (it opens with ``key``
    and passes the cipher's HMAC check and ``quick_check``: a damaged page of the vault makes
    the backup fail rather than produce a malformed file), then linked to ``dest``; on any
    failure nothing is left behind. ``<dest>.keyid`` records the id of the key it needs."""
    if os.path.lexists(dest):
        raise VaultError(f"{dest}: exists — choose a new file name")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    sidecar = backup_key_id_path(dest)
    linked = False
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise VaultError(
                f"cannot create the backup file {dest} ({exc.strerror})") from exc
        os.close(fd)
        target = db.driver.connect(str(tmp), isolation_level=None)
        try:
            if key is not None:
                cipher.apply_key(target, key)
            with db.errors():
                # One step: a consistent snapshot (this thread is the only writer).
                db.conn.backup(target, pages=-1)
                target.execute("PRAGMA journal_mode = DELETE").fetchall()
        finally:
            target.close()
        damage = find_damage(db.driver, tmp, key, None)
        if damage.damaged:
            raise VaultCorrupt(
                f"the backup failed its check ({damage.describe()}): the vault has a damaged "
                "page, so no backup was written. Recovery: stop edge and run `edge vault "
                "salvage NEW_FILE` to copy every readable row into a new vault"
            )
        tmp.chmod(0o600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if key is not None:
            from edge.vault.keys import key_id, write_private

            write_private(sidecar, f"{key_id(key)}\n".encode("ascii"))
        try:
            os.link(tmp, dest)  # never replaces a file that appeared meanwhile
        except OSError as exc:
            raise VaultError(f"cannot create the backup file {dest} ({exc.strerror})") from exc
        linked = True
        files.remove_database(tmp)
        _fsync_dir(dest.parent)
    except BaseException:
        files.remove_database(tmp)
        if not linked:
            sidecar.unlink(missing_ok=True)
        raise


def backup_key_id_path(backup_file: Path) -> Path:
    """``<backup>.keyid``: the id of the key a backup opens with (a check value, not key
    material; no header, one line)."""
    return Path(str(backup_file) + ".keyid")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- damage: the start-up check ----------------------------------------------------------------

#: how many of quick_check's lines a report quotes
_QUOTED = 3


@dataclass(frozen=True)
class Damage:
    """What the start-up integrity check found (page numbers, table names and SQLite's
    structural messages only: never a row's contents)."""

    #: pages whose HMAC does not verify (the cipher's check)
    hmac_pages: tuple[int, ...] = ()
    #: ``PRAGMA quick_check``'s findings, or why it stopped
    problems: tuple[str, ...] = ()
    #: tables a full scan of whose b-tree fails
    tables: tuple[str, ...] = ()
    #: False: the time budget ran out before every check finished
    complete: bool = True

    @property
    def damaged(self) -> bool:
        return bool(self.hmac_pages or self.problems or self.tables)

    def describe(self) -> str:
        """One sentence naming the damage."""
        parts: list[str] = []
        if self.hmac_pages:
            shown = ", ".join(str(p) for p in self.hmac_pages[:8])
            more = ", …" if len(self.hmac_pages) > 8 else ""
            parts.append(f"{len(self.hmac_pages)} page(s) fail the cipher's HMAC check "
                         f"(page {shown}{more})")
        if self.tables:
            parts.append("unreadable part(s) in table " + ", ".join(self.tables))
        if self.problems:
            more = f" (and {len(self.problems) - _QUOTED} more)" if len(
                self.problems) > _QUOTED else ""
            parts.append("quick_check: " + "; ".join(self.problems[:_QUOTED]) + more)
        return "; ".join(parts) or "no damage found"


def _damage_found(driver: Driver, open_conn: Callable[[], Connection], conn: Connection,
                  deadline: float) -> Damage:
    hmac_pages: list[int] = []
    problems: list[str] = []
    if driver is sqlcipher3:
        for (line,) in conn.execute("PRAGMA cipher_integrity_check"):
            page = re.search(r"page (\d+)", str(line))
            if page:
                hmac_pages.append(int(page.group(1)))
            else:
                problems.append(str(line)[:200])
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
        problems += [line[:200] for r in rows for line in r.splitlines()
                     if line and line != "ok" and not line.startswith("***")]
    except driver.DatabaseError as exc:
        if time.monotonic() >= deadline:
            return Damage(tuple(hmac_pages), tuple(problems), (), complete=False)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        problems.append(f"stopped: {name}")
    if not (hmac_pages or problems):
        return Damage()
    # Which tables: a count over a table's own b-tree reads its interior and leaf pages. After
    # a page fails its HMAC check SQLCipher fails every later read of that connection, so each
    # table is probed on a fresh one.
    tables: list[str] = []
    complete = True
    probe = open_conn()
    try:
        names = [str(r[0]) for r in probe.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    except driver.DatabaseError:
        names, tables = [], ["sqlite_master (the schema)"]
    finally:
        probe.close()
    for name in names:
        if time.monotonic() >= deadline:
            complete = False
            break
        probe = open_conn()
        try:
            quoted = '"' + name.replace('"', '""') + '"'
            probe.execute(f"SELECT count(*) FROM {quoted} NOT INDEXED").fetchone()  # noqa: S608
        except driver.DatabaseError:
            tables.append(name)
        finally:
            probe.close()
    return Damage(tuple(hmac_pages), tuple(problems), tuple(tables), complete)


def find_damage(driver: Driver, path: Path, key: bytes | None,
                budget_s: float | None) -> Damage:
    """``PRAGMA cipher_integrity_check`` and ``PRAGMA quick_check`` on read-only connections
    of its own, bounded by ``budget_s``: past it, quick_check is interrupted and what was found
    so far comes back with ``complete=False`` (the check's thread finishes on its own).
    ``budget_s`` None: no bound."""
    deadline = math.inf if budget_s is None else time.monotonic() + budget_s
    outcome: list[Damage | BaseException] = []
    done = threading.Event()

    def open_conn() -> Connection:
        conn = driver.connect(cipher.file_uri(path, "mode=ro"), uri=True,
                              isolation_level=None, check_same_thread=False)
        try:
            if key is not None:
                cipher.apply_key(conn, key)
            conn.execute("PRAGMA busy_timeout = 5000")
        except BaseException:
            conn.close()
            raise
        return conn

    conn = open_conn()

    def work() -> None:
        try:
            outcome.append(_damage_found(driver, open_conn, conn, deadline))
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)
        finally:
            done.set()
            conn.close()

    threading.Thread(target=work, name="vault-integrity", daemon=True).start()
    if not done.wait(None if budget_s is None else max(0.0, budget_s)):
        with suppress(driver.Error):  # it may have closed meanwhile
            conn.interrupt()
        return Damage(complete=False)
    got = outcome[0]
    if isinstance(got, driver.Error):
        name = getattr(got, "sqlite_errorname", None) or type(got).__name__
        return Damage(problems=(f"stopped: {name}",))
    if isinstance(got, BaseException):
        raise got
    return got


def damaged_message(path: Path, damage: Damage) -> str:
    """What the daemon says when it refuses a damaged vault: the damage and the recovery."""
    return (
        f"the vault {path} is damaged: {damage.describe()}. edge does not run on a damaged "
        "vault (a consent revocation or a delivery could fail part-way). Recovery: stop edge, "
        "keep the damaged files, run `edge vault salvage NEW_FILE` to copy every readable row "
        f"into a new vault (it lists what it could not read), then put NEW_FILE in place of "
        f"{path}; or restore a backup (`edge vault check-backup FILE` says whether it opens)"
    )
