"""The outbox: readings appended durably, handed out oldest first, marked delivered, purged.

Undelivered readings are never evicted: when a bound is reached new readings are refused with
a counted reason. A reading is durable when :func:`append` returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from edge.errors import VaultError
from edge.log import get_logger
from edge.vault import audit, maintenance
from edge.vault.cipher import Connection
from edge.vault.engine import DiskFull, Engine, Full
from edge.vault.models import (
    AnyReading,
    AppendResult,
    CursorRow,
    PendingReading,
    VaultStats,
    identity_time_us,
)

log = get_logger("edge.vault")

#: the refusal reason of readings the consent gate turned away at the store
NO_CONSENT = "no_consent"
#: ids handed out by next_batch, remembered so mark_delivered updates by seq
_INFLIGHT_MAX = 1 << 18
_PURGE_CHUNK = 5000


def append(
    db: Engine, readings: Sequence[AnyReading], cursor: CursorRow | None = None,
    *, no_consent: int = 0,
) -> AppendResult:
    """Store readings (and a glucose meter's cursor) in one transaction; same id again is a
    no-op. ``no_consent`` readings were dropped by the consent gate and are counted with it."""
    db.note_refusal(NO_CONSENT, no_consent)
    n = len(readings)
    if n == 0 and cursor is None:
        if no_consent:
            db.flush_refusals(NO_CONSENT)
        return AppendResult(0, 0)
    if n and db.pending >= db.config.max_pending:
        raise db.refuse("vault_full_count", n)
    now = db.now()
    # The serializer's bytes are exactly ``model_dump_json().encode()``, without the
    # str round trip.
    rows = [
        (identity_time_us(r), r.id, r.patient, r.kind,
         r.__pydantic_serializer__.to_json(r), now)
        for r in readings
    ]
    try:
        with db.write() as c:
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
                if db.pending + stored > db.config.max_pending:
                    raise Full("vault_full_count")
                if db.pending_bytes + nbytes > db.config.max_pending_bytes:
                    raise Full("vault_full_bytes")
                if stored:
                    db.bump(pending=stored, pending_bytes=nbytes)
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
    except Full as exc:
        raise db.refuse(exc.reason, n) from None
    except DiskFull:
        raise db.refuse("disk_full", n) from None
    db.apply(pending=stored, pending_bytes=nbytes)
    return AppendResult(stored, n - stored)


def next_batch(db: Engine, limit: int, *, after_seq: int = 0) -> list[PendingReading]:
    """Up to ``limit`` undelivered readings with ``seq > after_seq``, oldest first."""
    with db.errors():
        rows = db.conn.execute(
            "SELECT seq, id, patient, kind, payload FROM readings "
            "WHERE delivered_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, max(0, limit)),
        ).fetchall()
    out = []
    inflight = db.inflight
    for seq, rid, patient, kind, payload in rows:
        payload = bytes(payload)
        inflight[rid] = (seq, len(payload), patient)
        out.append(PendingReading(seq, rid, patient, kind, payload))
    excess = len(inflight) - _INFLIGHT_MAX
    if excess > 0:
        for rid in list(inflight)[:excess]:
            del inflight[rid]
    return out


def mark_delivered(db: Engine, ids: Sequence[str]) -> int:
    """Mark readings acknowledged by the backend; returns how many were pending."""
    now = db.now()
    inflight = db.inflight
    seqs = [inflight[rid][0] for rid in ids if rid in inflight]
    unknown = [rid for rid in ids if rid not in inflight]
    sizes: list[int] = []
    try:
        with db.write() as c:
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
                db.bump(pending=-done, pending_bytes=-nbytes, delivered=done)
    except DiskFull as exc:
        raise VaultError("the disk holding the vault is full; delivery not recorded") from exc
    for rid in ids:
        inflight.pop(rid, None)
    db.apply(pending=-done, pending_bytes=-nbytes, delivered=done)
    return done


def purge_patient_in_tx(db: Engine, c: Connection, patient: str) -> tuple[int, int, int]:
    """Delete every reading of ``patient`` inside the caller's transaction; returns
    ``(pending, pending bytes, delivered)`` removed, for :meth:`Engine.apply` after commit."""
    pend, pbytes = c.execute(
        "SELECT count(*), coalesce(sum(length(payload)), 0) FROM readings "
        "WHERE patient = ? AND delivered_at IS NULL",
        (patient,),
    ).fetchone()
    total = c.execute("DELETE FROM readings WHERE patient = ?", (patient,)).rowcount
    delivered = total - pend
    db.bump(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
    return pend, pbytes, delivered


def forget_inflight(db: Engine, patient: str) -> None:
    """Drop a purged patient's readings from the handed-out index."""
    for rid in [rid for rid, (_, _, p) in db.inflight.items() if p == patient]:
        del db.inflight[rid]


def purge_patient(db: Engine, patient: str, *, actor: str) -> int:
    """Delete every reading of ``patient`` (pending and delivered); audited."""
    with db.write() as c:
        pend, pbytes, delivered = purge_patient_in_tx(db, c, patient)
        audit.record(db, actor, "vault.patient_purged", patient)
    db.apply(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
    forget_inflight(db, patient)
    log.info("vault.patient_purged", n=pend + delivered)
    return int(pend + delivered)


def purge_delivered(db: Engine) -> int:
    """Retention: delete readings delivered more than ``retention_days`` ago and give the
    space back (incremental vacuum)."""
    cutoff = db.now() - db.config.retention_days * 86400.0
    total = 0
    while True:
        # Chunks keep each transaction short: appends wait behind one chunk at most.
        with db.write() as c:
            n = int(c.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings "
                "WHERE delivered_at IS NOT NULL AND delivered_at <= ? "
                "ORDER BY delivered_at LIMIT ?)",
                (cutoff, _PURGE_CHUNK),
            ).rowcount)
            if n:
                db.bump(delivered=-n)
        db.apply(delivered=-n)
        total += n
        if n < _PURGE_CHUNK:
            break
    if total:
        audit.audit(db, "system:retention", "vault.retention_purged", f"{total} readings")
        maintenance.reclaim(db)
        log.info("vault.retention_purged", n=total)
    return total


def count_refusal(db: Engine, reason: str, n: int = 1) -> None:
    """Count ``n`` intake refusals with ``reason`` (persisted, shown in stats)."""
    db.count_refusal(reason, n)


def stats(db: Engine) -> VaultStats:
    """Queue depth, oldest pending age, sizes and refusal counts."""
    with db.errors():
        row = db.conn.execute(
            "SELECT stored_at FROM readings WHERE delivered_at IS NULL ORDER BY seq LIMIT 1"
        ).fetchone()
    age = None if row is None else max(0.0, db.now() - float(row[0]))
    size = 0
    for suffix in ("", "-wal"):
        with suppress(FileNotFoundError):
            size += Path(str(db.config.path) + suffix).stat().st_size
    return VaultStats(
        pending=db.pending,
        oldest_pending_age_s=age,
        db_bytes=size,
        pending_bytes=db.pending_bytes,
        delivered_retained=db.delivered,
        refusals=dict(sorted(db.refusals.items())),
    )
