"""Clinic benchmark: ``clinic ingest`` workers against a real mosquitto (mutual TLS, the shipped
config and ACL) and a throwaway PostgreSQL (``clinic.devdb``, fsync, synchronous_commit and
full_page_writes on, buffers and WAL sized for 10,000-row commits: :data:`PG_SETTINGS`; under
``/var/tmp``: a real disk), one run, JSON lines.

- ``clinic.ingest_per_s``: readings stored per second by two ``clinic ingest`` worker
  processes (production batch sizes: ``receive_maximum`` and ``batch_max`` at their defaults)
  from a backlog of 200,000 readings (20,000 with ``--quick``) with e2e on. The backlog is
  built as a hub builds it — readings one a second for each of 20 patients, as their straps
  send them (so each minute's heart-rate rollup is updated by several batches of both
  workers: harder than spreading the readings thinly), ``edge.fhir`` Bundles of 50 readings
  of one patient, each sealed with ``edge.uplink.envelope.seal`` (JWS ES256 by the hub's key,
  JWE to the clinic's key) and published QoS 1 to ``edge/v1/<hub>/obs/<patient>`` — while
  both workers are stopped (their persistent sessions hold it at the broker). Then both
  workers are started and the clock runs from their launch until the workers have committed
  every message (their counter, written in the same transactions; then every reading is
  checked to be in ``observations``, once). ``store_window_per_s`` is the same count over the
  span of PostgreSQL's own commit timestamps (first to last commit: the workers' start-up and TLS
  handshakes left out). ``cpu_us_per_reading`` is the CPU time of the workers, PostgreSQL and
  mosquitto over that phase per reading (less skewed by other work on the box than the rate);
  ``readings_per_commit`` the mean batch.
- ``clinic.ingest_compressed_per_s``: the same with the backlog sealed as a hub with
  ``[e2e] compress = true`` seals it (JWE ``zip`` DEF: ~11 KB a message instead of ~122 KB).
  ``mean_message_bytes`` is printed with both.
- The same without e2e is not measured: the clinic accepts only sealed envelopes (every
  observation message goes through ``open_envelope``; a plain Bundle is refused as
  ``bad_envelope``), so a line says so (``clinic.ingest_plain_per_s``, ``skipped``).
- ``clinic.hub_to_store_p99_ms`` (and p50): one reading every 20 ms (50 readings/s) appended
  to a real SQLCipher ``Vault`` and forwarded by the real ``Forwarder`` with the sealing
  encoder, as ``edge run`` wires it with ``[e2e] mode = "sign+encrypt"``, through the broker to
  two running workers. For each reading: the wall-clock time just before ``vault.append``
  on the hub, and the commit time of the row that stored it, read from PostgreSQL itself
  (``track_commit_timestamp = on``; ``pg_xact_commit_timestamp(xmin)``). Same machine, same
  clock. The stream starts once the forwarder's link is up; its first 2 s are a warm-up (the
  first messages pay one-off costs: imports, first JOSE keys, first connections, ~0.6 s
  measured), reported as ``warmup_max_ms`` and not counted in p50/p99.

The workers run on an environment holding only what a clinic installs
(:func:`bench.product_venv.clinic_python`; ``--dev-venv``: this interpreter), as installed
workers start: the development environment's extra packages add ~0.15 s of CPU to each start.

Run: ``python -m bench clinic`` or ``python -m bench.clinic_bench [--quick]``. The machine's load
average is printed with the figures: other work on the box skews them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg import sql

import bench
from bench.product_venv import clinic_python
from clinic import config as config_mod
from devtools.broker import ingest_identity
from devtools.pki import load_issued
from edge import fhir
from edge.clock import SystemClock
from edge.config import VaultConfig
from edge.log import configure_logging
from edge.readings import GlucoseReading, HeartRateReading
from edge.testing.uplink import AllowAll
from edge.uplink.envelope import CONTENT_TYPE, seal
from edge.uplink.forwarder import Forwarder
from edge.uplink.mqtt import TlsMqttConnector
from edge.uplink.ports import MqttLink, Will
from edge.uplink.sealing import SealingEncoder, load_signer
from edge.uplink.tls import client_cert_not_after
from edge.vault import Vault
from tests.clinic.support import HubClient, issue_client
from tests.e2e.clinic_rig import CLINIC_ID, ClinicRig, clinic_rig
from tests.support.mosquitto import Broker, start_broker
from tests.support.pki import TestPki, make_pki
from tests.support.uplink_fakes import make_readings

AnyReading = HeartRateReading | GlucoseReading
TARGETS: dict[str, tuple[str, float]] = {
    "clinic.ingest_per_s": (">=", 20_000),
    "clinic.ingest_compressed_per_s": (">=", 20_000),
    "clinic.hub_to_store_p99_ms": ("<=", 50),
}
#: a real disk for PostgreSQL
DISK = Path("/var/tmp")
HUB = "hub-bench"
PATIENTS = tuple(f"patient-{i:02d}" for i in range(20))
WORKERS = ("1", "2")
BUNDLE = 50
PREFIX = "edge/v1"
#: the throwaway cluster sized for a batch of 10,000 rows a commit (as a clinic's server would
#: be); durability untouched: fsync, synchronous_commit and full_page_writes stay on. WAL
#: buffers hold a whole batch's WAL (~20 MB) so the committing backend does not stall writing
#: it out piecemeal; checkpoints wait until after the run instead of landing inside it.
PG_SETTINGS = {"shared_buffers": "256MB", "wal_buffers": "64MB", "max_wal_size": "4GB",
               "checkpoint_timeout": "30min"}
#: the first seconds of the latency stream are not counted (reported as warmup_max_ms): the
#: first messages pay one-off costs (imports, first JOSE keys, first connections)
WARMUP_S = 2.0


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    """One figure of this benchmark (see :func:`bench.emit`), with the machine's load."""
    bench.emit(figure, value, unit, TARGETS, load_avg=[round(x, 2) for x in os.getloadavg()],
               **extra)


