"""The engine: one connection, its pragmas and transactions, error translation, counters.

Everything here runs on the vault's single writer thread (see :mod:`edge.vault.vault`). The
operations themselves live by concern in :mod:`~edge.vault.outbox`, :mod:`~edge.vault.registry`,
:mod:`~edge.vault.audit` and :mod:`~edge.vault.maintenance`, as functions of an :class:`Engine`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from edge.clock import Clock
from edge.config import VaultConfig
from edge.errors import VaultCorrupt, VaultError, VaultFull
from edge.log import Redactor, get_logger
from edge.vault import cipher, files, schema
from edge.vault.cipher import Connection, Driver
from edge.vault.models import to_ts

if TYPE_CHECKING:
    from edge.vault.staging import Staging

log = get_logger("edge.vault")

_REASON_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_FULL_WHY = {
    "vault_full_count": "the vault holds its maximum number of undelivered readings",
    "vault_full_bytes": "the vault holds its maximum bytes of undelivered readings",
    "disk_full": "the disk holding the vault is full",
}


def vault_full(reason: str) -> VaultFull:
    """The error that tells the caller a bound refused a whole batch."""
    return VaultFull(reason, _FULL_WHY[reason] + "; nothing was stored")


def check_reason(reason: str) -> str:
    """``reason`` if it is a short lower-case word (a refusal reason); else ValueError."""
    if not _REASON_RE.match(reason):
        raise ValueError("a refusal reason is a short lower-case word")
    return reason


class DiskFull(VaultError):
    """SQLITE_FULL; ``append`` turns it into VaultFull('disk_full')."""

    def __init__(self) -> None:
        super().__init__("the disk holding the vault is full")


class Full(VaultError):
    """A bound reached inside a transaction (rolled back); ``reason`` as in VaultFull."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Engine:
    """Owns the connection and the in-memory mirror of the persisted counters."""

    def __init__(self, conn: Connection, driver: Driver, config: VaultConfig,
                 clock: Clock) -> None:
        self.conn = conn
        self.driver = driver
        self.config = config
        self.clock = clock
        self.pending = 0
        self.pending_bytes = 0
        self.delivered = 0
        self.refusals: dict[str, int] = {}
        #: refusals counted in memory, written with the next successful transaction
        self.unflushed: dict[str, int] = {}
        #: id -> (seq, payload bytes, patient) of readings handed out by next_batch
        self.inflight: dict[str, tuple[int, int, str]] = {}
        self.hasher = Redactor(b"\0" * 32)
        self.hash_key = b""
        self.schema_version = 0
        self.lock_fd: int | None = None
        self.exclusive = False
        #: readings accepted into the side log, not yet merged (None: write-through, every
        #: append its own durable transaction)
        self.staging: Staging | None = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, config: VaultConfig, key: bytes | None, clock: Clock, driver: Driver, provider: str
    ) -> Engine:
        """Open (creating if absent) under the inter-process lock; ``key`` None: unencrypted."""
        path = config.path
        files.prepare_directory(path.parent)
        lock_fd, alone = files.lock_for_open(path)
        try:
            engine = cls._open_locked(config, key, clock, driver, provider, alone=alone)
            if alone:
                files.downgrade(lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        engine.lock_fd = lock_fd
        return engine

    @classmethod
    def _open_locked(
        cls, config: VaultConfig, key: bytes | None, clock: Clock, driver: Driver, provider: str,
        *, alone: bool,
    ) -> Engine:
        path = config.path
        new = files.prepare_file(path)
        wrong_key = (f"{provider} provider: the vault key does not open {path} "
                     "(wrong key, or not a vault)")
        # The lock-free check is only sound while no other process can be writing the files;
        # otherwise the normal connection below checks the key (it cannot be the last one, so
        # a wrong key cannot make it checkpoint).
        if key is not None and not new and alone and not cipher.key_opens(driver, path, key):
            raise cipher.not_opened(path, key, wrong_key)
        try:
            conn = driver.connect(cipher.file_uri(path, "mode=rw"), uri=True,
                                  isolation_level=None)
        except driver.Error as exc:
            raise VaultError(f"vault {path} cannot be opened ({type(exc).__name__})") from exc
        try:
            if key is not None:
                cipher.apply_key(conn, key)
            # Before the first read: recovering a crashed writer's WAL may meet a lock for a
            # moment, and that must be waited out, not taken for a wrong key.
            conn.execute("PRAGMA busy_timeout = 5000")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except driver.DatabaseError as exc:
                code = getattr(exc, "sqlite_errorcode", cipher.SQLITE_NOTADB)
                if code == cipher.SQLITE_NOTADB:
                    raise cipher.not_opened(path, key, wrong_key) from exc
                name = getattr(exc, "sqlite_errorname", type(exc).__name__)
                raise VaultError(f"vault {path} cannot be read ({name})") from exc
            engine = cls(conn, driver, config, clock)
            engine._configure(new)
            if key is not None:
                cipher.record_key_check(path, key)
            return engine
        except BaseException:
            conn.close()
            raise

    def _configure(self, new: bool) -> None:
        c = self.conn
        with self.errors():
            if new:
                # Only effective before the first table is created.
                c.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise VaultError("the vault could not switch to WAL journaling")
            c.execute("PRAGMA synchronous = FULL")
            c.execute("PRAGMA foreign_keys = ON")
            c.execute("PRAGMA busy_timeout = 5000")
            c.execute("PRAGMA journal_size_limit = 8388608")
            # negative: KiB, not pages; bounds the page cache (resident memory) of this connection
            c.execute(f"PRAGMA cache_size = -{int(self.config.cache_kib)}")
            version = schema.current_version(c)
            if version > schema.CURRENT_VERSION:
                raise VaultError(
                    f"the vault's schema v{version} is newer than this edge supports "
                    f"(v{schema.CURRENT_VERSION}); upgrade edge"
                )
            start, end = schema.migrate(c, self.now())
            if start != end:
                log.info("vault.migrated", from_version=start, to_version=end)
            self.schema_version = end
            for name, value in c.execute("SELECT name, value FROM counters"):
                setattr(self, name, int(value))
            self.refusals = {r: int(n) for r, n in c.execute("SELECT reason, count FROM refusals")}
            self.hash_key = self._device_hash_key()
            self.hasher = Redactor(self.hash_key)
        files.tighten(self.config.path)

    def _device_hash_key(self) -> bytes:
        c = self.conn
        row = c.execute("SELECT value FROM meta WHERE key = 'device_hash_key'").fetchone()
        if row is None:
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('device_hash_key', ?)",
                (os.urandom(32),),
            )
            c.execute("COMMIT")
            row = c.execute("SELECT value FROM meta WHERE key = 'device_hash_key'").fetchone()
        return bytes(row[0])

    def close(self) -> None:
        """Close the connection (the last close checkpoints the WAL) and drop the lock."""
        try:
            self.conn.close()
        except self.driver.Error as exc:
            raise VaultError(f"the vault did not close cleanly ({type(exc).__name__})") from exc
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)
                self.lock_fd = None

    # -- plumbing ----------------------------------------------------------------------------

    def now(self) -> float:
        """The injected clock's wall time as stored."""
        return to_ts(self.clock.now())

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Translate driver errors raised by reads into edge errors."""
        try:
            yield
        except self.driver.Error as exc:
            raise self.translate(exc) from exc

    def translate(self, exc: BaseException) -> VaultError:
        """The edge error for a driver error: disk full, corrupt, or a generic failure."""
        code = int(getattr(exc, "sqlite_errorcode", 0) or 0)
        primary = code & 0xFF
        if primary == cipher.SQLITE_FULL or (
            primary == cipher.SQLITE_IOERR and self._disk_is_full()
        ):
            return DiskFull()
        if primary in (cipher.SQLITE_CORRUPT, cipher.SQLITE_NOTADB):
            return VaultCorrupt(
                "the vault is damaged (an integrity check failed): stop edge and run "
                "`edge vault salvage NEW_FILE` to copy every readable row into a new vault, "
                "or restore a backup"
            )
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        return VaultError(f"vault operation failed ({name})")

    def _disk_is_full(self) -> bool:
        try:
            st = os.statvfs(self.config.path.parent)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024

    def settle(self) -> None:
        """Merge whatever the side log holds into the database, durably (before a purge,
        a backup, a re-key, a close)."""
        if self.staging is not None:
            self.staging.merge(self)

    def reload_counters(self) -> None:
        """The in-memory counters from the persisted ones (after a merge, nothing is held)."""
        with self.errors():
            for name, value in self.conn.execute("SELECT name, value FROM counters"):
                setattr(self, name, int(value))

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """One write transaction; pending refusal counts ride along. ``durable=False``: no
        fsync at commit (WAL + synchronous=NORMAL: a power cut may roll it back, never
        corrupt; the next durable commit makes it durable too)."""
        c = self.conn
        if not durable:
            c.execute("PRAGMA synchronous = NORMAL")
        try:
            c.execute("BEGIN IMMEDIATE")
            flushed = dict(self.unflushed)
            for reason, n in flushed.items():
                c.execute(
                    "INSERT INTO refusals(reason, count) VALUES (?, ?) "
                    "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
                    (reason, n),
                )
            yield c
            c.execute("COMMIT")
        except BaseException as exc:
            try:
                if c.in_transaction:
                    c.execute("ROLLBACK")
            except self.driver.Error:
                pass
            if isinstance(exc, self.driver.Error):
                raise self.translate(exc) from exc
            raise
        finally:
            if not durable:
                c.execute("PRAGMA synchronous = FULL")
        for reason, n in flushed.items():
            left = self.unflushed.get(reason, 0) - n
            if left > 0:
                self.unflushed[reason] = left
            else:
                self.unflushed.pop(reason, None)

    def bump(self, pending: int = 0, pending_bytes: int = 0, delivered: int = 0) -> None:
        """Move the persisted counters, inside the caller's transaction."""
        self.conn.execute(
            "UPDATE counters SET value = value + CASE name WHEN 'pending' THEN ? "
            "WHEN 'pending_bytes' THEN ? WHEN 'delivered' THEN ? ELSE 0 END",
            (pending, pending_bytes, delivered),
        )

    def apply(self, pending: int = 0, pending_bytes: int = 0, delivered: int = 0) -> None:
        """Move the in-memory counters, after the transaction that bumped them committed."""
        self.pending += pending
        self.pending_bytes += pending_bytes
        self.delivered += delivered

    # -- refusals ------------------------------------------------------------------------------

    def note_refusal(self, reason: str, n: int) -> None:
        """Count in memory; written with the next successful write transaction."""
        if n <= 0:
            return
        check_reason(reason)
        self.refusals[reason] = self.refusals.get(reason, 0) + n
        self.unflushed[reason] = self.unflushed.get(reason, 0) + n

    def count_refusal(self, reason: str, n: int) -> None:
        """Count ``n`` refusals with ``reason`` and persist them now (if the disk allows)."""
        if n <= 0:
            return
        self.note_refusal(reason, n)
        if self.staging is None:
            self.flush_refusals(reason)
        # else: written with the next merge, like everything else the side log batches

    def flush_refusals(self, reason: str) -> None:
        """Write the refusals counted in memory now, unless the disk is full."""
        try:
            with self.write():
                pass
        except DiskFull:
            # Kept in memory and written with the next successful transaction.
            log.warning("vault.refusal_unpersisted", reason=reason)

    def refuse(self, reason: str, n: int) -> VaultFull:
        """Count a bound refusal; the VaultFull for the caller to raise."""
        self.count_refusal(reason, n)
        log.warning("vault.full", reason=reason, n=n, pending=self.pending)
        return vault_full(reason)
