"""Schema version 4 (COLLATE "C" on the indexed text columns ingest writes) applied to a
database at version 3 that already holds rows, and the ingest sink's insert path: rows and
rollups survive, duplicates are still absorbed, every reader keeps its index, and the batch's
ORDER BY sorts in memory."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from clinic import keys
from clinic.alerts.rules import Thresholds
from clinic.db import registry, rollups, schema
from clinic.db.connect import Conn, connect
from clinic.devdb import DevPostgres
from clinic.ingest import sink
from clinic.ingest.bundle import check_bundle
from clinic.ingest.sink import BatchResult, Judged, commit_batch
from clinic.ingest.verify import Accepted, Topic
from edge import fhir
from tests.clinic.support import Reading, glucose, hr

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
_numbers = itertools.count()
#: the columns version 4 makes bytewise
C_COLUMNS = {("observations", "identifier"), ("observations", "patient"),
             ("observations", "hub_id"), ("observations", "code"), ("hr_rollups", "patient")}


@pytest.fixture
def ring() -> keys.KeyRing:
    return keys.initial_ring()


@pytest.fixture
def v3(pg: DevPostgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[Conn]:
    """A new database migrated to version 3 only (as a deployed clinic has it)."""
    name = f"v3_{next(_numbers)}"
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}".encode())
    with connect(pg.dsn.rsplit("/", 1)[0] + "/" + name) as conn:
        with monkeypatch.context() as m:
            m.setattr(schema, "MIGRATIONS", [(v, s) for v, s in schema.MIGRATIONS if v <= 3])
            assert schema.migrate(conn) == [1, 2, 3]
        registry.enroll_hub(conn, "hub-1", "test")
        for p in ("patient-a", "patient-b"):
            registry.add_patient(conn, keys.initial_ring(), p, "hub-1", None, "test")
        yield conn


def ingest(conn: Conn, ring: keys.KeyRing, readings: Sequence[Reading], now: dt.datetime,
           patient: str = "patient-a") -> BatchResult:
    obs = check_bundle(fhir.bundle_bytes(readings, hub_id="hub-1"), patient)
    j = Judged(f"edge/v1/hub-1/obs/{patient}", b"",
               Accepted(Topic("hub-1", "obs", patient), obs))
    return commit_batch(conn, ring, "w1", [j], now, max_quarantine_bytes=1 << 20,
                        thresholds=Thresholds())


def collations(conn: Conn) -> dict[tuple[str, str], str]:
    return {(str(t), str(c)): str(coll) for t, c, coll in conn.execute(
        "SELECT a.attrelid::regclass::text, a.attname, coalesce(l.collname, '')"
        " FROM pg_attribute a LEFT JOIN pg_collation l ON l.oid = a.attcollation"
        " WHERE a.attrelid IN ('observations'::regclass, 'hr_rollups'::regclass)"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'text'::regtype")}


def plan(conn: Conn, sql: str, args: Sequence[Any]) -> str:
    """The plan PostgreSQL chooses for ``sql`` (as JSON text), index scans preferred when
    possible: the tables here are tiny, so only whether an index *can* serve counts."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}".encode(), args).fetchone()
    assert row is not None
    return json.dumps(row[0])


def test_version_4_keeps_rows_and_still_absorbs_duplicates(
    v3: Conn, ring: keys.KeyRing
) -> None:
    conn = v3
    minute = NOW - dt.timedelta(minutes=30)
    before: list[Reading] = [hr("patient-a", minute + dt.timedelta(seconds=s), 60 + s)
                             for s in range(0, 40, 10)]
    before.append(glucose("patient-a", minute, mg_dl="100"))
    first = ingest(conn, ring, before, minute)  # the new sink against the old schema
    assert first.stored == 5
    assert not any(v == "C" for v in collations(conn).values())

    assert schema.migrate(conn) == [4]
    assert schema.migrate(conn) == []  # once only
    assert schema.current_version(conn) == 4
    got = collations(conn)
    assert {k for k, v in got.items() if v == "C"} == C_COLUMNS
    row = conn.execute("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                       " WHERE c.relname IN ('observations', 'hr_rollups')"
                       " AND NOT (i.indisvalid AND i.indisready)").fetchone()
    assert row == (0,)

    # rows survive, readable and unsealed as before
    stored = {str(r[0]) for r in conn.execute("SELECT identifier FROM observations")}
    assert stored == {r.id for r in before}
    # duplicates are still absorbed: the unique constraint arbitrates after the rebuild
    again = ingest(conn, ring, before[::-1], minute + dt.timedelta(minutes=1))
    assert again.stored == 0 and again.duplicates == 5
    extra = hr("patient-a", minute + dt.timedelta(seconds=50), 100)
    mixed = ingest(conn, ring, [before[0], extra, before[1]], minute + dt.timedelta(minutes=2))
    assert mixed.stored == 1 and mixed.duplicates == 2
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        conn.execute("INSERT INTO observations (identifier, patient, hub_id, code,"
                     " received_at, key_id, resource_enc) SELECT identifier, patient,"
                     " hub_id, code, received_at, key_id, resource_enc FROM observations"
                     " LIMIT 1")
    # the rollup stored before the migration is found and folded into (one row per minute)
    ((_, stats),) = rollups.read(conn, ring, "patient-a", minute,
                                 minute + dt.timedelta(minutes=1))
    assert stats == rollups.MinuteStats(5, Decimal(60), Decimal(100), Decimal(60 + 70 + 80 + 90
                                                                             + 100))
    assert ingest(conn, ring, [hr("patient-b", minute, 70)], minute, "patient-b").stored == 1
    row = conn.execute("SELECT count(*) FROM hr_rollups").fetchone()
    assert row == (2,)