def note(text: str) -> None:
    print(f"# clinic bench: {text}", file=sys.stderr, flush=True)


# --- the rig ---------------------------------------------------------------------------------


def worker_config(rig: ClinicRig, pki: TestPki, port: int, name: str) -> Path:
    """Worker ``name``'s config: its own certificate, production batch sizes (defaults)."""
    ident = issue_client(pki.dir, pki.ca, ingest_identity(CLINIC_ID, name))
    path = rig.workdir / f"clinic-{name}.toml"
    path.write_text(f"""
[clinic]
id = "{CLINIC_ID}"
[db]
dsn = "{rig.dsn}"
[keys]
provider = "file"
dir = "{rig.keys_dir}"
[hubs]
ca_file = "{pki.ca.cert}"
[broker]
host = "127.0.0.1"
port = {port}
ca_file = "{pki.ca.cert}"
client_cert = "{ident.cert}"
client_key = "{ident.key}"
pins = ["{pki.broker.pin}"]
tls_min_version = "1.3"
topic_prefix = "{PREFIX}"
share_group = "clinic"
[web]
listen = "127.0.0.1:8443"
tls_cert = "/nonexistent/web.pem"
tls_key = "/nonexistent/web.key"
[log]
level = "info"
""")
    config_mod.load(path)
    rig.configs[name] = path
    return path


@contextlib.contextmanager
def rig_up(tmp: Path) -> Iterator[tuple[ClinicRig, TestPki, Broker]]:
    """PostgreSQL (commit timestamps on), the clinic enrolled, a broker admitting the hub and
    both workers, one config per worker."""
    with clinic_rig(tmp / "clinic") as rig:
        with psycopg.connect(rig.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
            for name, value in PG_SETTINGS.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(value)))
        rig.pg.restart()
        pki = make_pki(tmp, HUB, hostile=())
        broker = start_broker(tmp, pki, debug=False,
                              clinic_ids=[ingest_identity(CLINIC_ID, w) for w in WORKERS])
        try:
            for w in WORKERS:
                worker_config(rig, pki, broker.port, w)
            rig.enroll(HUB, list(PATIENTS))
            yield rig, pki, broker
        finally:
            rig.stop_workers()
            broker.stop()


