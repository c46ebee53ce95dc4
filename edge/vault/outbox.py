"""The outbox: readings appended durably, handed out oldest first, marked delivered, purged.

Undelivered readings are never evicted: when a bound is reached new readings are refused with
a counted reason. With a side log (``flush_interval_s > 0``) appends, delivered marks and
last-seen times are staged (:mod:`edge.vault.staging`) and merged in batches; without one,
each call is its own durable transaction.

Held readings (``clock_hold`` set: received while the hub clock was not synchronised) are
stored with ``held = 1`` and never handed out by :func:`next_batch`; :func:`release_held`
corrects them (a pure ``fix`` decides, see :func:`edge.intake.timing.correct`) and stores them
anew, with a new ``seq`` so that a forwarder whose cursor has passed them still sees them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.errors import VaultError
from edge.log import get_logger
from edge.readings import reading_from_json
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
    """Store readings (and a glucose meter's cursor); same id again is a no-op. With a side
    log, readings are staged there (see :mod:`edge.vault.staging`); a cursor always commits
    durably in one transaction with its records and whatever is staged. ``no_consent``
    readings were dropped by the consent gate and are counted with it."""
    db.note_refusal(NO_CONSENT, no_consent)
    n = len(readings)
    if n == 0 and cursor is None:
        if no_consent and db.staging is None:
            db.flush_refusals(NO_CONSENT)
        return AppendResult(0, 0)
    if n and db.pending >= db.config.max_pending:
        raise db.refuse("vault_full_count", n)
    staging = db.staging
    if staging is not None and cursor is None:
        return staging.append(db, readings)
    now = db.now()
    # The serializer's bytes are exactly ``model_dump_json().encode()``, without the
    # str round trip.
    rows = [
        (identity_time_us(r), r.id, r.patient, r.kind,
         r.__pydantic_serializer__.to_json(r), now, int(r.clock_hold is not None))
        for r in readings
    ]
    try:
        if staging is not None:
            got = staging.merge_with(db, lambda c: _insert(db, c, rows, cursor, now))
            assert got is not None
            stored = got[0]
        else:
            with db.write() as c:
                stored, nbytes = _insert(db, c, rows, cursor, now)
            db.apply(pending=stored, pending_bytes=nbytes)
    except Full as exc:
        raise db.refuse(exc.reason, n) from None
    except DiskFull:
        raise db.refuse("disk_full", n) from None
    return AppendResult(stored, n - stored)


def _insert(db: Engine, c: Connection,
            rows: Sequence[tuple[int, str, str, str, bytes, float, int]],
            cursor: CursorRow | None, now: float) -> tuple[int, int]:
    """Insert ``rows`` (and the cursor) in the caller's transaction; (stored, their bytes)."""
    n = len(rows)
    stored, nbytes = 0, 0
    if rows:
        cur = c.executemany(
            "INSERT INTO readings(ident, id, patient, kind, payload, stored_at, held) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(ident, id) DO NOTHING",
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
    return stored, nbytes


def next_batch(db: Engine, limit: int, *, after_seq: int = 0) -> list[PendingReading]:
    """Up to ``limit`` undelivered readings with ``seq > after_seq``, oldest first; held
    readings are not handed out."""
    if db.staging is not None:
        out = db.staging.next_batch(db, limit, after_seq)
    else:
        with db.errors():
            rows = db.conn.execute(
                "SELECT seq, id, patient, kind, payload FROM readings "
                "WHERE delivered_at IS NULL AND held = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max(0, limit)),
            ).fetchall()
        out = [PendingReading(seq, rid, patient, kind, bytes(payload))
               for seq, rid, patient, kind, payload in rows]
    inflight = db.inflight
    for p in out:
        inflight[p.id] = (p.seq, len(p.payload), p.patient)
    excess = len(inflight) - _INFLIGHT_MAX
    if excess > 0:
        for rid in list(inflight)[:excess]:
            del inflight[rid]
    return out


def mark_delivered(db: Engine, ids: Sequence[str]) -> int:
    """Mark readings acknowledged by the backend; returns how many were pending. Their
    payload is dropped: a delivered reading is kept (until retention) only to recognise it
    if it comes again."""
    if db.staging is not None:
        return db.staging.mark_delivered(db, ids)
    now = db.now()
    inflight = db.inflight
    sizes = {inflight[rid][0]: inflight[rid][1] for rid in ids if rid in inflight}
    unknown = [rid for rid in ids if rid not in inflight]
    if unknown:
        # Not handed out by next_batch in this process: a scan of the pending.
        with db.errors():
            sizes.update(db.conn.execute(
                "SELECT seq, length(payload) FROM readings WHERE id IN (SELECT value FROM "
                "json_each(?)) AND delivered_at IS NULL",
                (json.dumps(unknown),),
            ).fetchall())
    done = nbytes = 0
    try:
        with db.write() as c:
            if sizes:
                acked = [r[0] for r in c.execute(
                    "UPDATE readings SET delivered_at = ?, payload = x'' WHERE seq IN "
                    "(SELECT value FROM json_each(?)) AND delivered_at IS NULL RETURNING seq",
                    (now, json.dumps(list(sizes))),
                )]
                done, nbytes = len(acked), sum(sizes[s] for s in acked)
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
    db.settle()
    with db.write() as c:
        pend, pbytes, delivered = purge_patient_in_tx(db, c, patient)
        audit.record(db, actor, "vault.patient_purged", patient)
    db.apply(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
    forget_inflight(db, patient)
    log.info("vault.patient_purged", n=pend + delivered)
    return int(pend + delivered)


def purge_delivered(db: Engine) -> int:
    """Retention: delete readings delivered more than ``retention_days`` ago and give the
    space back (incremental vacuum). Not fsynced per chunk: a purge a power cut undoes is
    simply done again."""
    db.settle()
    cutoff = db.now() - db.config.retention_days * 86400.0
    total = 0
    while True:
        # Chunks keep each transaction short: appends wait behind one chunk at most.
        with db.write(durable=False) as c:
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
    if db.staging is not None:
        oldest = db.staging.oldest_pending(db)
    else:
        with db.errors():
            row = db.conn.execute(
                "SELECT stored_at FROM readings WHERE delivered_at IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
        oldest = None if row is None else float(row[0])
    age = None if oldest is None else max(0.0, db.now() - oldest)
    size = 0
    for suffix in ("", "-wal", "-log"):
        with suppress(FileNotFoundError):
            size += Path(str(db.config.path) + suffix).stat().st_size
    return VaultStats(
        pending=db.pending,
        oldest_pending_age_s=age,
        db_bytes=size,
        pending_bytes=db.pending_bytes,
        delivered_retained=db.delivered,
        refusals=dict(sorted(db.refusals.items())),
        held=held_count(db),
    )


# -- held readings ----------------------------------------------------------------------------

#: decides what a held reading becomes: the reading to forward, or None (refused)
Fix = Callable[[AnyReading], AnyReading | None]
#: the refusal reason of held readings whose time can never be known
UNKNOWN_TIME = "unknown_time"


@dataclass(frozen=True)
class Released:
    """What :func:`release_held` did: readings corrected and now forwardable, and readings
    refused ``unknown_time``."""

    released: int
    unknown_time: int


def held_count(db: Engine) -> int:
    """Readings held back (stored, undelivered, waiting for the hub clock)."""
    staged = 0
    if db.staging is not None:
        staged = sum(1 for s in db.staging.rows if s.held and s.delivered_at is None)
    with db.errors():
        row = db.conn.execute(
            "SELECT count(*) FROM readings WHERE held = 1 AND delivered_at IS NULL"
        ).fetchone()
    return staged + int(row[0])


def release_held(db: Engine, fix: Fix, *, actor: str = "system:clock") -> Released:
    """Correct every held reading with ``fix`` in ONE durable transaction: each is stored
    anew (same id and identity time, a new ``seq``, not held), or deleted and counted
    ``unknown_time`` when ``fix`` returns None (audited, with the count only)."""
    if held_count(db) == 0:
        return Released(0, 0)
    db.settle()
    with db.errors():
        rows = db.conn.execute(
            "SELECT seq, ident, id, patient, kind, payload, stored_at FROM readings "
            "WHERE held = 1 AND delivered_at IS NULL ORDER BY seq"
        ).fetchall()
    if not rows:
        return Released(0, 0)
    out: list[tuple[int, tuple[int, str, str, str, bytes, float] | None, int]] = []
    for seq, ident, rid, patient, kind, payload, stored_at in rows:
        fixed = fix(reading_from_json(bytes(payload)))
        if fixed is None:
            out.append((seq, None, len(payload)))
            continue
        body: bytes = fixed.__pydantic_serializer__.to_json(fixed)
        out.append((seq, (ident, rid, patient, kind, body, stored_at), len(payload)))
    unknown = sum(1 for _, new, _ in out if new is None)
    db.note_refusal(UNKNOWN_TIME, unknown)
    pend = nbytes = 0
    try:
        with db.write() as c:
            for seq, new, old_size in out:
                c.execute("DELETE FROM readings WHERE seq = ?", (seq,))
                if new is None:
                    pend, nbytes = pend - 1, nbytes - old_size
                    continue
                c.execute("INSERT INTO readings(ident, id, patient, kind, payload, stored_at) "
                          "VALUES (?, ?, ?, ?, ?, ?)", new)
                nbytes += len(new[4]) - old_size
            db.bump(pending=pend, pending_bytes=nbytes)
            if unknown:
                audit.record(db, actor, "clock.unknown_time", f"{unknown} reading(s)")
    except DiskFull as exc:
        raise VaultError("the disk holding the vault is full; held readings kept") from exc
    db.apply(pending=pend, pending_bytes=nbytes)
    if db.staging is not None:
        db.staging.after_direct_write(db)
    log.info("vault.held_released", released=len(out) - unknown, unknown_time=unknown)
    return Released(len(out) - unknown, unknown)


class _RunsOnWriter(Protocol):
    async def _run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


def releaser(vault: object) -> Callable[[Fix], Awaitable[Released]] | None:
    """``vault.release_held`` (MemoryVault has it); for :class:`edge.vault.Vault`, until it
    exposes ``release_held = _OnWriter(outbox.release_held)``, the same call on its writer
    thread; None for a vault that holds nothing back (a test double)."""
    method = getattr(vault, "release_held", None)
    if method is not None:
        return method  # type: ignore[no-any-return]
    if not hasattr(vault, "_run"):
        return None
    runner: _RunsOnWriter = vault

    async def release(fix: Fix) -> Released:
        got: Released = await runner._run(release_held, fix)
        return got

    return release
