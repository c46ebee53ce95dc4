"""Alerts, rollups and retention against a real PostgreSQL: batches committed through the
ingest sink (as a worker commits them), the evaluator with an injected clock, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from decimal import Decimal

import psycopg
import pytest

from clinic import status
from clinic.alerts import store
from clinic.alerts.evaluator import Settings, evaluate, exclusive
from clinic.alerts.rules import Thresholds
from clinic.cli import main
from clinic.db import registry, rollups
from clinic.db.connect import Conn, connect
from clinic.errors import UsageError
from clinic.ingest.bundle import check_bundle
from clinic.ingest.sink import BatchResult, Judged, commit_batch
from clinic.ingest.verify import Accepted, HubStatus, Topic
from edge import fhir
from tests.clinic.conftest import ClinicSetup
from tests.clinic.support import Reading, glucose, hr

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TH = Thresholds()
SETTINGS = Settings(TH, hub_offline_after_s=900, raw_retention_days=0)


@pytest.fixture
def conn(setup: ClinicSetup) -> Iterator[Conn]:
    with connect(setup.cfg.db.dsn) as c:
        registry.enroll_hub(c, "hub-1", "test")
        for p in ("patient-a", "patient-b"):
            registry.add_patient(c, setup.ring, p, "hub-1", None, "test")
        registry.add_user(c, setup.ring, "dr-a", "clinician", "x", "SECRET", "test")
        registry.add_user(c, setup.ring, "dr-b", "clinician", "x", "SECRET", "test")
        registry.add_user(c, setup.ring, "root", "admin", "x", "SECRET", "test")
        registry.assign(c, "patient-a", "dr-a", "test")
        yield c


def ingest(conn: Conn, setup: ClinicSetup, readings: Sequence[Reading], now: dt.datetime,
           patient: str = "patient-a") -> BatchResult:
    obs = check_bundle(fhir.bundle_bytes(readings, hub_id="hub-1"), patient)
    j = Judged(f"edge/v1/hub-1/obs/{patient}", b"",
               Accepted(Topic("hub-1", "obs", patient), obs))
    return commit_batch(conn, setup.ring, "w1", [j], now, max_quarantine_bytes=1 << 20,
                        thresholds=TH)


def hub_status(conn: Conn, setup: ClinicSetup, online: bool, at: dt.datetime) -> None:
    j = Judged("edge/v1/hub-1/status", b"", HubStatus("hub-1", online, at, None, None))
    commit_batch(conn, setup.ring, "w1", [j], at, max_quarantine_bytes=1 << 20, thresholds=TH)


def open_kinds(conn: Conn, patient: str = "patient-a") -> list[str]:
    return sorted(str(r[0]) for r in conn.execute(
        "SELECT kind FROM alerts WHERE patient = %s AND state <> 'resolved'", (patient,)))


def history(conn: Conn, patient: str = "patient-a") -> list[tuple[str, str]]:
    return [(str(k), str(s)) for k, s in conn.execute(
        "SELECT kind, state FROM alerts WHERE patient = %s ORDER BY id", (patient,))]


def audited(conn: Conn, action: str) -> int:
    row = conn.execute("SELECT count(*) FROM audit_log WHERE action = %s", (action,)).fetchone()
    return int(row[0]) if row else 0


def at(minutes: float) -> dt.datetime:
    return NOW + dt.timedelta(minutes=minutes)


def test_glucose_alerts_open_and_resolve_from_data(conn: Conn, setup: ClinicSetup) -> None:
    ingest(conn, setup, [glucose("patient-a", at(0), mg_dl="65")], at(0))
    assert open_kinds(conn) == ["glucose_low"]
    ingest(conn, setup, [glucose("patient-a", at(1), mmol_l="2.8")], at(1))  # 50.4 mg/dL
    assert open_kinds(conn) == ["glucose_urgent_low"]
    ingest(conn, setup, [glucose("patient-a", at(2), mmol_l="14.2")], at(2))  # 255.8 mg/dL
    assert open_kinds(conn) == ["glucose_high"]
    assert status.collect(conn)["alerts_open"] == 1
    ingest(conn, setup, [glucose("patient-a", at(3), mg_dl="120")], at(3))
    assert open_kinds(conn) == []
    assert history(conn) == [("glucose_low", "resolved"), ("glucose_urgent_low", "resolved"),
                             ("glucose_high", "resolved")]
    assert audited(conn, "alert.open") == 3 and audited(conn, "alert.resolve") == 3
    # the meter's LO (below what it can measure) is an urgent low, not nothing
    ingest(conn, setup, [glucose("patient-a", at(4), special="-inf")], at(4))
    assert open_kinds(conn) == ["glucose_urgent_low"]
    assert open_kinds(conn, "patient-b") == []


def test_heart_rate_alarm_needs_sustained_samples_and_per_patient_thresholds(
    conn: Conn, setup: ClinicSetup
) -> None:
    store.set_thresholds(conn, "patient-a", {"heart_rate_sustain_samples": 3,
                                             "heart_rate_high_bpm": Decimal(120)}, TH, "test",
                         NOW)
    t = [NOW + dt.timedelta(seconds=i) for i in range(20)]
    ingest(conn, setup, [hr("patient-a", t[0], 125), hr("patient-a", t[1], 80)], t[1])
    assert open_kinds(conn) == []  # one glitch (above this patient's 120)
    ingest(conn, setup, [hr("patient-a", t[2], 125), hr("patient-a", t[3], 126)], t[3])
    assert open_kinds(conn) == []  # two: not yet sustained
    ingest(conn, setup, [hr("patient-a", t[4], 127)], t[4])  # the third, in another batch
    assert open_kinds(conn) == ["heart_rate_high"]
    ingest(conn, setup, [hr("patient-a", t[5], 80), hr("patient-a", t[6], 125)], t[6])
    assert open_kinds(conn) == ["heart_rate_high"]  # one good sample does not clear it
    ingest(conn, setup, [hr("patient-a", t[i], 80) for i in (7, 8, 9)], t[9])
    assert open_kinds(conn) == []
    # patient-b has the defaults: 125 bpm is fine, 30 bpm for 10 samples is not
    ingest(conn, setup, [hr("patient-b", t[i], 125) for i in range(10)], t[9], "patient-b")
    assert open_kinds(conn, "patient-b") == []
    ingest(conn, setup, [hr("patient-b", t[i], 30) for i in range(10, 20)], t[19], "patient-b")
    assert open_kinds(conn, "patient-b") == ["heart_rate_low"]


def test_duplicates_change_no_alert_and_no_rollup(conn: Conn, setup: ClinicSetup) -> None:
    minute = NOW.replace(second=0) + dt.timedelta(minutes=5)
    readings: list[Reading] = [
        hr("patient-a", minute + dt.timedelta(seconds=s), b)
        for s, b in [(0, 60), (10, 90), (20, 75), (59, 50), (60, 100), (61, 40)]]
    readings.append(glucose("patient-a", minute, mg_dl="60"))
    first = ingest(conn, setup, readings, at(10))
    assert first.stored == 7 and first.alert_changes == 1
    again = ingest(conn, setup, readings[2:] + readings[:2], at(11))  # re-sent, reordered
    assert again.stored == 0 and again.duplicates == 7 and again.alert_changes == 0
    # a batch overlapping what is stored: only the new row counts
    extra = hr("patient-a", minute + dt.timedelta(seconds=30), 95)
    assert ingest(conn, setup, [readings[0], extra], at(12)).stored == 1
    got = rollups.read(conn, setup.ring, "patient-a", minute, minute + dt.timedelta(minutes=2))
    assert got == [
        (minute, rollups.MinuteStats(5, Decimal(50), Decimal(95), Decimal(370))),
        (minute + dt.timedelta(minutes=1),
         rollups.MinuteStats(2, Decimal(40), Decimal(100), Decimal(140))),
    ]
    assert got[0][1].mean == Decimal(74)
    assert history(conn) == [("glucose_low", "open")]
    blobs = [bytes(r[0]) for r in conn.execute("SELECT stats_enc FROM hr_rollups")]
    assert blobs and not any(b'"min"' in b or b"370" in b for b in blobs)  # sealed


def test_rollups_are_exact_when_two_workers_commit_overlapping_batches(
    setup: ClinicSetup, conn: Conn
) -> None:
    minute = NOW.replace(second=0)
    readings = [hr("patient-a", minute + dt.timedelta(seconds=s), 50 + s) for s in range(120)]
    errors: list[BaseException] = []

    def worker(batches: list[list[Reading]]) -> None:
        try:
            with connect(setup.cfg.db.dsn) as c:
                for b in batches:
                    ingest(c, setup, b, NOW)
        except BaseException as exc:  # reported below
            errors.append(exc)

    # both workers deliver every reading, in overlapping batches of different shapes
    one = [readings[i:i + 7] for i in range(0, 120, 7)]
    two = [readings[i:i + 11] for i in range(0, 120, 11)][::-1]
    threads = [threading.Thread(target=worker, args=(b,)) for b in (one, two)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors
    got = dict(rollups.read(conn, setup.ring, "patient-a", minute,
                            minute + dt.timedelta(minutes=2)))
    assert got == {minute: rollups.MinuteStats(60, Decimal(50), Decimal(109),
                                               Decimal(sum(range(50, 110)))),
                   minute + dt.timedelta(minutes=1): rollups.MinuteStats(
                       60, Decimal(110), Decimal(169), Decimal(sum(range(110, 170))))}
    row = conn.execute("SELECT count(*) FROM observations").fetchone()
    assert row is not None and row[0] == 120


def test_stale_opens_after_silence_and_resolves_with_the_next_reading(
    conn: Conn, setup: ClinicSetup
) -> None:
    ingest(conn, setup, [hr("patient-a", at(0), 70)], at(0))
    assert evaluate(conn, SETTINGS, at(59)).changes == 0
    result = evaluate(conn, SETTINGS, at(61))
    # patient-b never sent anything since enrolment (just before NOW): stale too
    assert result.ran and result.changes == 2
    assert open_kinds(conn) == ["stale"] and open_kinds(conn, "patient-b") == ["stale"]
    assert evaluate(conn, SETTINGS, at(62)).changes == 0  # at most one open per kind
    ingest(conn, setup, [hr("patient-a", at(63), 72)], at(63))
    assert open_kinds(conn) == []  # resolved in the reading's own transaction
    assert history(conn) == [("stale", "resolved")]
    assert evaluate(conn, SETTINGS, at(64)).changes == 0


def test_hub_offline_opens_after_the_delay_and_resolves_when_back(
    conn: Conn, setup: ClinicSetup
) -> None:
    hub_status(conn, setup, True, at(0))
    ingest(conn, setup, [hr("patient-a", at(0), 70)], at(0))
    hub_status(conn, setup, False, at(1))  # the Last Will
    assert evaluate(conn, SETTINGS, at(15)).changes == 0
    hub_status(conn, setup, False, at(15.5))  # the retained will, re-delivered
    result = evaluate(conn, SETTINGS, at(16.1))
    assert result.changes == 2  # both of the hub's patients
    assert open_kinds(conn) == ["hub_offline"] and open_kinds(conn, "patient-b") == [
        "hub_offline"]
    hubs = {a.hub_id for a in store.list_alerts(conn, setup.ring) if a.kind == "hub_offline"}
    assert hubs == {"hub-1"}
    hub_status(conn, setup, True, at(17))
    assert open_kinds(conn) == [] and open_kinds(conn, "patient-b") == []
    assert history(conn) == [("hub_offline", "resolved")]
    # a revoked hub is no longer watched: nothing opens for it
    hub_status(conn, setup, False, at(18))
    registry.revoke_hub(conn, "hub-1", "test")
    evaluate(conn, SETTINGS, at(120))
    assert open_kinds(conn) == [] and open_kinds(conn, "patient-b") == []


def test_acknowledgement_needs_a_note_and_an_assigned_clinician(
    conn: Conn, setup: ClinicSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest(conn, setup, [glucose("patient-a", at(0), mg_dl="60")], at(0))
    (alert,) = store.list_alerts(conn, setup.ring)
    for who, note, why in [("dr-a", "  ", "needs a note"), ("root", "ok", "only an enabled"),
                           ("nobody", "ok", "only an enabled"), ("dr-b", "ok", "no such alert")]:
        with pytest.raises(UsageError, match=why):
            store.acknowledge(conn, setup.ring, alert.id, who, note, at(1))
    with pytest.raises(UsageError, match="no such alert"):
        store.acknowledge(conn, setup.ring, alert.id + 100, "dr-a", "ok", at(1))
    assert audited(conn, "alert.ack") == 0
    assert main(["--config", str(setup.path), "alerts", "ack", str(alert.id), "--by", "dr-a",
                 "--note", "called the patient; juice taken"]) == 0
    assert main(["--config", str(setup.path), "alerts", "ack", str(alert.id), "--by", "dr-a",
                 "--note", "again"]) == 2  # acknowledged already
    capsys.readouterr()
    assert main(["--config", str(setup.path), "alerts", "list", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["state"] == "acknowledged" and doc["acknowledged_by"] == "dr-a"
    assert doc["note"] == "called the patient; juice taken" and doc["kind"] == "glucose_low"
    notes = [bytes(r[0]) for r in conn.execute("SELECT note_enc FROM alerts")]
    assert not any(b"juice" in n for n in notes)  # sealed
    assert audited(conn, "alert.ack") == 1
    # acknowledged is still unresolved: counted, and resolved when the condition clears
    assert status.collect(conn)["alerts_open"] == 1
    ingest(conn, setup, [glucose("patient-a", at(2), mg_dl="100")], at(2))
    assert status.collect(conn)["alerts_open"] == 0
    assert [a.state for a in store.list_alerts(conn, setup.ring, include_resolved=True)] == [
        "resolved"]
    with pytest.raises(UsageError, match="resolved already"):
        store.acknowledge(conn, setup.ring, alert.id, "dr-a", "late", at(3))
    assert [a.id for a in store.list_alerts(conn, setup.ring, include_resolved=True,
                                            clinician="dr-b")] == []


def test_thresholds_cli(setup: ClinicSetup, conn: Conn,
                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ["--config", str(setup.path), "alerts", "thresholds"]
    assert main([*cfg, "patient-a", "--glucose-low", "80", "--hr-sustain", "4"]) == 0
    out = capsys.readouterr().out
    assert "glucose_low_mg_dl = 80" in out and "heart_rate_sustain_samples = 4" in out
    assert main([*cfg, "patient-a", "--glucose-low", "300"]) == 2  # above high: refused
    assert main([*cfg, "patient-a", "--hr-sustain", "2.5"]) == 2
    assert main([*cfg, "patient-x", "--glucose-low", "80"]) == 2
    capsys.readouterr()
    assert main([*cfg, "patient-a"]) == 0
    assert "glucose_low_mg_dl = 80" in capsys.readouterr().out
    ingest(conn, setup, [glucose("patient-a", at(0), mg_dl="75")], at(0))
    assert open_kinds(conn) == ["glucose_low"]  # low for this patient, in range by default
    assert main([*cfg, "patient-a", "--clear"]) == 0
    assert "glucose_low_mg_dl = 70" in capsys.readouterr().out
    assert audited(conn, "alert.thresholds") == 2


def test_one_evaluator_at_a_time(setup: ClinicSetup, conn: Conn) -> None:
    ingest(conn, setup, [hr("patient-a", at(0), 70)], at(0))
    seen: list[bool] = []
    with connect(setup.cfg.db.dsn) as other:
        def meanwhile() -> None:
            # while this evaluator holds the lock, a second one (another connection, as
            # another worker) skips its round without touching anything
            second = evaluate(other, SETTINGS, at(120))
            seen.append(second.ran)
            assert open_kinds(conn) == []

        first = evaluate(conn, SETTINGS, at(120), on_locked=meanwhile)
        assert seen == [False] and first.ran and first.changes == 2
        assert evaluate(other, SETTINGS, at(121)).ran  # released after the round
        # a holder that dies (its connection closed) does not block the others
        dying = connect(setup.cfg.db.dsn)
        with exclusive(dying) as got:
            assert got
            assert not evaluate(other, SETTINGS, at(122)).ran
            dying.close()
        row = None
        with psycopg.connect(setup.cfg.db.dsn) as probe:  # the server saw the session end
            row = probe.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                ).fetchone()
        assert row is not None and row[0] == 0
        assert evaluate(other, SETTINGS, at(123)).ran
    assert open_kinds(conn) == ["stale"]


def test_retention_purges_old_raw_heart_rate_and_keeps_rollups(
    conn: Conn, setup: ClinicSetup
) -> None:
    old_t = (NOW - dt.timedelta(days=3)).replace(second=0)
    old = [hr("patient-a", old_t + dt.timedelta(seconds=s), 60 + s) for s in range(30)]
    ingest(conn, setup, [*old, glucose("patient-a", old_t, mg_dl="100")], old_t)
    new = [hr("patient-a", at(0) + dt.timedelta(seconds=s), 80) for s in range(5)]
    ingest(conn, setup, new, at(0))
    keep_all = Settings(TH, 900, raw_retention_days=0)
    assert evaluate(conn, keep_all, at(1)).purged == 0
    result = evaluate(conn, Settings(TH, 900, raw_retention_days=2), at(1))
    assert result.purged == 30
    left = {str(r[0]) for r in conn.execute("SELECT identifier FROM observations")}
    assert left == {r.id for r in new} | {glucose("patient-a", old_t, mg_dl="100").id}
    ((_, stats),) = rollups.read(conn, setup.ring, "patient-a", old_t,
                                    old_t + dt.timedelta(minutes=1))
    assert stats == rollups.MinuteStats(30, Decimal(60), Decimal(89), Decimal(sum(range(60, 90))))
    row = conn.execute("SELECT detail FROM audit_log WHERE action = 'retention.purge'"
                       ).fetchone()
    assert row is not None and json.loads(row[0])["rows"] == 30
    assert evaluate(conn, Settings(TH, 900, raw_retention_days=2), at(2)).purged == 0
