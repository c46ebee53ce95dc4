"""The hash-chained audit log: each record's hash covers its fields and the previous hash, so
an edited, removed or reordered record breaks the chain from that point on.

The chain rules are pure (:func:`record_hash`, :func:`verify_rows`); :func:`append` and
:func:`verify` are the thin PostgreSQL shell. Appends are serialised by a transaction-scoped
advisory lock, so concurrent writers (ingest workers, the CLI) never fork the chain. Details
hold no PHI values: ids, reasons and counts only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from clinic.db.connect import Conn
from clinic.db.schema import AUDIT_LOCK
from clinic.errors import StoreUnavailable

GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class Record:
    """One audit record."""

    seq: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    detail: str
    prev_hash: bytes
    hash: bytes


def _canonical(seq: int, at: dt.datetime, actor: str, action: str, target: str,
               detail: str) -> bytes:
    at_utc = at.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return json.dumps([seq, at_utc, actor, action, target, detail],
                      separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(prev: bytes, seq: int, at: dt.datetime, actor: str, action: str,
                target: str, detail: str) -> bytes:
    """SHA-256 over the previous hash and this record's canonical JSON."""
    return hashlib.sha256(prev + _canonical(seq, at, actor, action, target, detail)).digest()


def verify_rows(rows: Iterable[Record]) -> int | None:
    """The seq of the first record that breaks the chain, or None when it is intact."""
    prev = GENESIS
    expected_seq = 1
    for r in rows:
        if r.seq != expected_seq or r.prev_hash != prev:
            return r.seq
        if record_hash(prev, r.seq, r.at, r.actor, r.action, r.target, r.detail) != r.hash:
            return r.seq
        prev = r.hash
        expected_seq += 1
    return None


def detail_text(detail: Mapping[str, Any] | None) -> str:
    """A detail mapping as stable JSON (sorted keys)."""
    return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), default=str)


def append(conn: Conn, actor: str, action: str, target: str = "",
           detail: Mapping[str, Any] | None = None, *,
           now: dt.datetime | None = None) -> Record:
    """Append one record inside the caller's transaction (or its own, in autocommit)."""
    # PostgreSQL keeps microseconds, so the hash recomputed from the row matches.
    at = now or dt.datetime.now(dt.UTC)
    text = detail_text(detail)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            last = conn.execute(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq = int(last[0]) + 1 if last else 1
            prev = bytes(last[1]) if last else GENESIS
            h = record_hash(prev, seq, at, actor, action, target, text)
            conn.execute(
                "INSERT INTO audit_log (seq, at, actor, action, target, detail, prev_hash, hash)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (seq, at, actor, action, target, text, prev, h),
            )
    except psycopg.Error as exc:
        raise StoreUnavailable("the audit log cannot be written") from exc
    return Record(seq, at, actor, action, target, text, prev, h)


def _rows(conn: Conn, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
    out = []
    for seq, at, actor, action, target, detail, prev, h in conn.execute(sql, params):
        out.append(Record(int(seq), at, str(actor), str(action), str(target),
                          str(detail), bytes(prev), bytes(h)))
    return out


def verify(conn: Conn) -> tuple[int, int | None]:
    """(records checked, first broken seq or None)."""
    rows = _rows(conn, "SELECT seq, at, actor, action, target, detail, prev_hash, hash "
                       "FROM audit_log ORDER BY seq")
    return len(rows), verify_rows(rows)


def tail(conn: Conn, n: int = 20) -> list[Record]:
    """The last ``n`` records, oldest first."""
    rows = _rows(conn, "SELECT seq, at, actor, action, target, detail, prev_hash, hash "
                       "FROM audit_log ORDER BY seq DESC LIMIT %s", (n,))
    return rows[::-1]
