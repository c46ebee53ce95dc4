"""Per-minute heart-rate rollups (min / mean / max / count per patient per minute) beside the
raw rows, and the raw retention purge that keeps them.

The figures are health data, so each rollup row is sealed with the data key like the
observations it summarises (bound to its patient and minute). Ingest folds in only the rows
its INSERT actually added (a duplicate is never counted twice), in the same transaction, row
by row under the row's lock: two workers adding to the same minute serialise, neither loses
the other's samples. The arithmetic (:class:`MinuteStats`, :func:`aggregate`) is pure.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from clinic import audit
from clinic.db.connect import Conn
from clinic.keys import KeyRing, decrypt, encrypt

HEART_RATE_CODE = "8867-4"
#: raw rows deleted per statement by the purge (keeps each transaction small)
PURGE_CHUNK = 10_000


@dataclass(frozen=True)
class MinuteStats:
    count: int
    min: Decimal
    max: Decimal
    sum: Decimal

    @property
    def mean(self) -> Decimal:
        return self.sum / self.count

    @classmethod
    def of(cls, value: Decimal) -> MinuteStats:
        return cls(1, value, value, value)

    def merged(self, other: MinuteStats) -> MinuteStats:
        return MinuteStats(self.count + other.count, min(self.min, other.min),
                           max(self.max, other.max), self.sum + other.sum)

    def to_json(self) -> bytes:
        # what json.dumps writes for these members (a Decimal's str needs no escaping),
        # without its per-call cost: ingest seals one of these per new (patient, minute)
        return (f'{{"n":{self.count:d},"min":"{self.min}","max":"{self.max}",'
                f'"sum":"{self.sum}"}}').encode()

    @classmethod
    def from_json(cls, blob: bytes) -> MinuteStats:
        d = json.loads(blob)
        return cls(int(d["n"]), Decimal(d["min"]), Decimal(d["max"]), Decimal(d["sum"]))


def minute_of(t: dt.datetime) -> dt.datetime:
    """The UTC minute ``t`` falls in."""
    if t.tzinfo is not dt.UTC:  # ingest's times are already UTC: skip the conversion
        t = t.astimezone(dt.UTC)
    return t.replace(second=0, microsecond=0)


def aggregate(samples: Iterable[tuple[str, dt.datetime, Decimal]]
              ) -> dict[tuple[str, dt.datetime], MinuteStats]:
    """(patient, time, bpm) samples folded per (patient, minute)."""
    groups: dict[tuple[str, dt.datetime], list[Decimal]] = {}
    for patient, t, bpm in samples:
        key = (patient, minute_of(t))
        got = groups.get(key)
        if got is None:
            groups[key] = [bpm]
        else:
            got.append(bpm)
    # one MinuteStats per minute, not one per sample (ingest folds ~10,000 a batch)
    return {k: MinuteStats(len(v), min(v), max(v), sum(v[1:], v[0]))
            for k, v in groups.items()}


def _aad(patient: str, minute: dt.datetime) -> bytes:
    return f"hr-rollup|{patient}|{minute.isoformat()}".encode()


def add(conn: Conn, ring: KeyRing, stats: dict[tuple[str, dt.datetime], MinuteStats]) -> None:
    """Fold ``stats`` into the stored rollups, inside the caller's transaction, in three
    statements whatever their number: insert the minutes not stored yet, lock the others, fold
    into those and write them back.

    Deadlock-free between workers: the INSERT goes in (patient, minute) order (a conflict on
    a row another transaction is inserting waits for it, in that order; a transaction past its
    INSERT waits only for locks on committed rows, never for an inserter), and the committed
    rows it did not insert are locked in the same order.
    """
    if not stats:
        return
    keys = sorted(stats)  # a fixed order: no deadlock between workers
    sealed = [encrypt(ring, stats[k].to_json(), _aad(*k)) for k in keys]
    # COLLATE "C": the unnest's text is of the default collation; every worker must insert
    # and lock in the one bytewise order of hr_rollups.patient (schema version 4)
    added = {(str(p), m) for p, m in conn.execute(
        "INSERT INTO hr_rollups (patient, minute, key_id, stats_enc) SELECT * FROM"
        " unnest(%s::text[], %s::timestamptz[], %s::text[], %s::bytea[])"
        " AS n(patient, minute, key_id, stats_enc) ORDER BY patient COLLATE \"C\", minute"
        " ON CONFLICT (patient, minute) DO NOTHING RETURNING patient, minute",
        ([p for p, _ in keys], [m for _, m in keys], [k for k, _ in sealed],
         [b for _, b in sealed]))}
    rest = [k for k in keys if _norm(k) not in added]
    if not rest:
        return
    merged: list[tuple[str, dt.datetime, str, bytes]] = []
    stored = {(str(p), m): (str(kid), bytes(blob)) for p, m, kid, blob in conn.execute(
        "SELECT r.patient, r.minute, r.key_id, r.stats_enc FROM hr_rollups r JOIN"
        " unnest(%s::text[], %s::timestamptz[]) AS k(patient, minute)"
        " ON r.patient = k.patient AND r.minute = k.minute"
        " ORDER BY r.patient, r.minute FOR UPDATE OF r",
        ([p for p, _ in rest], [m for _, m in rest]))}
    for patient, minute in rest:
        kid, blob = stored[_norm((patient, minute))]  # rollups are never deleted
        aad = _aad(patient, minute)
        old = MinuteStats.from_json(decrypt(ring, kid, blob, aad))
        kid, blob = encrypt(ring, old.merged(stats[patient, minute]).to_json(), aad)
        merged.append((patient, minute, kid, blob))
    conn.execute(
        "UPDATE hr_rollups r SET key_id = n.key_id, stats_enc = n.stats_enc FROM"
        " unnest(%s::text[], %s::timestamptz[], %s::text[], %s::bytea[])"
        " AS n(patient, minute, key_id, stats_enc)"
        " WHERE r.patient = n.patient AND r.minute = n.minute",
        ([r[0] for r in merged], [r[1] for r in merged], [r[2] for r in merged],
         [r[3] for r in merged]))


def _norm(key: tuple[str, dt.datetime]) -> tuple[str, dt.datetime]:
    """A key as it comes back from PostgreSQL (the same instant, whatever its time zone)."""
    return key[0], key[1].astimezone(dt.UTC)


def read(conn: Conn, ring: KeyRing, patient: str, since: dt.datetime,
         until: dt.datetime) -> list[tuple[dt.datetime, MinuteStats]]:
    """A patient's rollups for the minutes in [since, until), oldest first."""
    rows = conn.execute(
        "SELECT minute, key_id, stats_enc FROM hr_rollups WHERE patient = %s AND minute >= %s"
        " AND minute < %s ORDER BY minute", (patient, since, until))
    return [(m, MinuteStats.from_json(decrypt(ring, str(k), bytes(b), _aad(patient, m))))
            for m, k, b in rows]


