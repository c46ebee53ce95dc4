"""The two ways a batch's Observations go in: straight into the table by COPY when every row is
new (a backlog), through the stage with ON CONFLICT when one is a duplicate — the same rows
stored and the same counts either way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest

from clinic import keys
from clinic.alerts.rules import Thresholds
from clinic.db import registry, rollups
from clinic.db.connect import Conn, connect
from clinic.ingest.bundle import check_bundle
from clinic.ingest.sink import BatchResult, Judged, commit_batch
from clinic.ingest.verify import Accepted, Topic
from edge import fhir
from tests.clinic.support import Reading, hr

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


def ingest(conn: Conn, ring: keys.KeyRing, *batches: Sequence[Reading]) -> BatchResult:
    """One commit of one message per ``batches`` item (all about patient-a)."""
    judged = [Judged("edge/v1/hub-1/obs/patient-a", b"", Accepted(
        Topic("hub-1", "obs", "patient-a"),
        check_bundle(fhir.bundle_bytes(rs, hub_id="hub-1"), "patient-a"))) for rs in batches]
    return commit_batch(conn, ring, "w1", judged, NOW, max_quarantine_bytes=1 << 20,
                        thresholds=Thresholds())


def staged(conn: Conn) -> bool:
    """Whether this session has used the stage (its temporary table exists)."""
    row = conn.execute("SELECT to_regclass('pg_temp.ingest_obs_stage') IS NOT NULL").fetchone()
    return bool(row and row[0])


def stored(conn: Conn) -> list[str]:
    return sorted(str(r[0]) for r in conn.execute("SELECT identifier FROM observations"))


def test_new_rows_go_straight_in_and_a_duplicate_goes_through_the_stage(dsn: str) -> None:
    ring = keys.initial_ring()
    first = [hr("patient-a", NOW - dt.timedelta(seconds=s), 60 + s) for s in range(30)]
    later = [hr("patient-a", NOW + dt.timedelta(seconds=s), 90) for s in range(1, 6)]
    with connect(dsn) as conn:
        registry.enroll_hub(conn, "hub-1", "test")
        registry.add_patient(conn, ring, "patient-a", "hub-1", None, "test")
        # all new, over two messages: one COPY, no stage
        result = ingest(conn, ring, first[:20], first[20:])
        assert (result.stored, result.duplicates) == (30, 0)
        assert not staged(conn)
        assert stored(conn) == sorted(r.id for r in first)
        # one duplicate among new rows: the COPY is undone, the stage stores the rest
        result = ingest(conn, ring, [first[7], *later])
        assert (result.stored, result.duplicates) == (5, 1)
        assert staged(conn)
        assert stored(conn) == sorted(r.id for r in [*first, *later])
        ids = conn.execute("SELECT count(*), count(DISTINCT identifier) FROM observations"
                           ).fetchone()
        assert ids == (35, 35)
        # the heart-rate rollups counted each added reading once (the undone COPY not at all)
        total = sum(s.count for _, s in rollups.read(
            conn, ring, "patient-a", NOW - dt.timedelta(hours=1), NOW + dt.timedelta(hours=1)))
        assert total == 35
