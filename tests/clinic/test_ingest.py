"""Ingest against real mosquitto and real PostgreSQL: two workers as subprocesses, SIGKILLed
and restarted mid-stream; a hostile publisher beside good traffic."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clinic.cli import main
from clinic.db import registry
from clinic.db.connect import connect
from clinic.devdb import DevPostgres
from edge.testing import eventually
from edge.uplink.pki import make_ca
from edge.uplink.topics import offline_document
from tests.clinic.conftest import ClinicSetup, write_setup
from tests.clinic.support import HubClient, glucose, issue_client, load_issued, sealed_bundle
from tests.support.mosquitto import Broker
from tests.support.pki import TestPki
from tests.support.uplink_fakes import make_readings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PATIENTS = ("patient-a", "patient-b")


class Workers:
    """``clinic ingest --worker NAME`` subprocesses, each with its own certificate (the
    config's ``{worker}`` paths; the broker makes the certificate's CN the client id)."""

    def __init__(self, setup: ClinicSetup, log_dir: Path) -> None:
        self.setup = setup
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0
        self.current: dict[str, Path] = {}

    async def ready(self, *names: str) -> None:
        """Wait until each worker has its subscription (it logs after the SUBACK)."""
        for n in names:
            log = self.current[n]

            def subscribed(log: Path = log) -> bool:
                return b"ingest.connected" in log.read_bytes()

            await eventually(subscribed, within_s=30, what=f"worker {n} subscribed")

    def start(self, name: str) -> None:
        self.starts += 1
        self.current[name] = self.log_dir / f"worker-{name}-{self.starts}.log"
        log = self.current[name].open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "clinic", "--config", str(self.setup.path), "ingest",
             "--worker", name], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()

    def logs(self) -> str:
        return "".join(f.read_text(errors="replace") for f in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def clinic(tmp_path: Path, dsn: str, tpki: TestPki, broker: Broker) -> ClinicSetup:
    s = write_setup(tmp_path, dsn, tpki, broker.port)
    with connect(dsn) as conn:
        registry.enroll_hub(conn, "hub-1", "test")
        for p in PATIENTS:
            registry.add_patient(conn, s.ring, p, "hub-1", None, "test")
    return s


@pytest.fixture
def workers(clinic: ClinicSetup, tmp_path: Path) -> Iterator[Workers]:
    d = tmp_path / "worker-logs"
    d.mkdir()
    w = Workers(clinic, d)
    try:
        yield w
    finally:
        w.stop_all()


def hub_client(broker: Broker, pki: TestPki, cn: str | None = None) -> HubClient:
    ident = pki.hub if cn is None else issue_client(pki.dir, pki.ca, cn)
    return HubClient(broker.host, broker.port, pki.ca.cert, ident, f"pub-{cn or pki.hub_id}")


def scalar(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def status(clinic: ClinicSetup) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "clinic", "--config", str(clinic.path), "status", "--json"],
        capture_output=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


async def test_sigkilled_workers_lose_nothing_and_store_nothing_twice(
    clinic: ClinicSetup, broker: Broker, workers: Workers, dsn: str
) -> None:
    pub = clinic.ring.e2e[clinic.ring.current_e2e].public_key()
    signer = load_issued(clinic.pki.hub)
    workers.start("1")
    workers.start("2")
    await workers.ready("1", "2")
    readings = make_readings(1200, PATIENTS)
    sent: set[str] = set()
    kills = 0
    with hub_client(broker, clinic.pki) as hub:
        hub.status("edge/v1", "hub-1", state="online", at="2030-01-01T00:00:00Z", queue_depth=5)
        for i in range(0, len(readings), 10):
            chunk = [r for r in readings[i:i + 10] if r.patient == "patient-a"]
            chunk2 = [r for r in readings[i:i + 10] if r.patient == "patient-b"]
            for patient, rs in (("patient-a", chunk), ("patient-b", chunk2)):
                hub.publish(f"edge/v1/hub-1/obs/{patient}",
                            sealed_bundle(rs, "hub-1", signer, pub))
                sent.update(r.id for r in rs)
            # a re-sent message, as a hub re-sends after a lost PUBACK
            if i % 100 == 0:
                hub.publish("edge/v1/hub-1/obs/patient-a",
                            sealed_bundle(chunk, "hub-1", signer, pub))
            if i % 100 == 50 and kills < 12:
                victim = "1" if kills % 2 == 0 else "2"
                # kill only once the worker has committed something since its (re)start
                before = scalar(dsn, "SELECT count(*) FROM observations")

                def progressed(before: int = before) -> bool:
                    return scalar(dsn, "SELECT count(*) FROM observations") > before

                await eventually(progressed, within_s=60, what="progress before a kill")
                workers.kill(victim)
                kills += 1
                workers.start(victim)
    assert kills >= 10
    await eventually(lambda: scalar(dsn, "SELECT count(*) FROM observations") >= len(sent),
                     within_s=120, what="every reading stored")
    ids = {r[0] for r in psycopg.connect(dsn).execute("SELECT identifier FROM observations")}
    assert ids == sent
    assert scalar(dsn, "SELECT count(*) FROM observations") == len(sent)
    assert scalar(dsn, "SELECT count(*) FROM quarantine") == 0
    doc = status(clinic)
    assert doc["observations"] == len(sent)
    assert isinstance(doc["duplicates"], int) and doc["duplicates"] >= 10 * 5
    hubs = doc["hubs"]
    assert isinstance(hubs, dict) and hubs["hub-1"]["online"] is True
    assert hubs["hub-1"]["queue_depth"] == 5
    # stored resources are sealed: no pseudonym, no FHIR text in the rows
    with psycopg.connect(dsn) as conn:
        blobs = [bytes(r[0]) for r in conn.execute("SELECT resource_enc FROM observations")]
    assert not any(b"Observation" in b or b"patient-a" in b or b"8867-4" in b for b in blobs)
    assert "patient-a" not in workers.logs() and "patient-b" not in workers.logs()


async def test_hostile_publishers_are_counted_and_quarantined_while_good_traffic_flows(
    clinic: ClinicSetup, broker: Broker, workers: Workers, dsn: str
) -> None:
    pki = clinic.pki
    # The broker drops anything over its message_size_limit (512 KiB; its own tests show
    # that): the clinic's own limit, set below the broker's here, is what refuses the 400 KiB
    # message below.
    clinic.path.write_text(clinic.path.read_text() + "\n[ingest]\nmax_message_bytes = 262144\n")
    oversize = 400 * 1024
    pub = clinic.ring.e2e[clinic.ring.current_e2e].public_key()
    hub1 = load_issued(pki.hub)
    with connect(dsn) as conn:
        registry.enroll_hub(conn, "hub-2", "test")
        registry.add_patient(conn, clinic.ring, "patient-r", "hub-2", None, "test")
        registry.revoke_hub(conn, "hub-2", "test")
    workers.start("1")
    workers.start("2")
    await workers.ready("1", "2")
    good = make_readings(40, ("patient-a",))
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    rogue = hub_client(broker, pki, "hub-9")
    with hub_client(broker, pki) as hub, hub_client(broker, pki, "hub-2") as revoked, rogue:
        hub2 = load_issued(revoked.identity)
        other_ca = issue_client(pki.dir / "rogue", pki.ca, "hub-1", ca=make_ca("rogue CA"))
        t = "edge/v1/hub-1/obs/patient-a"
        hub.publish(t, sealed_bundle(good[:10], "hub-1", hub1, pub))
        hub.publish(t, sealed_bundle(good[10:20], "hub-1", hub1, stranger))  # wrong key
        hub.publish(t, sealed_bundle(good[10:20], "hub-1", load_issued(other_ca), pub))
        hub.publish("edge/v1/hub-1/obs/patient-r",  # a patient hub-1 does not serve
                    sealed_bundle(make_readings(3, ("patient-r",)), "hub-1", hub1, pub))
        revoked.publish("edge/v1/hub-2/obs/patient-r",
                        sealed_bundle(make_readings(3, ("patient-r",)), "hub-2", hub2, pub))
        rogue.publish("edge/v1/hub-9/obs/patient-a", sealed_bundle(
            good[:3], "hub-9", load_issued(rogue.identity), pub))  # never enrolled
        hub.publish(t, b"\x00garbage\xff" * 10)
        hub.publish(t, os.urandom(oversize))
        hub.publish(t, sealed_bundle(good[20:], "hub-1", hub1, pub))
    want = {"bad_envelope": 2, "bad_signature": 1, "patient_not_enrolled": 1,
            "hub_revoked": 1, "unknown_hub": 1, "oversize": 1}
    await eventually(lambda: scalar(dsn, "SELECT count(*) FROM quarantine") >= 7 and scalar(
        dsn, "SELECT count(*) FROM observations") >= 30, within_s=60, what="all judged")
    doc = status(clinic)
    assert doc["rejected"] == want
    assert doc["observations"] == 30
    ids = {r[0] for r in psycopg.connect(dsn).execute("SELECT identifier FROM observations")}
    assert ids == {r.id for r in good[:10] + good[20:]}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT reason, size, payload_enc FROM quarantine").fetchall()
        audited = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'ingest.reject'").fetchone()
    assert audited is not None and audited[0] == 7
    for reason, size, blob in rows:
        if reason == "oversize":
            assert size == oversize and blob is None
        else:
            # kept, sealed: not the bytes that came in
            assert blob is not None and b"garbage" not in bytes(blob)
    assert all(p.poll() is None for p in workers.procs.values()), "a worker died"


async def test_postgresql_restart_mid_stream_loses_nothing(
    clinic: ClinicSetup, broker: Broker, workers: Workers, dsn: str, pg: DevPostgres
) -> None:
    pub = clinic.ring.e2e[clinic.ring.current_e2e].public_key()
    signer = load_issued(clinic.pki.hub)
    workers.start("1")
    workers.start("2")
    await workers.ready("1", "2")
    readings = make_readings(300, ("patient-a",))
    with hub_client(broker, clinic.pki) as hub:
        for i in range(0, 300, 10):
            if i == 100:
                pg.stop()  # the workers keep their batches unacknowledged and retry
            if i == 200:
                pg.restart()
            hub.publish("edge/v1/hub-1/obs/patient-a",
                        sealed_bundle(readings[i:i + 10], "hub-1", signer, pub))
    await eventually(lambda: scalar(dsn, "SELECT count(*) FROM observations") >= 300,
                     within_s=90, what="every reading stored after the restart")
    assert scalar(dsn, "SELECT count(DISTINCT identifier) FROM observations") == 300
    assert scalar(dsn, "SELECT count(*) FROM quarantine") == 0
    assert "ingest.store_unavailable" in workers.logs()
    assert all(p.poll() is None for p in workers.procs.values()), "a worker died"


async def test_alerts_open_and_resolve_end_to_end(
    clinic: ClinicSetup, broker: Broker, workers: Workers, dsn: str
) -> None:
    """Real workers (with their periodic evaluators), real broker: an urgent low opens and
    resolves from published readings; a hub's Last Will opens hub_offline, online resolves."""
    clinic.path.write_text(clinic.path.read_text() + "\n[alerts]\nhub_offline_after_s = 1\n"
                           "evaluate_interval_s = 1\n")
    pub = clinic.ring.e2e[clinic.ring.current_e2e].public_key()
    signer = load_issued(clinic.pki.hub)
    workers.start("1")
    workers.start("2")
    await workers.ready("1", "2")
    t0 = datetime.now(UTC).replace(microsecond=0)

    def kinds(state: str = "open") -> list[tuple[str, str]]:
        with psycopg.connect(dsn) as conn:
            return sorted((str(p), str(k)) for p, k in conn.execute(
                "SELECT patient, kind FROM alerts WHERE state = %s", (state,)))

    t = "edge/v1/hub-1/obs/patient-a"
    with hub_client(broker, clinic.pki) as hub:
        hub.status("edge/v1", "hub-1", state="online", at=t0.isoformat(), queue_depth=0)
        hub.publish(t, sealed_bundle([glucose("patient-a", t0, mg_dl="48")], "hub-1", signer,
                                     pub))
        await eventually(lambda: kinds() == [("patient-a", "glucose_urgent_low")],
                         within_s=30, what="the urgent low alert")
        assert status(clinic)["alerts_open"] == 1
        hub.publish(t, sealed_bundle([glucose("patient-a", t0 + timedelta(minutes=5),
                                              mg_dl="110")], "hub-1", signer, pub))
        await eventually(lambda: kinds("resolved") == [("patient-a", "glucose_urgent_low")],
                         within_s=30, what="the urgent low resolved")
        # the Last Will, as the broker publishes it for a hub that vanished
        hub.publish("edge/v1/hub-1/status", offline_document("hub-1"), retain=True)
        await eventually(lambda: kinds() == [("patient-a", "hub_offline"),
                                             ("patient-b", "hub_offline")],
                         within_s=30, what="hub_offline for both patients")
        hub.status("edge/v1", "hub-1", state="online",
                   at=(datetime.now(UTC) + timedelta(seconds=1)).isoformat(), queue_depth=0)
        await eventually(lambda: kinds() == [], within_s=30, what="hub_offline resolved")
    assert status(clinic)["alerts_open"] == 0
    logs = workers.logs()
    assert "patient-a" not in logs and "patient-b" not in logs