def purge_cutoff(now: dt.datetime, retention_days: float) -> dt.datetime:
    """Rows received before this are purged: ``retention_days`` ago, rounded down to the hour,
    so that a purge finds something (and audits it) about once an hour, not every run."""
    return (now - dt.timedelta(days=retention_days)).replace(minute=0, second=0, microsecond=0)


def purge_raw(conn: Conn, now: dt.datetime, retention_days: float, actor: str) -> int:
    """Delete raw heart-rate rows received longer ago than the retention (receipt time: a
    device clock cannot keep a row forever); rollups stay. Audited as a count, in the same
    transaction. Returns the rows deleted (0 when retention is off)."""
    if retention_days <= 0:
        return 0
    cutoff = purge_cutoff(now, retention_days)
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                "DELETE FROM observations WHERE id IN (SELECT id FROM observations WHERE"
                " code = %s AND received_at < %s LIMIT %s)",
                (HEART_RATE_CODE, cutoff, PURGE_CHUNK))
            n = max(cur.rowcount, 0)
            if n:
                audit.append(conn, actor, "retention.purge", "observations",
                             {"code": HEART_RATE_CODE, "rows": n,
                              "before": cutoff.isoformat()}, now=now)
        total += n
        if n < PURGE_CHUNK:
            return total