def test_readers_keep_their_indexes_with_default_collation_parameters(
    v3: Conn, ring: keys.KeyRing
) -> None:
    conn = v3
    assert schema.migrate(conn) == [4]
    reading = hr("patient-a", NOW, 70)
    assert ingest(conn, ring, [reading], NOW).stored == 1
    # parameters (and a default-collation column) compared with "C" columns: no collation
    # conflict, same answers, and the index still serves each reader's query
    by_id = ("SELECT identifier, patient FROM observations WHERE identifier = %s", [reading.id])
    assert conn.execute(*by_id).fetchall() == [(reading.id, "patient-a")]
    assert "observations_identifier_key" in plan(conn, *by_id)
    points = ("SELECT identifier FROM observations WHERE patient = %s AND code = ANY(%s)"
              " AND effective_at >= %s ORDER BY effective_at",
              ["patient-a", ["8867-4"], NOW - dt.timedelta(hours=1)])
    assert conn.execute(*points).fetchall() == [(reading.id,)]
    assert "observations_patient_code_time" in plan(conn, *points)
    purge = ("SELECT id FROM observations WHERE code = %s AND received_at < %s LIMIT %s",
             [rollups.HEART_RATE_CODE, NOW + dt.timedelta(days=1), 10])
    assert len(conn.execute(*purge).fetchall()) == 1
    assert "observations_code_received" in plan(conn, *purge)
    joined = conn.execute("SELECT o.identifier FROM observations o JOIN patients p"
                          " ON p.pseudonym = o.patient AND p.hub_id = o.hub_id").fetchall()
    assert joined == [(reading.id,)]
    rollup = ("SELECT minute FROM hr_rollups WHERE patient = %s AND minute >= %s",
              ["patient-a", NOW - dt.timedelta(hours=1)])
    assert conn.execute(*rollup).fetchall() == [(NOW,)]
    assert "hr_rollups_pkey" in plan(conn, *rollup)
    assert rollups.purge_raw(conn, NOW + dt.timedelta(days=3), 1, "test") == 1


def test_a_batch_is_sorted_in_memory_in_identifier_order(v3: Conn) -> None:
    conn = v3
    assert schema.migrate(conn) == [4]
    now = dt.datetime.now(dt.UTC)
    # 5,000 rows of ~1.1 kB (a worker's batch): more than the default work_mem of 4 MB
    rows = sorted((str(uuid.uuid4()), "patient-a", "hub-1", "8867-4", now, now, "k",
                   os.urandom(1100)) for _ in range(5000))
    with conn.transaction():
        conn.execute(sink._CREATE_STAGE)
        conn.execute(sink._SORT_MEM)
        with conn.cursor() as cur:
            with cur.copy(sink._COPY_STAGE) as copy:
                copy.set_types(sink._STAGE_TYPES)
                for r in rows:
                    copy.write_row(r)
            got = cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sink._INSERT_OBS}".encode()
                              ).fetchone()
        raise psycopg.Rollback  # only the plan was wanted
    assert got is not None

    def nodes(n: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield n
        for child in n.get("Plans", []):
            yield from nodes(child)

    (sort,) = [n for n in nodes(got[0][0]["Plan"]) if n["Node Type"] == "Sort"]
    assert sort["Sort Method"] == "quicksort" and sort["Sort Space Type"] == "Memory"
    assert sort["Sort Key"] == ['ingest_obs_stage.identifier COLLATE "C"']
    row = conn.execute("SELECT count(*) FROM observations").fetchone()
    assert row == (0,)