#: how many readings are stored: exact, but a scan of the whole table
STORED_SQL = "SELECT count(*) FROM observations"
#: how many messages the workers committed (the counter is written in the transaction that
#: stores the message's rows): a few rows to read however large ``observations`` grows. A
#: count(*) polled every 50 ms was itself a PostgreSQL backend scanning hundreds of MB, on
#: the cores the workers need, more so the larger the backlog.
COMMITTED_SQL = "SELECT coalesce(sum(value), 0) FROM ingest_counters WHERE name = 'messages'"


def wait_for(rig: ClinicRig, query: str, target: int, timeout: float) -> None:
    """Until ``query`` (one number) reaches ``target``: polled every 50 ms on one connection;
    a dead worker is an error."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(rig.dsn, autocommit=True) as conn:
        def value() -> int:
            row = conn.execute(query.encode()).fetchone()  # a constant of this module
            return int(row[0]) if row else 0
        while value() < target:
            dead = [w for w, p in rig.workers.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"worker {dead[0]} exited:\n{rig.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {value()} of {target} in {timeout:.0f} s ({query})")
            time.sleep(0.05)


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command: state is field 3, utime/stime/cutime/cstime are fields 14-17
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (the workers, once stopped)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def server_cpu_s(rig: ClinicRig, broker: Broker) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL (the postmaster with its exited backends) and of
    mosquitto."""
    postmaster = int((rig.pg.data_dir / "postmaster.pid").read_text().split()[0])
    assert broker.proc is not None
    return {"postgres": proc_cpu_s(postmaster), "mosquitto": proc_cpu_s(broker.proc.pid)}


def start_workers(rig: ClinicRig) -> None:
    for w in WORKERS:
        rig.start_worker(w)


# --- clinic.ingest_per_s ---------------------------------------------------------------------


def sealed_backlog(pki: TestPki, recipient: ec.EllipticCurvePublicKey, n: int, *,
                   compress: bool = False) -> Iterator[tuple[str, bytes]]:
    """(topic, sealed Bundle of ``BUNDLE`` readings of one patient), as a hub sends them
    (``compress``: as a hub with ``[e2e] compress = true``)."""
    signer = load_issued(pki.hub)
    der = signer.cert.public_bytes(serialization.Encoding.DER)
    chunk = 10_000
    for start in range(0, n, chunk):
        by_patient: dict[str, list[AnyReading]] = defaultdict(list)
        for r in make_readings(min(chunk, n - start), PATIENTS, start=start,
                               per_patient_clock=True):
            by_patient[r.patient].append(r)
        for patient, readings in by_patient.items():
            for i in range(0, len(readings), BUNDLE):
                body = fhir.bundle_bytes(readings[i:i + BUNDLE], hub_id=HUB)
                token = seal(body, signing_key=signer.key, cert_chain_der=[der],
                             recipient=recipient, compress=compress)
                yield f"{PREFIX}/{HUB}/obs/{patient}", token.encode()


#: what a backlog run leaves behind, emptied before the next run
RUN_TABLES = ("observations", "hr_rollups", "ingest_counters", "alerts", "alert_state")


