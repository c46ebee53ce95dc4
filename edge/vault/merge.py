"""What a merge writes: staged readings into the ``readings`` table, delivered marks onto the
rows already there, and the watermarks read back afterwards.

The in-memory side (what is staged, when a merge runs, what it resets) is
:mod:`edge.vault.staging`; these functions run inside its one merge transaction on the vault's
writer thread and keep the engine's counters in step with what the database really took.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from edge.vault.cipher import Connection
from edge.vault.engine import Engine

_INSERT = ("INSERT INTO readings(seq, ident, id, patient, kind, payload, stored_at, delivered_at,"
           " held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


@dataclass(slots=True)
class Staged:
    """A reading in the side log, not yet in the database."""

    seq: int
    ident: int
    id: str
    patient: str
    kind: str
    payload: bytes
    stored_at: float
    delivered_at: float | None = None
    #: received on an untrusted hub clock: not handed out until released (outbox)
    held: bool = False


def insert_staged(
    db: Engine, c: Connection, rows: Sequence[Staged], seqs: list[int], *, explicit: bool
) -> list[tuple[int, str]]:
    """Insert the staged ``rows`` (acknowledged ones without payload; ``seqs`` their seqs);
    bump the counters by what was really inserted. Returns (new seq, id) of rows numbered
    anew."""
    moved: list[tuple[int, str]] = []
    inserted: list[Staged]
    if explicit:
        # The usual case: every staged seq is above the database's, so the only possible
        # conflict is a reading another process stored meanwhile.
        cur = c.executemany(_INSERT, [_row(s, s.seq) for s in rows])
        if cur.rowcount == len(rows):
            inserted = list(rows)
        else:
            present = {seq for (seq,) in c.execute(
                "SELECT seq FROM readings WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(seqs),))}
            inserted = [s for s in rows if s.seq in present]
    else:
        # A replay, or another process wrote readings since these were staged: the
        # database numbers them.
        inserted = []
        for s in rows:
            got = c.execute(_INSERT + " RETURNING seq", _row(s, None)).fetchone()
            if got is not None:
                inserted.append(s)
                moved.append((int(got[0]), s.id))
    pend = pbytes = deliv = 0
    for s in inserted:
        if s.delivered_at is None:
            pend, pbytes = pend + 1, pbytes + len(s.payload)
        else:
            deliv += 1
    db.bump(pending=pend, pending_bytes=pbytes, delivered=deliv)
    return moved


def write_marks(
    db: Engine, c: Connection, now: float, marks: dict[int, int], mark_seqs: list[int]
) -> None:
    """Mark the acknowledged database rows (``marks``: seq -> payload bytes; ``mark_seqs``
    its keys, sorted) delivered, dropping their payload; bump the counters by the rows that
    were still pending."""
    acked = [s for (s,) in c.execute(
        "UPDATE readings SET delivered_at = ?, payload = x'' WHERE seq IN "
        "(SELECT value FROM json_each(?)) AND delivered_at IS NULL "
        "RETURNING seq",
        (now, json.dumps(mark_seqs)),
    )]
    nb = sum(marks[s] for s in acked)
    db.bump(pending=-len(acked), pending_bytes=-nb, delivered=len(acked))


def _row(s: Staged, seq: int | None) -> tuple[object, ...]:
    payload = s.payload if s.delivered_at is None else b""
    return (seq, s.ident, s.id, s.patient, s.kind, payload, s.stored_at, s.delivered_at,
            int(s.held))


def top_seq(c: Connection) -> int:
    row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    return int(row[0]) if row else 0


def watermarks(c: Connection) -> tuple[int, int]:
    """(the highest identity time, the highest undelivered seq) in the database; both are
    index lookups (``readings_identity``, ``readings_pending``); 0 when there is none."""
    ident = c.execute("SELECT max(ident) FROM readings").fetchone()[0]
    pending = c.execute("SELECT max(seq) FROM readings WHERE delivered_at IS NULL").fetchone()[0]
    return int(ident or 0), int(pending or 0)
