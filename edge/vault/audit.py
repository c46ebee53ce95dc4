"""The hash-chained audit log: each entry's SHA-256 covers its fields and the previous hash.

The table is append-only (triggers refuse UPDATE and DELETE); :func:`verify_chain` finds a
forged, missing or unlinked entry when the triggers were dropped behind the vault's back. The
pure chain functions are shared with ``edge.testing.vault.MemoryVault``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edge.errors import AuditChainBroken
from edge.vault.models import AuditEntry

if TYPE_CHECKING:
    from edge.vault.engine import Engine

#: the ``prev_hash`` of the first entry
GENESIS_HASH = "0" * 64

#: an entry as stored: (id, ISO time, actor, action, subject, prev_hash, hash)
AuditRow = tuple[int, str, str, str, str, str, str]


def audit_hash(entry_id: int, at: str, actor: str, action: str, subject: str, prev: str) -> str:
    """SHA-256 over the canonical JSON of an entry's fields and the previous entry's hash."""
    canonical = json.dumps(
        [entry_id, at, actor, action, subject, prev], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_text(what: str, value: str, limit: int = 256) -> str:
    """``value`` if it is a single line of at most ``limit`` characters; else ValueError."""
    if not isinstance(value, str) or len(value) > limit or any(c in value for c in "\r\n\0"):
        raise ValueError(f"{what} must be a single line of at most {limit} characters")
    return value


def next_row(last: tuple[int, str] | None, at: datetime, actor: str, action: str,
             subject: str) -> AuditRow:
    """The entry that follows ``last`` (its id and hash; None for the first)."""
    check_text("actor", actor, 128)
    check_text("action", action, 128)
    check_text("subject", subject, 256)
    prev_id, prev = last or (0, GENESIS_HASH)
    entry_id = prev_id + 1
    when = at.astimezone(UTC).isoformat()
    return (entry_id, when, actor, action, subject, prev,
            audit_hash(entry_id, when, actor, action, subject, prev))


def entry(row: AuditRow) -> AuditEntry:
    """A stored row as an AuditEntry."""
    i, at, actor, action, subject, prev, digest = row
    return AuditEntry(int(i), datetime.fromisoformat(at), actor, action, subject, prev, digest)


def verify_chain(rows: Iterable[AuditRow]) -> int:
    """Check entries in id order; the number of entries, or AuditChainBroken naming the
    first broken one."""
    prev_id, prev = 0, GENESIS_HASH
    count = 0
    for entry_id, at, actor, action, subject, prev_hash, digest in rows:
        if entry_id != prev_id + 1:
            raise AuditChainBroken(
                f"audit chain broken at entry {entry_id}: entries "
                f"{prev_id + 1}..{entry_id - 1} are missing"
            )
        if prev_hash != prev:
            raise AuditChainBroken(
                f"audit chain broken at entry {entry_id}: it does not link to entry {prev_id}"
            )
        if audit_hash(entry_id, at, actor, action, subject, prev_hash) != digest:
            raise AuditChainBroken(
                f"audit chain broken at entry {entry_id}: its contents do not match its hash"
            )
        prev_id, prev = entry_id, digest
        count += 1
    return count


# -- on the engine ----------------------------------------------------------------------------


def record(db: Engine, actor: str, action: str, subject: str) -> None:
    """Append an entry inside the caller's write transaction."""
    c = db.conn
    row = c.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    last = (int(row[0]), str(row[1])) if row else None
    c.execute(
        "INSERT INTO audit(id, at, actor, action, subject, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        next_row(last, db.clock.now(), actor, action, subject),
    )


def audit(db: Engine, actor: str, action: str, subject: str = "") -> None:
    """Append to the hash-chained audit log. ``subject`` is a pseudonym or device hash,
    never a reading value."""
    with db.write():
        record(db, actor, action, subject)


def audit_tail(db: Engine, n: int = 20) -> list[AuditEntry]:
    """The last ``n`` audit entries, oldest first."""
    with db.errors():
        rows = db.conn.execute(
            "SELECT id, at, actor, action, subject, prev_hash, hash FROM audit "
            "ORDER BY id DESC LIMIT ?",
            (max(0, n),),
        ).fetchall()
    return [entry(r) for r in reversed(rows)]


def verify_audit(db: Engine) -> int:
    """Check the whole chain; returns the number of entries, or raises AuditChainBroken
    naming the first broken entry."""
    with db.errors():
        return verify_chain(db.conn.execute(
            "SELECT id, at, actor, action, subject, prev_hash, hash FROM audit ORDER BY id"
        ))