def ingest_rate(rig: ClinicRig, pki: TestPki, broker: Broker, n: int, *,
                compress: bool = False) -> None:
    with psycopg.connect(rig.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in RUN_TABLES)))
    # The workers' persistent sessions and shared subscriptions exist first, then they stop:
    # the broker queues the backlog for them, as for workers that were down.
    start_workers(rig)
    rig.wait_subscribed()
    rig.stop_workers()
    recipient = rig.ring.e2e[rig.ring.current_e2e].public_key()
    t0 = time.perf_counter()
    messages = sent_bytes = 0
    with HubClient("127.0.0.1", broker.port, pki.ca.cert, pki.hub, HUB) as hub:
        for topic, payload in sealed_backlog(pki, recipient, n, compress=compress):
            hub.publish(topic, payload)
            messages += 1
            sent_bytes += len(payload)
    note(f"published {messages} sealed Bundles ({n} readings) in "
         f"{time.perf_counter() - t0:.1f} s; starting two workers")
    servers0, workers0 = server_cpu_s(rig, broker), children_cpu_s()
    t0 = time.perf_counter()
    start_workers(rig)
    wait_for(rig, COMMITTED_SQL, messages, timeout=max(600.0, n / 100))
    elapsed = time.perf_counter() - t0
    with psycopg.connect(rig.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(pg_xact_commit_timestamp(xmin)) - "
            "min(pg_xact_commit_timestamp(xmin))), count(*), count(DISTINCT identifier), "
            "count(DISTINCT xmin::text) FROM observations").fetchone()
    assert row is not None
    window, rows, distinct, commits = float(row[0]), int(row[1]), int(row[2]), int(row[3])
    if rows != n or distinct != n:
        raise RuntimeError(f"stored {rows} rows ({distinct} distinct) for {n} readings")
    rig.stop_workers()  # their backends exit: PostgreSQL's CPU is complete
    servers = server_cpu_s(rig, broker)
    # CPU per reading of each part: less sensitive than the rate to other work on the box
    cpu_us = {"workers": (children_cpu_s() - workers0) * 1e6 / n} | {
        k: (servers[k] - servers0[k]) * 1e6 / n for k in servers}
    emit("clinic.ingest_compressed_per_s" if compress else "clinic.ingest_per_s",
         n / elapsed, "readings/s", e2e="sign+encrypt", **({"zip": "DEF"} if compress else {}),
         readings=n, bundles=messages, readings_per_bundle=BUNDLE, workers=len(WORKERS),
         mean_message_bytes=round(sent_bytes / messages),
         elapsed_s=round(elapsed, 2), store_window_per_s=round(n / window) if window else None,
         cpu_us_per_reading={k: round(v, 1) for k, v in cpu_us.items()},
         readings_per_commit=round(n / commits))


def plain_line() -> None:
    emit("clinic.ingest_plain_per_s", 0, "readings/s", e2e="off", skipped=(
        "the clinic accepts only sealed JOSE envelopes: every observation message goes "
        "through open_envelope, a plain FHIR Bundle is rejected as bad_envelope"))


# --- clinic.hub_to_store_p99_ms --------------------------------------------------------------


async def forward_at_rate(pki: TestPki, broker: Broker, recipient: ec.EllipticCurvePublicKey,
                          db: Path, readings: Sequence[AnyReading],
                          rate_hz: float) -> dict[str, float]:
    """Append ``readings`` one by one at ``rate_hz`` to a real vault drained by the real
    Forwarder (sealing); the wall-clock time before each append, by reading id."""
    cfg = pki.uplink_config(broker.port)
    sealer = SealingEncoder(HUB, load_signer(cfg), recipient)
    appended: dict[str, float] = {}
    delivered = 0
    all_delivered = asyncio.Event()

    def on_delivered(ids: Sequence[str]) -> None:
        nonlocal delivered
        delivered += len(ids)
        if delivered >= len(readings):
            all_delivered.set()

    vcfg = VaultConfig(path=db, key_provider="env", allow_env_key=True)
    async with await Vault.open(vcfg, os.urandom(32)) as vault:
        connector = TlsMqttConnector(cfg, HUB)
        connected = asyncio.Event()

        async def connect(will: Will) -> MqttLink:
            link = await connector(will)
            connected.set()
            return link

        fwd = Forwarder(cfg, HUB, vault, connector=connect,
                        clock=SystemClock(), consent=AllowAll(),
                        cert_not_after=client_cert_not_after(cfg), encoder=sealer,
                        content_type=CONTENT_TYPE, on_delivered=on_delivered)
        task = asyncio.create_task(fwd.run())
        try:
            await asyncio.wait_for(connected.wait(), 30)  # the stream starts on a live link
            interval = 1.0 / rate_hz
            start = time.perf_counter()
            for i, r in enumerate(readings):
                appended[r.id] = time.time()
                await vault.append([r])
                fwd.wake()
                delay = start + (i + 1) * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # the pace of the stream, not a wait for a result
            await asyncio.wait_for(all_delivered.wait(), 60)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return appended


