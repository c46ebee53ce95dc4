"""``edge vault salvage OUT``: copy every readable row of a damaged vault into a new one.

Table by table, in one read snapshot of the damaged vault; where a table cannot be read in
one go, row by row: a row whose contents sit on a damaged page is skipped and named (its
row id), and a damaged page of the table's b-tree is stepped over by seeking past it (the row
ids it held are named as a range). Indexes are rebuilt by the new vault, so damage in them
loses nothing. The new vault has the current schema, is keyed with the current key, its
counters are recomputed from what was copied, and the salvage is audited in its (copied)
hash chain. The damaged files are never written.

Reports name tables, row ids and counts only, never a row's contents.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.clock import Clock, SystemClock
from edge.config import VaultConfig
from edge.errors import KeyUnavailable, VaultCorrupt, VaultError
from edge.log import get_logger
from edge.vault import audit, cipher, files, schema
from edge.vault.cipher import Connection, Driver
from edge.vault.engine import Engine

log = get_logger("edge.vault")

#: a row as read (row id first); the driver's values are untyped
Row = tuple[Any, ...]

#: tables copied, in this order (``schema_version`` and ``counters`` are the new vault's own;
#: the counters are recomputed from the copied readings)
TABLES = ("meta", "refusals", "bindings", "consents", "cursors", "readings", "audit")
#: rows read per query while a table reads cleanly
_CHUNK = 2000
#: the largest row id SQLite allows
_MAX_ROWID = 2**63 - 1


@dataclass(frozen=True)
class Lost:
    """Rows that could not be read: row ids ``first``..``last`` (None: to the table's end)."""

    first: int
    last: int | None


@dataclass
class TableSalvage:
    """What happened to one table."""

    table: str
    copied: int = 0
    lost: list[Lost] = field(default_factory=list)

    def line(self) -> str:
        if not self.lost:
            return f"{self.table}: {self.copied} row(s) copied"
        ranges = ", ".join(_range(x) for x in self.lost[:6])
        more = ", …" if len(self.lost) > 6 else ""
        return (f"{self.table}: {self.copied} row(s) copied; COULD NOT READ row id(s) "
                f"{ranges}{more}")


@dataclass(frozen=True)
class SalvageReport:
    """The salvage's outcome, for the operator."""

    out: Path
    tables: tuple[TableSalvage, ...]

    @property
    def complete(self) -> bool:
        return all(not t.lost for t in self.tables)

    def lines(self) -> list[str]:
        return [t.line() for t in self.tables]

    def summary(self) -> str:
        """A short line for the audit log (no contents)."""
        copied = sum(t.copied for t in self.tables)
        lost = [t.table for t in self.tables if t.lost]
        tail = f"; unreadable rows in {', '.join(lost)}" if lost else "; nothing unreadable"
        return f"{copied} rows copied{tail}"[:256]


def _range(lost: Lost) -> str:
    if lost.last is None:
        return f"{lost.first} to the end"
    return str(lost.first) if lost.first == lost.last else f"{lost.first}–{lost.last}"


# --- reading what can be read --------------------------------------------------------------------


class Source:
    """Read-only connection to the damaged vault. SQLCipher leaves a connection failing
    every read after a page fails its HMAC check, so each failed read reopens it."""

    def __init__(self, driver: Driver, path: Path, key: bytes | None) -> None:
        self.driver = driver
        self._path = path
        self._key = key
        self.conn = self._open()

    def _open(self) -> Connection:
        conn = self.driver.connect(cipher.file_uri(self._path, "mode=ro"), uri=True,
                                   isolation_level=None)
        try:
            if self._key is not None:
                cipher.apply_key(conn, self._key)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> list[Row] | None:
        """The rows ``sql`` selects; None (and a fresh connection) when they cannot be read."""
        try:
            return [tuple(r) for r in self.conn.execute(sql, args).fetchall()]
        except self.driver.DatabaseError:
            self.conn.close()
            self.conn = self._open()
            return None

    def close(self) -> None:
        self.conn.close()


class _Reader:
    """Row-by-row reads of one table that step over what cannot be read."""

    def __init__(self, source: Source, table: str, columns: list[str]) -> None:
        self._source = source
        cols, name = ", ".join(_quote(c) for c in columns), _quote(table)
        # identifiers from the schema, quoted; values are bound
        self._rows = (f"SELECT rowid, {cols} FROM {name} WHERE rowid > ? "  # noqa: S608
                      "ORDER BY rowid LIMIT ?")
        self._ids = f"SELECT rowid FROM {name} WHERE rowid > ? ORDER BY rowid LIMIT 1"  # noqa: S608

    def _try(self, sql: str, args: tuple[int, ...]) -> list[Row] | None:
        return self._source.rows(sql, args)

    def _seeks(self, after: int) -> bool:
        return self._try(self._ids, (after,)) is not None

    def _skip(self, after: int) -> int | None:
        """The smallest bound past ``after`` from which the table reads again (a damaged
        page's row ids lie in between); None when nothing after it can be read."""
        step = 1
        while not self._seeks(after + step):
            if after + step >= _MAX_ROWID:
                return None
            step = min(step * 2, _MAX_ROWID - after)
        bad, good = after + step // 2, after + step
        if step == 1:
            return good
        while good - bad > 1:
            mid = (bad + good) // 2
            if self._seeks(mid):
                good = mid
            else:
                bad = mid
        return good

    def rows(self) -> Iterator[Row | Lost]:
        """Every readable row (row id first), and a :class:`Lost` for each unreadable run."""
        after = 0  # edge's row ids start at 1
        while True:
            chunk = self._try(self._rows, (after, _CHUNK))
            if chunk is not None:
                yield from chunk
                if len(chunk) < _CHUNK:
                    return
                after = int(chunk[-1][0])
                continue
            one = self._try(self._rows, (after, 1))
            if one:
                yield one[0]
                after = int(one[0][0])
                continue
            ids = self._try(self._ids, (after,))
            if ids == []:
                return
            if ids:  # its row id reads, its contents (an overflow page) do not
                rowid = int(ids[0][0])
                yield Lost(rowid, rowid)
                after = rowid
                continue
            bound = self._skip(after)
            if bound is None:
                yield Lost(after + 1, None)
                return
            yield Lost(after + 1, bound)
            after = bound


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# --- the salvage ---------------------------------------------------------------------------------


def _open_source(driver: Driver, path: Path, key: bytes | None) -> Source:
    try:
        return Source(driver, path, key)
    except driver.DatabaseError as exc:
        code = int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code == cipher.SQLITE_NOTADB:
            raise KeyUnavailable(f"the vault key does not open {path}") from exc
        raise VaultCorrupt(
            f"the vault's schema (page 1) cannot be read ({type(exc).__name__}): nothing can "
            "be salvaged by rows — restore a backup"
        ) from exc


def _copy(src: Source, db: Engine, table: str) -> TableSalvage:
    out = TableSalvage(table)
    quoted = _quote(table)
    theirs = [str(r[1]) for r in src.rows(f"PRAGMA table_info({quoted})") or []]
    ours = [str(r[1]) for r in db.conn.execute(f"PRAGMA table_info({quoted})")]
    columns = [c for c in theirs if c in ours]
    if not columns:
        return out
    names = ", ".join(_quote(c) for c in columns)
    marks = ", ".join("?" * len(columns))
    insert = f"INSERT OR REPLACE INTO {_quote(table)}({names}) VALUES ({marks})"  # noqa: S608
    batch: list[Row] = []

    def flush() -> None:
        with db.write(durable=False) as c:
            c.executemany(insert, batch)
        out.copied += len(batch)
        batch.clear()

    for row in _Reader(src, table, columns).rows():
        if isinstance(row, Lost):
            out.lost.append(row)
            continue
        batch.append(row[1:])
        if len(batch) >= _CHUNK:
            flush()
    if batch:
        flush()
    return out


def _recount(c: Connection) -> None:
    """The persisted counters from the copied readings."""
    pending, pending_bytes, delivered = c.execute(
        "SELECT coalesce(sum(delivered_at IS NULL), 0), "
        "coalesce(sum(CASE WHEN delivered_at IS NULL THEN length(payload) END), 0), "
        "coalesce(sum(delivered_at IS NOT NULL), 0) FROM readings"
    ).fetchone()
    for name, value in (("pending", pending), ("pending_bytes", pending_bytes),
                        ("delivered", delivered)):
        c.execute("UPDATE counters SET value = ? WHERE name = ?", (int(value), name))


def salvage(
    config: VaultConfig, source_key: bytes | None, out: Path, *, out_key: bytes | None,
    actor: str, driver: Driver, clock: Clock | None = None,
) -> SalvageReport:
    """Copy every readable row of the vault at ``config.path`` (opened with ``source_key``)
    into a new vault at ``out`` (keyed with ``out_key``); audited in the new vault. Refuses
    an ``out`` that exists. On any failure nothing is left at ``out``."""
    source = config.path
    if not source.exists():
        raise VaultError(f"vault.path: no vault at {source} — nothing to salvage")
    if os.path.lexists(out) or Path(str(out) + "-wal").exists():
        raise VaultError(f"{out}: exists — choose a new file name")
    if out.resolve() == source.resolve():
        raise VaultError(f"{out}: that is the vault itself — choose a new file name")
    lock_fd, alone = files.lock_for_open(source)
    try:
        if alone:
            files.downgrade(lock_fd)
        src = _open_source(driver, source, source_key)
        try:
            version = schema.current_version(src.conn)
            if version > schema.CURRENT_VERSION:
                raise VaultError(
                    f"the vault's schema v{version} is newer than this edge supports; upgrade "
                    "edge before salvaging")
            report = _into_new_vault(config, src, out, out_key, actor, driver,
                                     clock or SystemClock())
        finally:
            src.close()
    finally:
        os.close(lock_fd)
    log.warning("vault.salvaged", complete=report.complete,
                tables_with_losses=sum(1 for t in report.tables if t.lost))
    return report


def _into_new_vault(config: VaultConfig, src: Source, out: Path, key: bytes | None,
                    actor: str, driver: Driver, clock: Clock) -> SalvageReport:
    target = config.model_copy(update={"path": out, "flush_interval_s": 0.0})
    db = Engine.open(target, key, clock, driver, config.key_provider)
    try:
        try:
            tables = tuple(_copy(src, db, t) for t in TABLES)
            report = SalvageReport(out, tables)
            with db.write() as c:
                _recount(c)
                audit.record(db, actor, "vault.salvaged", report.summary())
        finally:
            db.close()
    except BaseException:
        files.remove_database(out)
        Path(str(out) + ".lock").unlink(missing_ok=True)
        raise
    Path(str(out) + ".lock").unlink(missing_ok=True)
    return report