async def test_a_retained_bundle_is_not_replayed_but_the_retained_status_is_read(
    clinic: ClinicSetup, broker: Broker, workers: Workers, dsn: str
) -> None:
    """The observation filter is subscribed with retain handling 2 (mosquitto sends retained
    messages to shared subscriptions): a stale retained Bundle is not ingested again at each
    (re)subscription. The status filter keeps the default: the hub's retained status counts."""
    pub = clinic.ring.e2e[clinic.ring.current_e2e].public_key()
    signer = load_issued(clinic.pki.hub)
    stale, live = make_readings(5, ("patient-a",)), make_readings(5, ("patient-a",), start=100)
    t = "edge/v1/hub-1/obs/patient-a"
    with hub_client(broker, clinic.pki) as hub:
        hub.publish(t, sealed_bundle(stale, "hub-1", signer, pub), retain=True)
        hub.status("edge/v1", "hub-1", state="online", at="2030-01-01T00:00:00Z", queue_depth=3)
        workers.start("1")
        await workers.ready("1")
        # The broker sends retained messages right after the SUBACK, so a replayed Bundle would
        # reach the worker before this one, in the same batch or an earlier one.
        hub.publish(t, sealed_bundle(live, "hub-1", signer, pub))
    await eventually(lambda: scalar(dsn, "SELECT count(*) FROM observations") >= len(live),
                     within_s=30, what="the live Bundle stored")
    ids = {r[0] for r in psycopg.connect(dsn).execute("SELECT identifier FROM observations")}
    assert ids == {r.id for r in live}
    hubs = status(clinic)["hubs"]
    assert isinstance(hubs, dict) and hubs["hub-1"]["online"] is True
    assert hubs["hub-1"]["queue_depth"] == 3