def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def hub_to_store(rig: ClinicRig, pki: TestPki, broker: Broker, seconds: float,
                 tmp: Path) -> None:
    with psycopg.connect(rig.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE observations")
    start_workers(rig)
    rig.wait_subscribed()
    rate = 50.0
    readings = make_readings(int(rate * (seconds + WARMUP_S)), PATIENTS, start=10_000_000)
    recipient = rig.ring.e2e[rig.ring.current_e2e].public_key()
    (tmp / "hubvault").mkdir(mode=0o700)
    appended = asyncio.run(forward_at_rate(pki, broker, recipient,
                                           tmp / "hubvault" / "vault.db", readings, rate))
    wait_for(rig, STORED_SQL, len(readings), timeout=60)  # a small table here
    with psycopg.connect(rig.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT identifier, extract(epoch FROM "
                            "pg_xact_commit_timestamp(xmin)) FROM observations").fetchall()
    if len(rows) != len(readings):
        raise RuntimeError(f"{len(rows)} stored for {len(readings)} appended")
    first = min(appended.values())
    # (seconds into the stream, latency ms) per reading
    timed = sorted((appended[str(i)] - first, (float(at) - appended[str(i)]) * 1000)
                   for i, at in rows)
    warm = [ms for t, ms in timed if t < WARMUP_S]
    lat = [ms for t, ms in timed if t >= WARMUP_S]
    info = {"samples": len(lat), "rate_hz": rate, "workers": len(WORKERS),
            "e2e": "sign+encrypt", "max_ms": round(max(lat), 1),
            "warmup_s": WARMUP_S, "warmup_max_ms": round(max(warm), 1)}
    emit("clinic.hub_to_store_p50_ms", statistics.median(lat), "ms", **info)
    emit("clinic.hub_to_store_p99_ms", pct(lat, 99), "ms", **info)


def run(readings: int, latency_s: float, dev_venv: bool = False) -> None:
    configure_logging(level="error", stream=sys.stderr)
    python = sys.executable if dev_venv else str(clinic_python())
    with tempfile.TemporaryDirectory(prefix="clinic-bench-", dir=DISK) as tmp_s:
        tmp = Path(tmp_s)
        with rig_up(tmp) as (rig, pki, broker):
            rig.python = python
            ingest_rate(rig, pki, broker, readings)
            plain_line()
            ingest_rate(rig, pki, broker, readings, compress=True)
            hub_to_store(rig, pki, broker, latency_s, tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m bench`` (auto-discovered) and direct runs."""
    ap = argparse.ArgumentParser(prog="bench.clinic_bench")
    ap.add_argument("--quick", action="store_true",
                    help="a 20,000-reading backlog and 10 s of latency samples")
    ap.add_argument("--readings", type=int, default=None, help="backlog size (readings)")
    ap.add_argument("--latency-seconds", type=float, default=None)
    ap.add_argument("--dev-venv", action="store_true",
                    help="run the workers on this interpreter, not on a clinic-only one")
    args = ap.parse_args(argv)
    readings = args.readings or (20_000 if args.quick else 200_000)
    latency_s = args.latency_seconds or (10.0 if args.quick else 20.0)
    run(readings, latency_s, args.dev_venv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
