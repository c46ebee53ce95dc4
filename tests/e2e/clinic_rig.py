"""The clinic beside the end-to-end harness: a throwaway PostgreSQL (clinic.devdb), the clinic's
keys and config on disk, and ``clinic ingest`` workers as subprocesses.

    with clinic_rig(tmp_path / "clinic") as clinic:       # PostgreSQL up, schema migrated
        with E2E(..., clinic_ids=ingest_ids("1", "2"),
                 recipient_key=clinic.recipient_key) as e:
            clinic.configure(e.pki, e.broker.port, ["1", "2"])
            clinic.enroll(HUB_ID, ["patient-a"])
            clinic.start_worker("1")

Each worker has its own certificate (CN = ``<clinic id>-ingest-<NAME>``, its MQTT client id)
and so its own config file; the broker ACL names those identities.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from clinic import config as config_mod
from clinic import keys
from clinic.db import registry
from clinic.db.connect import connect
from clinic.db.schema import migrate
from clinic.devdb import DevPostgres
from devtools.broker import ingest_identity
from edge.uplink.envelope import open_envelope
from tests.clinic.conftest import CLINIC_ID, config_toml
from tests.clinic.support import issue_client
from tests.support.pki import TestPki

REPO = Path(__file__).resolve().parents[2]

__all__ = ["CLINIC_ID", "ClinicRig", "clinic_rig", "ingest_ids", "opened_ids"]


def ingest_ids(*workers: str) -> list[str]:
    """The broker identities of these ingest workers."""
    return [ingest_identity(CLINIC_ID, w) for w in workers]


@dataclass
class ClinicRig:
    """One clinic: its database, key ring, config file and ingest workers."""

    workdir: Path
    pg: DevPostgres
    ring: keys.KeyRing
    keys_dir: Path
    recipient_key: Path
    configs: dict[str, Path] = field(default_factory=dict)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    #: the interpreter the workers run on (the clinic benchmark gives a clinic-only one)
    python: str = sys.executable
    #: where each worker's log stood when it was last started (a restarted worker's
    #: "connected" line is looked for after it, not in an earlier run's lines)
    log_start: dict[str, int] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return self.pg.dsn

    def configure(self, pki: TestPki, broker_port: int, workers: Sequence[str]) -> None:
        """One clinic-<worker>.toml per worker: the broker with that worker's own identity
        (issued by ``pki``'s CA), hubs checked against the same CA."""
        for name in workers:
            ident = issue_client(pki.dir, pki.ca, ingest_identity(CLINIC_ID, name))
            path = self.workdir / f"clinic-{name}.toml"
            path.write_text(config_toml(dsn=self.dsn, keys_dir=self.keys_dir, pki=pki,
                                        broker_port=broker_port, clinic_cert=ident.cert,
                                        clinic_key=ident.key))
            config_mod.load(path)  # fail here, not in a worker, if the config is wrong
            self.configs[name] = path

    def enroll(self, hub_id: str, patients: list[str]) -> None:
        with connect(self.dsn) as conn:
            registry.enroll_hub(conn, hub_id, "test")
            for p in patients:
                registry.add_patient(conn, self.ring, p, hub_id, None, "test")

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def start_worker(self, name: str) -> None:
        config = self.configs[name]  # configure() first
        log_path = self.workdir / f"worker-{name}.log"
        self.logs[name] = log_path
        self.log_start[name] = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            self.workers[name] = subprocess.Popen(
                [self.python, "-m", "clinic", "--config", str(config), "ingest",
                 "--worker", name],
                stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=REPO,
                stdin=subprocess.DEVNULL)

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        """Every worker has its shared subscription (it logs after the SUBACK)."""
        deadline = time.monotonic() + timeout
        for name, path in self.logs.items():
            while b"ingest.connected" not in path.read_bytes()[self.log_start.get(name, 0):]:
                proc = self.workers[name]
                if proc.poll() is not None:
                    raise AssertionError(f"worker {name} exited: {self.log_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker {name} not subscribed: {self.log_text()}")
                time.sleep(0.1)

    def stop_workers(self) -> None:
        for p in self.workers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.workers.clear()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs.values())

    def stored_ids(self) -> list[str]:
        """Every stored Observation identifier (one entry per row)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return [str(r[0]) for r in conn.execute(b"SELECT identifier FROM observations")]

    def status(self) -> dict[str, Any]:
        """``clinic status --json``."""
        config = next(iter(self.configs.values()))
        done = subprocess.run(
            [sys.executable, "-m", "clinic", "--config", str(config), "status",
             "--json"], capture_output=True, check=True, cwd=REPO, env=self._env(), timeout=60)
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc


def opened_ids(rig: ClinicRig, payload: bytes) -> list[str]:
    """Open one sealed Bundle with the clinic's keys; the reading ids of its Observations."""
    bundle = json.loads(open_envelope(payload, rig.ring.e2e).payload)
    out = []
    for entry in bundle.get("entry", []):
        res = entry.get("resource", {})
        if res.get("resourceType") == "Observation":
            out.append(str(res["identifier"][0]["value"]).removeprefix("urn:uuid:"))
    return out


@contextlib.contextmanager
def clinic_rig(workdir: Path) -> Iterator[ClinicRig]:
    """PostgreSQL started and migrated, keys written (file provider), the recipient key PEM
    ready for the hub's [e2e]; workers and the database stopped on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    pg = DevPostgres.start(workdir / "pg")
    rig: ClinicRig | None = None
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            migrate(conn)
        keys_dir = workdir / "keys"
        ring = keys.initial_ring()
        keys.save(config_mod.KeysSection(provider="file", dir=keys_dir), ring)
        recipient = workdir / "clinic-e2e.pem"
        recipient.write_bytes(ring.public_pem())
        rig = ClinicRig(workdir, pg, ring, keys_dir, recipient)
        yield rig
    finally:
        if rig is not None:
            rig.stop_workers()
        pg.stop()