def _identity_config(setup: ClinicSetup, cert: Path, key: Path, name: str) -> Path:
    text = setup.path.read_text()
    text = text.replace(str(setup.cfg.broker.client_cert), str(cert))
    text = text.replace(str(setup.cfg.broker.client_key), str(key))
    path = setup.path.with_name(name)
    path.write_text(text)
    return path


def test_a_worker_starts_only_with_its_own_certificate(
    setup: ClinicSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker makes a certificate's CN the client id, so a worker holding another
    worker's (or anyone's) certificate would connect as that identity and take over its
    session: `clinic ingest` refuses (exit 2, one line) and `clinic check-config` says the
    same. Only refusals run here; the workers above start with their own certificates."""
    pki = setup.pki

    def refused(config: Path, *args: str) -> list[str]:
        capsys.readouterr()
        assert main(["--config", str(config), *args]) == 2
        return capsys.readouterr().err.strip().splitlines()

    assert main(["--config", str(setup.path), "check-config"]) == 0  # workers 1 and 2
    # a worker without a certificate of its own
    err = refused(setup.path, "ingest", "--worker", "3")
    assert len(err) == 1 and "clinic-1-ingest-3.crt does not exist" in err[0], err
    assert refused(setup.path, "ingest", "--worker", "../1") == [
        "clinic: --worker must be 1-32 letters, digits, '.', '_' or '-' (starting with a "
        "letter or digit)"]
    # one certificate without {worker}: worker 1's serves worker 1 only
    one = _identity_config(setup, pki.dir / "clinic-1-ingest-1.crt",
                           pki.dir / "clinic-1-ingest-1.key", "one.toml")
    assert main(["--config", str(one), "check-config"]) == 0
    err = refused(one, "ingest", "--worker", "2")
    assert len(err) == 1 and "has CN 'clinic-1-ingest-1', but worker 2 must connect as " \
        "'clinic-1-ingest-2'" in err[0], err
    # per-worker paths where worker 3's file holds a clinician's certificate
    d = tmp_path / "ingest-certs"
    d.mkdir()
    for worker, files in (("1", (pki.dir / "clinic-1-ingest-1.crt",
                                 pki.dir / "clinic-1-ingest-1.key")),
                          ("3", (pki.clinician("clinician-1").cert,
                                 pki.clinician("clinician-1").key))):
        shutil.copy(files[0], d / f"ingest-{worker}.crt")
        shutil.copy(files[1], d / f"ingest-{worker}.key")
    mixed = _identity_config(setup, d / "ingest-{worker}.crt", d / "ingest-{worker}.key",
                             "mixed.toml")
    from_check = refused(mixed, "check-config")
    from_ingest = refused(mixed, "ingest", "--worker", "3")
    assert from_check == from_ingest and len(from_ingest) == 1
    assert "ingest-3.crt has CN 'clinician-1', but worker 3 must connect as " \
        "'clinic-1-ingest-3'" in from_ingest[0]
    # the clinic's old shared identity (CN = clinic.id) is nobody's worker
    shared = _identity_config(setup, pki.clinician("clinician-1").cert,
                              pki.clinician("clinician-1").key, "shared.toml")
    err = refused(shared, "check-config")
    assert len(err) == 1 and "not an ingest worker's (clinic-1-ingest-NAME)" in err[0], err
