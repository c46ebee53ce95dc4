"""Staging: readings accepted into the side log and held in memory until they are merged into
the database in one transaction, with the delivered marks, last-seen times and refusal counts
gathered meanwhile.

Why: one SQLCipher commit per reading writes several 4 KiB pages (twice, with the checkpoint)
and an fsync; the side log writes ~150 bytes per reading and fsyncs once per
``flush_interval_s``; a merge every ``merge_interval_s`` writes each database page once for
many readings, and a reading acknowledged before its merge is stored already delivered, its
payload dropped. Everything here runs on the vault's writer thread; the SQL a merge runs is
:mod:`edge.vault.merge`.

Durability: an append returns once its record is in the side log (the page cache): a process
crash loses nothing. The log is fsynced every ``flush_interval_s`` and emptied only after a
durable merge, so a power cut loses at most the appends of the last interval. Delivered marks
and last-seen times live in memory until the merge: a crash loses some, and the readings are
sent again (at-least-once).
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from edge.errors import VaultError
from edge.log import get_logger
from edge.readings import reading_from_json
from edge.vault.cipher import Connection
from edge.vault.engine import DiskFull, Engine
from edge.vault.merge import Staged, insert_staged, top_seq, watermarks, write_marks
from edge.vault.models import AnyReading, AppendResult, PendingReading, identity_time_us
from edge.vault.sidelog import Entry, SideLog

log = get_logger("edge.vault")

T = TypeVar("T")

#: disk kept free per staged reading, so that its merge (table, indexes, WAL, checkpoint)
#: fits: the log holds a reading in ~150 bytes, the database needs several times that
_MERGE_ROOM = 2048
_MERGE_ROOM_MIN = 256 * 1024
#: a free-space figure that showed at least twice the room needed is trusted this long (real
#: seconds) for needs up to half of it: one statvfs a second, not one per append. A short one
#: is always checked again (space returning is seen at once); a disk filled by someone else
#: meanwhile is still caught by the write's ENOSPC.
_ROOM_TRUST_S = 1.0

#: readings of a batch already in the database (delivered ones too), by their unique key
_EXISTING = ("SELECT r.id FROM json_each(?) AS j JOIN readings AS r "
             "ON r.ident = json_extract(j.value, '$[0]') AND r.id = json_extract(j.value, '$[1]')")


class Staging:
    """The side log and what it holds in memory; owned by the engine (``Engine.staging``)."""

    def __init__(self, sidelog: SideLog, next_seq: int, now: float) -> None:
        self.log = sidelog
        self.rows: list[Staged] = []
        self.seqs: list[int] = []
        self.by_id: dict[str, Staged] = {}
        #: database rows acknowledged, not yet marked there: seq -> payload bytes
        self.marks: dict[int, int] = {}
        self.mark_seqs: list[int] = []
        #: bindings' last-seen times, not yet written
        self.touches: dict[str, float] = {}
        self.next_seq = next_seq
        #: when the last merge ran (the engine clock's monotonic seconds)
        self.merged_at = now
        #: the last merge found the disk full: appends are refused until one succeeds
        self.blocked = False
        #: no reading in the database has an identity time above this (it may be higher than
        #: the true maximum, never lower): a newer reading needs no duplicate lookup there.
        #: Refreshed at every merge (other processes may have written meanwhile).
        self.db_max_ident = _MAX_IDENT
        #: no undelivered reading in the database has a seq above this (refreshed at every
        #: merge; between merges only staged readings become pending): ``next_batch`` after
        #: it needs no query
        self.db_pending_top = _MAX_SEQ
        #: the free-space check: where, and up to what need a recent statvfs covers
        self._room_dir: str | None = None
        self._room_ok_until = 0
        self._room_checked_at = 0.0

    def held(self) -> int:
        """Readings and marks waiting for the merge."""
        return len(self.rows) + len(self.marks)

    # -- appending -----------------------------------------------------------------------------

    def append(self, db: Engine, readings: Sequence[AnyReading]) -> AppendResult:
        """Log the new readings with one write; the dedup and bounds of a direct append."""
        n = len(readings)
        if self.blocked:
            try:
                self.merge(db)
            except DiskFull:
                raise db.refuse("disk_full", n) from None
        seen: set[str] = set()
        cand: list[tuple[AnyReading, int]] = []
        older: list[AnyReading] = []
        top = self.db_max_ident
        for r in readings:
            if r.id not in self.by_id and r.id not in seen:
                seen.add(r.id)
                ident = identity_time_us(r)
                cand.append((r, ident))
                if ident <= top:
                    older.append(r)
        # Only a reading no newer than the database's newest can be there already.
        known = _in_database(db, older) if older else set()
        fresh = [(r, i) for r, i in cand if r.id not in known] if known else cand
        payloads = tuple(r.__pydantic_serializer__.to_json(r) for r, _ in fresh)
        nbytes = sum(len(p) for p in payloads)
        if db.pending + len(fresh) > db.config.max_pending:
            raise db.refuse("vault_full_count", n)
        if db.pending_bytes + nbytes > db.config.max_pending_bytes:
            raise db.refuse("vault_full_bytes", n)
        if fresh and not self._room(db, len(fresh)):
            raise db.refuse("disk_full", n)
        if fresh:
            now = db.now()
            try:
                self.log.write(Entry(self.next_seq, now, payloads))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise db.refuse("disk_full", n) from None
                raise VaultError(f"the side log could not be written ({exc.strerror})") from exc
            for (r, ident), p in zip(fresh, payloads, strict=True):
                self._stage(Staged(self.next_seq, ident, r.id, r.patient, r.kind, p, now,
                                   held=r.clock_hold is not None))
            db.apply(pending=len(fresh), pending_bytes=nbytes)
        self.merge_if_full(db)
        return AppendResult(len(fresh), n - len(fresh))

    def _room(self, db: Engine, n: int) -> bool:
        """Whether the disk can take ``n`` more readings AND merge everything staged."""
        need = (len(self.rows) + n) * _MERGE_ROOM + _MERGE_ROOM_MIN
        now = time.monotonic()
        if need <= self._room_ok_until and now - self._room_checked_at < _ROOM_TRUST_S:
            return True
        if self._room_dir is None:
            self._room_dir = str(db.config.path.parent)
        try:
            st = os.statvfs(self._room_dir)
        except OSError:
            return True
        free = st.f_bavail * st.f_frsize
        self._room_ok_until, self._room_checked_at = free // 2, now
        return free >= need

    def _stage(self, row: Staged) -> None:
        self.rows.append(row)
        self.seqs.append(row.seq)
        self.by_id[row.id] = row
        self.next_seq = row.seq + 1

    def load(self, db: Engine, entries: Sequence[Entry]) -> int:
        """Stage what a replayed log holds (numbered anew: the merge skips what is already in
        the database); how many readings."""
        n = 0
        for e in entries:
            for payload in e.payloads:
                reading = reading_from_json(payload)
                if reading.id in self.by_id:
                    continue
                self._stage(Staged(self.next_seq, identity_time_us(reading), reading.id,
                                   reading.patient, reading.kind, payload, e.stored_at,
                                   held=reading.clock_hold is not None))
                n += 1
        return n

    # -- reading -------------------------------------------------------------------------------

    def next_batch(self, db: Engine, limit: int, after_seq: int) -> list[PendingReading]:
        """Database rows not acknowledged, then staged rows; oldest first."""
        limit = max(0, limit)
        out: list[PendingReading] = []
        if after_seq < self.db_pending_top:
            skip = len(self.mark_seqs) - bisect.bisect_right(self.mark_seqs, after_seq)
            with db.errors():
                rows = db.conn.execute(
                    "SELECT seq, id, patient, kind, payload FROM readings "
                    "WHERE delivered_at IS NULL AND held = 0 AND seq > ? ORDER BY seq LIMIT ?",
                    (after_seq, limit + skip),
                ).fetchall()
            out = [PendingReading(seq, rid, patient, kind, bytes(payload))
                   for seq, rid, patient, kind, payload in rows
                   if seq not in self.marks][:limit]
        i = bisect.bisect_right(self.seqs, after_seq)
        while len(out) < limit and i < len(self.rows):
            s = self.rows[i]
            if s.delivered_at is None and not s.held:
                out.append(PendingReading(s.seq, s.id, s.patient, s.kind, s.payload))
            i += 1
        return out

    def oldest_pending(self, db: Engine) -> float | None:
        """``stored_at`` of the oldest reading not acknowledged."""
        rows = []
        if self.db_pending_top > 0:
            with db.errors():
                rows = db.conn.execute(
                    "SELECT seq, stored_at FROM readings WHERE delivered_at IS NULL "
                    "ORDER BY seq LIMIT ?",
                    (len(self.marks) + 1,),
                ).fetchall()
        for seq, at in rows:
            if seq not in self.marks:
                return float(at)
        return next((s.stored_at for s in self.rows if s.delivered_at is None), None)

    # -- acknowledging ---------------------------------------------------------------------------

    def mark_delivered(self, db: Engine, ids: Sequence[str]) -> int:
        """Acknowledge readings in memory (written with the next merge); how many were
        pending."""
        now = db.now()
        done = nbytes = 0
        unknown = []
        for rid in ids:
            hit = db.inflight.pop(rid, None)
            row = self.by_id.get(rid)
            if row is not None:
                if row.delivered_at is None:
                    row.delivered_at = now
                    done, nbytes = done + 1, nbytes + len(row.payload)
            elif hit is not None:
                done, nbytes = done + self._mark(hit[0], hit[1]), nbytes + hit[1]
            else:
                unknown.append(rid)
        if unknown:
            # Not handed out by next_batch in this process: a scan of the pending.
            with db.errors():
                found = db.conn.execute(
                    "SELECT seq, length(payload) FROM readings WHERE id IN (SELECT value FROM "
                    "json_each(?)) AND delivered_at IS NULL",
                    (json.dumps(unknown),),
                ).fetchall()
            for seq, size in found:
                if self._mark(seq, size):
                    done, nbytes = done + 1, nbytes + size
        db.apply(pending=-done, pending_bytes=-nbytes, delivered=done)
        self.merge_if_full(db)
        return done

    def _mark(self, seq: int, size: int) -> int:
        if seq in self.marks:
            return 0
        self.marks[seq] = size
        bisect.insort(self.mark_seqs, seq)
        return 1

    # -- merging -----------------------------------------------------------------------------

    def merge_if_full(self, db: Engine) -> None:
        """Merge now if memory holds ``merge_max_readings``; a failure is logged, not raised
        (what the log holds stays safe; the flusher tries again)."""
        if self.held() >= db.config.merge_max_readings:
            self.try_merge(db)

    def try_merge(self, db: Engine) -> None:
        try:
            self.merge(db)
        except DiskFull:
            log.warning("vault.merge_disk_full", held=self.held())
        except VaultError as exc:
            log.warning("vault.merge_failed", error=type(exc).__name__, held=self.held())

    def tick(self, db: Engine) -> None:
        """What the flusher does every ``flush_interval_s``: fsync the log; merge when due."""
        self.log.sync()
        due = db.clock.monotonic() - self.merged_at >= db.config.merge_interval_s
        if self.blocked or (due and (self.held() or self.touches or db.unflushed)):
            self.try_merge(db)

    def merge(self, db: Engine) -> None:
        """Everything held, into the database in ONE durable transaction; then the log is
        emptied."""
        self.merge_with(db, None)

    def merge_with(self, db: Engine, extra: Callable[[Connection], T] | None) -> T | None:
        """:meth:`merge`, running ``extra`` in the same transaction (a glucose commit)."""
        now = db.now()
        got: T | None = None
        try:
            with db.write() as c:
                top = top_seq(c)
                explicit = not self.rows or self.rows[0].seq > top
                moved = insert_staged(db, c, self.rows, self.seqs, explicit=explicit)
                if self.marks:
                    write_marks(db, c, now, self.marks, self.mark_seqs)
                for address, seen in self.touches.items():
                    c.execute("UPDATE bindings SET last_seen = ? WHERE address = ?",
                              (seen, address))
                if extra is not None:
                    got = extra(c)
                top = top_seq(c)
                max_ident, pending_top = watermarks(c)
        except DiskFull:
            self.blocked = True
            raise
        for seq, rid in moved:
            if rid in db.inflight:
                _, size, patient = db.inflight[rid]
                db.inflight[rid] = (seq, size, patient)
        self.rows, self.seqs, self.by_id = [], [], {}
        self.marks, self.mark_seqs, self.touches = {}, [], {}
        self.next_seq = max(self.next_seq, top + 1)
        self.db_max_ident, self.db_pending_top = max_ident, pending_top
        self.blocked = False
        self.merged_at = db.clock.monotonic()
        db.reload_counters()
        try:
            # Only now: until the merge is durable, the log is what keeps these readings.
            self.log.reset()
        except OSError as exc:
            # Merged, so nothing is lost; the next owner replays (and skips) what is left.
            db.staging = None
            self.log.close()
            raise VaultError(f"the side log could not be emptied ({exc.strerror})") from exc
        return got

    def after_direct_write(self, db: Engine) -> None:
        """Readings were written to the database past staging (held readings released):
        number from above them, and refresh the watermarks."""
        with db.errors():
            top = top_seq(db.conn)
            self.db_max_ident, self.db_pending_top = watermarks(db.conn)
        self.next_seq = max(self.next_seq, top + 1)


#: "unknown": every lookup and query is made
_MAX_IDENT = 2**63 - 1
_MAX_SEQ = 2**63 - 1


def _in_database(db: Engine, readings: Sequence[AnyReading]) -> set[str]:
    keys = json.dumps([[identity_time_us(r), r.id] for r in readings])
    with db.errors():
        return {rid for (rid,) in db.conn.execute(_EXISTING, (keys,))}
