"""The encrypted vault: outbox of readings, device bindings, consent, sync cursors, audit.

One SQLCipher database (SQLCipher 4 defaults, raw 256-bit key, WAL, synchronous=FULL,
incremental auto-vacuum). All database work runs on ONE dedicated writer thread that owns the
connection; the async methods hand work to it and await the result, so the event loop never
blocks on disk and there is exactly one writer.

A reading is durable when :meth:`Vault.append` returns. Undelivered readings are never
evicted: when a bound is reached new readings are refused with a counted reason.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import sqlcipher3

from edge.clock import Clock, SystemClock
from edge.config import VaultConfig
from edge.errors import (
    AuditChainBroken,
    ConfigError,
    KeyUnavailable,
    VaultCorrupt,
    VaultError,
    VaultFull,
)
from edge.log import Redactor, get_logger
from edge.readings import GlucoseReading, HeartRateReading, reading_from_json
from edge.vault import schema

log = get_logger("edge.vault")

T = TypeVar("T")
AnyReading = HeartRateReading | GlucoseReading

GENESIS_HASH = "0" * 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
_SQLITE_IOERR = 10
#: ids handed out by next_batch, remembered so mark_delivered updates by seq
_INFLIGHT_MAX = 1 << 18
_PURGE_CHUNK = 5000
_REASON_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


# --- value types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingReading:
    """A stored, undelivered reading as the forwarder sees it."""

    seq: int
    id: str
    patient: str
    kind: str
    #: ``reading.model_dump_json().encode()``
    payload: bytes

    def reading(self) -> HeartRateReading | GlucoseReading:
        """The Reading this row holds."""
        return reading_from_json(self.payload)


@dataclass(frozen=True)
class AppendResult:
    stored: int
    duplicates: int


@dataclass(frozen=True)
class VaultStats:
    pending: int
    oldest_pending_age_s: float | None
    db_bytes: int
    pending_bytes: int
    delivered_retained: int
    refusals: dict[str, int]


@dataclass(frozen=True)
class Binding:
    address: str
    kind: str
    patient: str
    bonded: bool
    bound_at: datetime
    bound_by: str
    last_seen: datetime | None


@dataclass(frozen=True)
class Consent:
    patient: str
    scope: str
    granted_at: datetime | None
    granted_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def active(self) -> bool:
        return self.granted_at is not None and self.revoked_at is None


@dataclass(frozen=True)
class GlucoseCursor:
    last_sequence: int
    last_device_time: datetime | None
    clock_offset_s: int
    updated_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    prev_hash: str
    hash: str


# --- pure helpers --------------------------------------------------------------------------


def identity_time_us(reading: AnyReading) -> int:
    """The time a reading's identity is bound to, in µs since the epoch.

    A stable id derives from (device, characteristic, sequence number or device time), so two
    readings with the same id carry the same identity time: the meter's own record time for
    glucose (the corrected effective time may change with the clock-offset estimate), the
    effective time otherwise (for a heart-rate strap, the gateway's receive time).
    """
    t = reading.device_time if isinstance(reading, GlucoseReading) else reading.effective_time
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _US


def audit_hash(entry_id: int, at: str, actor: str, action: str, subject: str, prev: str) -> str:
    """SHA-256 over the canonical JSON of an entry's fields and the previous entry's hash."""
    canonical = json.dumps(
        [entry_id, at, actor, action, subject, prev], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _dt_req(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _check_text(what: str, value: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{what} must be a single line of at most {limit} characters")
    return value


#: SQLite's "file is not a database": what SQLCipher reports for a wrong key
SQLITE_NOTADB = 26
#: how long an opener waits for another process's open or a re-key to let go of the lock
_OPEN_WAIT_S = 10.0
_OPEN_POLL_S = 0.01

class _DiskFull(VaultError):
    """SQLITE_FULL; ``append`` turns it into VaultFull('disk_full')."""

    def __init__(self) -> None:
        super().__init__("the disk holding the vault is full")


class _Full(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the engine: runs on the writer thread only ------------------------------------------


class _Engine:
    """Owns the connection. Every method runs on the vault's writer thread."""

    def __init__(self, conn: Any, driver: Any, config: VaultConfig, clock: Clock) -> None:
        self.conn = conn
        self.driver = driver
        self.config = config
        self.clock = clock
        self.pending = 0
        self.pending_bytes = 0
        self.delivered = 0
        self.refusals: dict[str, int] = {}
        self.unflushed: dict[str, int] = {}
        self.inflight: dict[str, tuple[int, int, str]] = {}
        self.hasher = Redactor(b"\0" * 32)
        self.hash_key = b""
        self.schema_version = 0
        self.lock_fd: int | None = None
        self.exclusive = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls, config: VaultConfig, key: bytes | None, clock: Clock, driver: Any, provider: str
    ) -> _Engine:
        path = config.path
        _prepare_directory(path.parent)
        lock_fd, alone = _lock_for_open(path)
        try:
            engine = cls._open_locked(config, key, clock, driver, provider, alone=alone)
            if alone:
                # Downgrading a flock never conflicts; on Linux it is atomic.
                fcntl.flock(lock_fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(lock_fd)
            raise
        engine.lock_fd = lock_fd
        return engine

    @classmethod
    def _open_locked(
        cls, config: VaultConfig, key: bytes | None, clock: Clock, driver: Any, provider: str,
        *, alone: bool,
    ) -> _Engine:
        path = config.path
        new = _prepare_file(path)
        # The lock-free check is only sound while no other process can be writing the files;
        # otherwise the normal connection below checks the key (it cannot be the last one, so
        # a wrong key cannot make it checkpoint).
        if key is not None and not new and alone and not _key_opens(driver, path, key):
            raise KeyUnavailable(
                f"{provider} provider: the vault key does not open {path} "
                "(wrong key, or not a vault)"
            )
        try:
            conn = driver.connect(
                f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None
            )
        except driver.Error as exc:
            raise VaultError(f"vault {path} cannot be opened ({type(exc).__name__})") from exc
        try:
            if key is not None:
                _apply_key(conn, key)
            # Before the first read: recovering a crashed writer's WAL may meet a lock for a
            # moment, and that must be waited out, not taken for a wrong key.
            conn.execute("PRAGMA busy_timeout = 5000")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except driver.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", SQLITE_NOTADB) == SQLITE_NOTADB:
                    raise KeyUnavailable(
                        f"{provider} provider: the vault key does not open {path} "
                        "(wrong key, or not a vault)"
                    ) from exc
                name = getattr(exc, "sqlite_errorname", type(exc).__name__)
                raise VaultError(f"vault {path} cannot be read ({name})") from exc
            engine = cls(conn, driver, config, clock)
            engine._configure(new)
            return engine
        except BaseException:
            conn.close()
            raise

    def _configure(self, new: bool) -> None:
        c = self.conn
        with self._errors():
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
            version = schema.current_version(c)
            if version > schema.CURRENT_VERSION:
                raise VaultError(
                    f"the vault's schema v{version} is newer than this edge supports "
                    f"(v{schema.CURRENT_VERSION}); upgrade edge"
                )
            start, end = schema.migrate(c, self._now())
            if start != end:
                log.info("vault.migrated", from_version=start, to_version=end)
            self.schema_version = end
            for name, value in c.execute("SELECT name, value FROM counters"):
                setattr(self, name, int(value))
            self.refusals = {r: int(n) for r, n in c.execute("SELECT reason, count FROM refusals")}
            row = c.execute("SELECT value FROM meta WHERE key = 'device_hash_key'").fetchone()
            if row is None:
                c.execute("BEGIN IMMEDIATE")
                c.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('device_hash_key', ?)",
                    (os.urandom(32),),
                )
                c.execute("COMMIT")
                row = c.execute(
                    "SELECT value FROM meta WHERE key = 'device_hash_key'"
                ).fetchone()
            self.hash_key = bytes(row[0])
            self.hasher = Redactor(self.hash_key)
        _tighten(self.config.path)

    def close(self) -> None:
        try:
            self.conn.close()
        except self.driver.Error as exc:
            raise VaultError(f"the vault did not close cleanly ({type(exc).__name__})") from exc
        finally:
            if self.lock_fd is not None:
                os.close(self.lock_fd)
                self.lock_fd = None

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self) -> float:
        return _ts(self.clock.now())

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self.driver.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Any) -> Exception:
        code = int(getattr(exc, "sqlite_errorcode", 0) or 0)
        primary = code & 0xFF
        if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and self._disk_is_full()):
            return _DiskFull()
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return VaultCorrupt(
                "the vault failed an integrity check; stop and investigate "
                "(restore from `edge vault backup`)"
            )
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        return VaultError(f"vault operation failed ({name})")

    def _disk_is_full(self) -> bool:
        try:
            st = os.statvfs(self.config.path.parent)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction; pending refusal counts ride along."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            flushed = dict(self.unflushed)
            for reason, n in flushed.items():
                self._upsert_refusal(reason, n)
            yield c
            c.execute("COMMIT")
        except BaseException as exc:
            try:
                if c.in_transaction:
                    c.execute("ROLLBACK")
            except self.driver.Error:
                pass
            if isinstance(exc, self.driver.Error):
                raise self._translate(exc) from exc
            raise
        for reason, n in flushed.items():
            left = self.unflushed.get(reason, 0) - n
            if left > 0:
                self.unflushed[reason] = left
            else:
                self.unflushed.pop(reason, None)

    def _upsert_refusal(self, reason: str, n: int) -> None:
        self.conn.execute(
            "INSERT INTO refusals(reason, count) VALUES (?, ?) "
            "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
            (reason, n),
        )

    def _bump(self, pending: int = 0, pending_bytes: int = 0, delivered: int = 0) -> None:
        self.conn.execute(
            "UPDATE counters SET value = value + CASE name WHEN 'pending' THEN ? "
            "WHEN 'pending_bytes' THEN ? WHEN 'delivered' THEN ? ELSE 0 END",
            (pending, pending_bytes, delivered),
        )

    def _apply(self, pending: int = 0, pending_bytes: int = 0, delivered: int = 0) -> None:
        self.pending += pending
        self.pending_bytes += pending_bytes
        self.delivered += delivered

    # -- refusals ------------------------------------------------------------------------------

    def count_refusal(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        if not _REASON_RE.match(reason):
            raise ValueError("a refusal reason is a short lower-case word")
        self.refusals[reason] = self.refusals.get(reason, 0) + n
        self.unflushed[reason] = self.unflushed.get(reason, 0) + n
        try:
            with self._write():
                pass
        except _DiskFull:
            # Kept in memory and written with the next successful transaction.
            log.warning("vault.refusal_unpersisted", reason=reason)

    def _refuse(self, reason: str, n: int) -> VaultFull:
        self.count_refusal(reason, n)
        log.warning("vault.full", reason=reason, n=n, pending=self.pending)
        why = {
            "vault_full_count": "the vault holds its maximum number of undelivered readings",
            "vault_full_bytes": "the vault holds its maximum bytes of undelivered readings",
            "disk_full": "the disk holding the vault is full",
        }[reason]
        return VaultFull(reason, why + "; nothing was stored")

    # -- readings ------------------------------------------------------------------------------

    def append(
        self,
        readings: Sequence[AnyReading],
        cursor: tuple[str, int, str | None, int] | None = None,
    ) -> AppendResult:
        n = len(readings)
        if n == 0 and cursor is None:
            return AppendResult(0, 0)
        if n and self.pending >= self.config.max_pending:
            raise self._refuse("vault_full_count", n)
        now = self._now()
        # The serializer's bytes are exactly ``model_dump_json().encode()``, without the
        # str round trip.
        rows = [
            (identity_time_us(r), r.id, r.patient, r.kind,
             r.__pydantic_serializer__.to_json(r), now)
            for r in readings
        ]
        try:
            with self._write() as c:
                stored, nbytes = 0, 0
                if rows:
                    cur = c.executemany(
                        "INSERT INTO readings(ident, id, patient, kind, payload, stored_at) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(ident, id) DO NOTHING",
                        rows,
                    )
                    stored = cur.rowcount
                    if stored == n:
                        nbytes = sum(len(r[4]) for r in rows)
                    elif stored:
                        # AUTOINCREMENT and a single writer: the rows just inserted are the
                        # ones with the highest seq.
                        nbytes = c.execute(
                            "SELECT coalesce(sum(length(payload)), 0) FROM (SELECT payload "
                            "FROM readings ORDER BY seq DESC LIMIT ?)",
                            (stored,),
                        ).fetchone()[0]
                    if self.pending + stored > self.config.max_pending:
                        raise _Full("vault_full_count")
                    if self.pending_bytes + nbytes > self.config.max_pending_bytes:
                        raise _Full("vault_full_bytes")
                    if stored:
                        self._bump(pending=stored, pending_bytes=nbytes)
                if cursor is not None:
                    c.execute(
                        "INSERT INTO cursors(address, last_sequence, last_device_time, "
                        "clock_offset_s, updated_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(address) DO UPDATE SET last_sequence = excluded."
                        "last_sequence, last_device_time = excluded.last_device_time, "
                        "clock_offset_s = excluded.clock_offset_s, "
                        "updated_at = excluded.updated_at",
                        (*cursor, now),
                    )
        except _Full as exc:
            raise self._refuse(exc.reason, n) from None
        except _DiskFull:
            raise self._refuse("disk_full", n) from None
        self._apply(pending=stored, pending_bytes=nbytes)
        return AppendResult(stored, n - stored)

    def next_batch(self, limit: int, after_seq: int) -> list[PendingReading]:
        with self._errors():
            rows = self.conn.execute(
                "SELECT seq, id, patient, kind, payload FROM readings "
                "WHERE delivered_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max(0, limit)),
            ).fetchall()
        out = []
        inflight = self.inflight
        for seq, rid, patient, kind, payload in rows:
            payload = bytes(payload)
            inflight[rid] = (seq, len(payload), patient)
            out.append(PendingReading(seq, rid, patient, kind, payload))
        excess = len(inflight) - _INFLIGHT_MAX
        if excess > 0:
            for rid in list(inflight)[:excess]:
                del inflight[rid]
        return out

    def mark_delivered(self, ids: Sequence[str]) -> int:
        now = self._now()
        inflight = self.inflight
        seqs = [inflight[rid][0] for rid in ids if rid in inflight]
        unknown = [rid for rid in ids if rid not in inflight]
        sizes: list[int] = []
        try:
            with self._write() as c:
                if seqs:
                    sizes += [r[0] for r in c.execute(
                        "UPDATE readings SET delivered_at = ? WHERE seq IN (SELECT value FROM "
                        "json_each(?)) AND delivered_at IS NULL RETURNING length(payload)",
                        (now, json.dumps(seqs)),
                    )]
                if unknown:
                    # Not handed out by next_batch in this process: a scan of the pending.
                    sizes += [r[0] for r in c.execute(
                        "UPDATE readings SET delivered_at = ? WHERE id IN (SELECT value FROM "
                        "json_each(?)) AND delivered_at IS NULL RETURNING length(payload)",
                        (now, json.dumps(unknown)),
                    )]
                done, nbytes = len(sizes), sum(sizes)
                if done:
                    self._bump(pending=-done, pending_bytes=-nbytes, delivered=done)
        except _DiskFull as exc:
            raise VaultError("the disk holding the vault is full; delivery not recorded") from exc
        for rid in ids:
            inflight.pop(rid, None)
        self._apply(pending=-done, pending_bytes=-nbytes, delivered=done)
        return done

    def _purge_patient_in_tx(self, c: Any, patient: str) -> tuple[int, int, int]:
        pend, pbytes = c.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM readings "
            "WHERE patient = ? AND delivered_at IS NULL",
            (patient,),
        ).fetchone()
        total = c.execute("DELETE FROM readings WHERE patient = ?", (patient,)).rowcount
        delivered = total - pend
        self._bump(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
        return pend, pbytes, delivered

    def _forget_inflight(self, patient: str) -> None:
        for rid in [rid for rid, (_, _, p) in self.inflight.items() if p == patient]:
            del self.inflight[rid]

    def purge_patient(self, patient: str, actor: str) -> int:
        with self._write() as c:
            pend, pbytes, delivered = self._purge_patient_in_tx(c, patient)
            self._audit_in_tx(actor, "vault.patient_purged", patient)
        self._apply(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
        self._forget_inflight(patient)
        log.info("vault.patient_purged", n=pend + delivered)
        return int(pend + delivered)

    def purge_delivered(self) -> int:
        cutoff = self._now() - self.config.retention_days * 86400.0
        total = 0
        while True:
            # Chunks keep each transaction short: appends wait behind one chunk at most.
            with self._write() as c:
                n = int(c.execute(
                    "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings "
                    "WHERE delivered_at IS NOT NULL AND delivered_at <= ? "
                    "ORDER BY delivered_at LIMIT ?)",
                    (cutoff, _PURGE_CHUNK),
                ).rowcount)
                if n:
                    self._bump(delivered=-n)
            self._apply(delivered=-n)
            total += n
            if n < _PURGE_CHUNK:
                break
        if total:
            self.audit("system:retention", "vault.retention_purged", f"{total} readings")
            self.reclaim()
            log.info("vault.retention_purged", n=total)
        return total

    def reclaim(self) -> None:
        """Give free pages back to the file system."""
        with self._errors():
            self.conn.execute("PRAGMA incremental_vacuum").fetchall()
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def stats(self) -> VaultStats:
        with self._errors():
            row = self.conn.execute(
                "SELECT stored_at FROM readings WHERE delivered_at IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
        age = None if row is None else max(0.0, self._now() - float(row[0]))
        size = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                size += Path(str(self.config.path) + suffix).stat().st_size
        return VaultStats(
            pending=self.pending,
            oldest_pending_age_s=age,
            db_bytes=size,
            pending_bytes=self.pending_bytes,
            delivered_retained=self.delivered,
            refusals=dict(sorted(self.refusals.items())),
        )

    # -- bindings, consent, cursors ------------------------------------------------------------

    def bind_device(self, address: str, kind: str, patient: str, bonded: bool,
                    actor: str) -> None:
        address = address.upper()
        with self._write() as c:
            c.execute(
                "INSERT INTO bindings(address, kind, patient, bonded, bound_at, bound_by) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(address) DO UPDATE SET "
                "kind = excluded.kind, patient = excluded.patient, bonded = excluded.bonded, "
                "bound_at = excluded.bound_at, bound_by = excluded.bound_by",
                (address, kind, patient, int(bonded), self._now(), actor),
            )
            self._audit_in_tx(actor, "device.bound", self.hasher.device_hash(address))

    def unbind_device(self, address: str, actor: str) -> bool:
        address = address.upper()
        with self._write() as c:
            gone = c.execute("DELETE FROM bindings WHERE address = ?", (address,)).rowcount
            c.execute("DELETE FROM cursors WHERE address = ?", (address,))
            if gone:
                self._audit_in_tx(actor, "device.unbound", self.hasher.device_hash(address))
        return bool(gone)

    def bindings(self) -> list[Binding]:
        with self._errors():
            rows = self.conn.execute(
                "SELECT address, kind, patient, bonded, bound_at, bound_by, last_seen "
                "FROM bindings ORDER BY bound_at, address"
            ).fetchall()
        return [
            Binding(a, k, p, bool(b), _dt_req(at), by, _dt(seen))
            for a, k, p, b, at, by, seen in rows
        ]

    def touch_device(self, address: str, seen_at: datetime) -> None:
        with self._write() as c:
            c.execute(
                "UPDATE bindings SET last_seen = ? WHERE address = ?",
                (_ts(seen_at), address.upper()),
            )

    def grant_consent(self, patient: str, scope: str, actor: str) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO consents(patient, scope, granted_at, granted_by) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(patient) DO UPDATE SET scope = excluded.scope,"
                " granted_at = excluded.granted_at, granted_by = excluded.granted_by, "
                "revoked_at = NULL, revoked_by = NULL",
                (patient, scope, self._now(), actor),
            )
            self._audit_in_tx(actor, "consent.granted", patient)

    def revoke_consent(self, patient: str, actor: str) -> int:
        with self._write() as c:
            c.execute(
                "INSERT INTO consents(patient, scope, revoked_at, revoked_by) "
                "VALUES (?, 'vitals', ?, ?) ON CONFLICT(patient) DO UPDATE SET "
                "revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by",
                (patient, self._now(), actor),
            )
            pend, pbytes, delivered = self._purge_patient_in_tx(c, patient)
            self._audit_in_tx(actor, "consent.revoked", patient)
        self._apply(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
        self._forget_inflight(patient)
        return int(pend + delivered)

    def consents(self) -> list[Consent]:
        with self._errors():
            rows = self.conn.execute(
                "SELECT patient, scope, granted_at, granted_by, revoked_at, revoked_by "
                "FROM consents ORDER BY patient"
            ).fetchall()
        return [Consent(p, s, _dt(g), gb, _dt(r), rb) for p, s, g, gb, r, rb in rows]

    def has_consent(self, patient: str) -> bool:
        with self._errors():
            row = self.conn.execute(
                "SELECT 1 FROM consents WHERE patient = ? AND granted_at IS NOT NULL "
                "AND revoked_at IS NULL",
                (patient,),
            ).fetchone()
        return row is not None

    def cursor(self, address: str) -> GlucoseCursor | None:
        with self._errors():
            row = self.conn.execute(
                "SELECT last_sequence, last_device_time, clock_offset_s, updated_at "
                "FROM cursors WHERE address = ?",
                (address.upper(),),
            ).fetchone()
        if row is None:
            return None
        seq, dev_time, offset, updated = row
        return GlucoseCursor(
            int(seq),
            None if dev_time is None else datetime.fromisoformat(dev_time),
            int(offset),
            _dt_req(updated),
        )

    def reset_cursor(self, address: str, actor: str) -> None:
        address = address.upper()
        with self._write() as c:
            c.execute("DELETE FROM cursors WHERE address = ?", (address,))
            self._audit_in_tx(actor, "cursor.reset", self.hasher.device_hash(address))

    # -- audit ---------------------------------------------------------------------------------

    def _audit_in_tx(self, actor: str, action: str, subject: str) -> None:
        _check_text("actor", actor, 128)
        _check_text("action", action, 128)
        _check_text("subject", subject, 256)
        c = self.conn
        row = c.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev_id, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)
        entry_id = prev_id + 1
        at = self.clock.now().astimezone(UTC).isoformat()
        digest = audit_hash(entry_id, at, actor, action, subject, prev)
        c.execute(
            "INSERT INTO audit(id, at, actor, action, subject, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry_id, at, actor, action, subject, prev, digest),
        )

    def audit(self, actor: str, action: str, subject: str) -> None:
        with self._write():
            self._audit_in_tx(actor, action, subject)

    def audit_tail(self, n: int) -> list[AuditEntry]:
        with self._errors():
            rows = self.conn.execute(
                "SELECT id, at, actor, action, subject, prev_hash, hash FROM audit "
                "ORDER BY id DESC LIMIT ?",
                (max(0, n),),
            ).fetchall()
        return [
            AuditEntry(int(i), datetime.fromisoformat(at), a, act, s, p, h)
            for i, at, a, act, s, p, h in reversed(rows)
        ]

    def verify_audit(self) -> int:
        prev_id, prev = 0, GENESIS_HASH
        count = 0
        with self._errors():
            rows = self.conn.execute(
                "SELECT id, at, actor, action, subject, prev_hash, hash FROM audit ORDER BY id"
            )
            for entry_id, at, actor, action, subject, prev_hash, digest in rows:
                if entry_id != prev_id + 1:
                    raise AuditChainBroken(
                        f"audit chain broken at entry {entry_id}: entries "
                        f"{prev_id + 1}..{entry_id - 1} are missing"
                    )
                if prev_hash != prev:
                    raise AuditChainBroken(
                        f"audit chain broken at entry {entry_id}: it does not link to "
                        f"entry {prev_id}"
                    )
                if audit_hash(entry_id, at, actor, action, subject, prev_hash) != digest:
                    raise AuditChainBroken(
                        f"audit chain broken at entry {entry_id}: its contents do not match "
                        "its hash"
                    )
                prev_id, prev = entry_id, digest
                count += 1
        return count

    # -- maintenance -----------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems found by ``cipher_integrity_check`` and ``integrity_check``; empty if none."""
        problems: list[str] = []
        with self._errors():
            if self.driver is sqlcipher3:
                problems += [str(r[0]) for r in self.conn.execute("PRAGMA cipher_integrity_check")]
            rows = [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check")]
        return problems + [r for r in rows if r != "ok"]

    def lock_exclusive(self) -> None:
        """Make sure no other process has the vault open (and none can open it) until
        :meth:`unlock_exclusive` or close."""
        assert self.lock_fd is not None
        if self.exclusive:
            return
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Converting a flock is not atomic: take the shared lock back.
            fcntl.flock(self.lock_fd, fcntl.LOCK_SH)
            raise VaultError(
                "the vault is open in another process (is edge running?); stop it before "
                "changing the key"
            ) from None
        self.exclusive = True

    def unlock_exclusive(self) -> None:
        if self.exclusive and self.lock_fd is not None:
            fcntl.flock(self.lock_fd, fcntl.LOCK_SH)
        self.exclusive = False

    def rekey(self, new_key: bytes, hook: Callable[[str], None] | None) -> None:
        held = self.exclusive
        self.lock_exclusive()
        try:
            self._rekey(new_key, hook)
        finally:
            if not held:
                self.unlock_exclusive()

    def _rekey(self, new_key: bytes, hook: Callable[[str], None] | None) -> None:
        with self._errors():
            # An empty WAL first: the re-keyed pages then all land in the WAL and commit
            # atomically, so a crash leaves a database that opens with exactly one key.
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            if hook:
                hook("rekey_begin")
            self.conn.execute(f"PRAGMA rekey = \"x'{new_key.hex()}'\"")
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if hook:
                hook("rekey_committed")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def backup(self, dest: Path, key: bytes | None) -> None:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise VaultError(f"cannot create the backup file {dest} ({exc.strerror})") from exc
        os.close(fd)
        try:
            target = self.driver.connect(str(dest), isolation_level=None)
            try:
                if key is not None:
                    _apply_key(target, key)
                with self._errors():
                    # One step: a consistent snapshot (this thread is the only writer).
                    self.conn.backup(target, pages=-1)
                    target.execute("PRAGMA journal_mode = DELETE").fetchall()
            finally:
                target.close()
            dest.chmod(0o600)
        except BaseException:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(dest) + suffix).unlink(missing_ok=True)
            raise


def _apply_key(conn: Any, key: bytes) -> None:
    # SQLCipher logs decryption failures to stderr; the caller reports them in one line.
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")


def _decrypts(driver: Any, uri: str, key: bytes) -> bool:
    conn = driver.connect(uri, uri=True, isolation_level=None)
    try:
        _apply_key(conn, key)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return True
    except driver.DatabaseError:
        return False
    finally:
        conn.close()


def _key_opens(driver: Any, path: Path, key: bytes) -> bool:
    """Whether ``key`` opens the vault, without changing a byte of its files.

    A normal connection that fails to decrypt still checkpoints a crashed writer's WAL when it
    closes, so the key is tried on the main file opened immutable (no locks, no WAL, no
    writes). The main file can lag the WAL in one case: a re-key committed to the WAL but not
    yet checkpointed. If the immutable try fails while a WAL exists, the key is tried on a
    private copy of the database and its WAL.
    """
    if path.stat().st_size > 0 and _decrypts(
        driver, f"file:{quote(str(path))}?mode=ro&immutable=1", key
    ):
        return True
    wal = Path(str(path) + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return False
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".keycheck-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        shutil.copyfile(wal, Path(str(copy) + "-wal"))
        return _decrypts(driver, f"file:{quote(str(copy))}?mode=rw", key)


def _lock_for_open(path: Path) -> tuple[int, bool]:
    """The flock on ``<vault>.lock`` held while the vault is open here, and whether this
    process is alone with the vault.

    Every process holds the lock shared from before it opens the vault until after its last
    close (and that close's checkpoint). Getting it exclusively means no other process can be
    writing the files, so the key may be checked without SQLite's locking (:func:`_key_opens`);
    the caller downgrades once open. Otherwise it is taken shared, waiting (bounded) through
    another opener's short exclusive moment or a re-key, which holds it exclusively."""
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


def _prepare_directory(directory: Path) -> None:
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


def _prepare_file(path: Path) -> bool:
    """Create an empty 0600 database file if there is none; True when the vault is new."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        # A new vault's first pages live in its WAL until the first checkpoint.
        wal = Path(str(path) + "-wal")
        return path.stat().st_size == 0 and (not wal.exists() or wal.stat().st_size == 0)
    os.close(fd)
    return True


def _tighten(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        with suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)


# --- the async face ------------------------------------------------------------------------


class Vault:
    """The gateway's encrypted store. Open with :meth:`open`; every method is a coroutine
    that runs on the vault's single writer thread."""

    #: the DB-API module; a benchmark subclass may substitute plain ``sqlite3`` to compare
    _driver: ClassVar[Any] = sqlcipher3

    def __init__(
        self, engine: _Engine, executor: ThreadPoolExecutor, config: VaultConfig, key: bytes
    ) -> None:
        self._engine = engine
        self._key = key
        self._executor = executor
        self._config = config
        self._closed = False

    @classmethod
    async def open(
        cls, config: VaultConfig, key: bytes, *, clock: Clock | None = None
    ) -> Vault:
        """Open (creating if absent) the vault at ``config.path`` with a raw 32-byte key.

        A wrong key raises KeyUnavailable and leaves the files untouched."""
        if cls._driver is sqlcipher3 and len(key) != 32:
            raise KeyUnavailable(f"{config.key_provider} provider: a vault key is 32 bytes")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-writer")
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(
                executor,
                functools.partial(
                    _Engine.open,
                    config,
                    key if cls._driver is sqlcipher3 else None,
                    clock or SystemClock(),
                    cls._driver,
                    config.key_provider,
                ),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        log.info("vault.opened", schema_version=engine.schema_version, pending=engine.pending)
        return cls(engine, executor, config, key)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise VaultError("the vault is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def close(self) -> None:
        """Close the connection (the WAL is checkpointed) and stop the writer thread."""
        if self._closed:
            return
        try:
            await self._call(self._engine.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Vault:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def config(self) -> VaultConfig:
        return self._config

    @property
    def schema_version(self) -> int:
        return self._engine.schema_version

    @property
    def log_hash_key(self) -> bytes:
        """A stable key for device hashes in logs and audit (``REDACTOR.set_hash_key``)."""
        return self._engine.hash_key

    def device_hash(self, address: str) -> str:
        """How the audit log names a device (``dev-1a2b3c4d``)."""
        return self._engine.hasher.device_hash(address)

    # -- readings ------------------------------------------------------------------------------

    async def append(self, readings: Sequence[AnyReading]) -> AppendResult:
        """Store readings in one transaction; same id again is a no-op. Raises VaultFull
        (reason ``vault_full_count`` | ``vault_full_bytes`` | ``disk_full``) after counting
        the refusal; then nothing of the batch was stored."""
        return await self._call(self._engine.append, list(readings))

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> list[PendingReading]:
        """Up to ``limit`` undelivered readings with ``seq > after_seq``, oldest first."""
        return await self._call(self._engine.next_batch, limit, after_seq)

    async def mark_delivered(self, ids: Sequence[str]) -> int:
        """Mark readings acknowledged by the backend; returns how many were pending."""
        return await self._call(self._engine.mark_delivered, list(ids))

    async def purge_patient(self, patient: str, *, actor: str) -> int:
        """Delete every reading of ``patient`` (pending and delivered); audited."""
        return await self._call(self._engine.purge_patient, patient, actor)

    async def purge_delivered(self) -> int:
        """Retention: delete readings delivered more than ``retention_days`` ago and give the
        space back (incremental vacuum)."""
        return await self._call(self._engine.purge_delivered)

    async def count_refusal(self, reason: str, n: int = 1) -> None:
        """Count ``n`` intake refusals with ``reason`` (persisted, shown in stats)."""
        await self._call(self._engine.count_refusal, reason, n)

    async def stats(self) -> VaultStats:
        """Queue depth, oldest pending age, sizes and refusal counts."""
        return await self._call(self._engine.stats)

    # -- bindings, consent, cursors --------------------------------------------------------------

    async def bind_device(self, address: str, kind: str, patient: str, *, bonded: bool,
                          actor: str) -> None:
        """Add or replace a device on the allow-list; audited."""
        await self._call(self._engine.bind_device, address, kind, patient, bonded, actor)

    async def unbind_device(self, address: str, *, actor: str) -> bool:
        """Remove a device (and its sync cursor); audited. False if it was not bound."""
        return await self._call(self._engine.unbind_device, address, actor)

    async def bindings(self) -> list[Binding]:
        """The allow-list."""
        return await self._call(self._engine.bindings)

    async def touch_device(self, address: str, seen_at: datetime) -> None:
        """Record when a bound device was last seen."""
        await self._call(self._engine.touch_device, address, seen_at)

    async def grant_consent(self, patient: str, *, scope: str = "vitals", actor: str) -> None:
        """Grant (or re-grant) consent; audited."""
        await self._call(self._engine.grant_consent, patient, scope, actor)

    async def revoke_consent(self, patient: str, *, actor: str) -> int:
        """Revoke consent, purge the patient's readings and audit, in one transaction;
        returns how many readings were purged."""
        return await self._call(self._engine.revoke_consent, patient, actor)

    async def consents(self) -> list[Consent]:
        """Every consent record, active or revoked."""
        return await self._call(self._engine.consents)

    async def has_consent(self, patient: str) -> bool:
        """Whether ``patient`` has active consent."""
        return await self._call(self._engine.has_consent, patient)

    async def cursor(self, address: str) -> GlucoseCursor | None:
        """A glucose meter's sync cursor, None before its first sync."""
        return await self._call(self._engine.cursor, address)

    async def commit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> AppendResult:
        """Glucose records and the meter's cursor in ONE transaction: after a crash the meter
        is re-read from the cursor, never skipped. VaultFull commits neither."""
        cursor = (
            address.upper(),
            int(last_sequence),
            None if last_device_time is None else last_device_time.isoformat(),
            int(clock_offset_s),
        )
        return await self._call(self._engine.append, list(readings), cursor)

    async def reset_cursor(self, address: str, *, actor: str) -> None:
        """Forget a meter's cursor (its records are fetched again); audited."""
        await self._call(self._engine.reset_cursor, address, actor)

    # -- audit -----------------------------------------------------------------------------------

    async def audit(self, actor: str, action: str, subject: str = "") -> None:
        """Append to the hash-chained audit log. ``subject`` is a pseudonym or device hash,
        never a reading value."""
        await self._call(self._engine.audit, actor, action, subject)

    async def audit_tail(self, n: int = 20) -> list[AuditEntry]:
        """The last ``n`` audit entries, oldest first."""
        return await self._call(self._engine.audit_tail, n)

    async def verify_audit(self) -> int:
        """Check the whole chain; returns the number of entries, or raises AuditChainBroken
        naming the first broken entry."""
        return await self._call(self._engine.verify_audit)

    # -- maintenance -----------------------------------------------------------------------------

    async def integrity_check(self) -> list[str]:
        """``PRAGMA cipher_integrity_check`` and ``integrity_check``; empty when healthy."""
        return await self._call(self._engine.integrity_check)

    async def reclaim(self) -> None:
        """Incremental vacuum and a WAL checkpoint: free pages go back to the file system."""
        await self._call(self._engine.reclaim)

    async def backup(self, dest: Path) -> None:
        """An encrypted, consistent copy at ``dest`` (0600, same key); refuses to overwrite."""
        await self._call(self._engine.backup, dest, self._key_for_backup())

    def _key_for_backup(self) -> bytes | None:
        return self._key if self._driver is sqlcipher3 else None

    async def lock_exclusive(self) -> None:
        """Hold the vault exclusively (VaultError if another process has it open) until
        close: for changing the key."""
        await self._call(self._engine.lock_exclusive)

    async def rekey(self, new_key: bytes, *, hook: Callable[[str], None] | None = None) -> None:
        """Re-encrypt the database with ``new_key`` (PRAGMA rekey); atomic. Use
        :func:`edge.vault.rotation.rotate_key`, which also keeps the key files safe."""
        if len(new_key) != 32:
            raise KeyUnavailable("a vault key is 32 bytes")
        await self._call(self._engine.rekey, new_key, hook)
        self._key = new_key
