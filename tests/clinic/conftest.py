"""Fixtures: a throwaway PostgreSQL cluster (clinic.devdb, one per session; a fresh database
per test), a clinic on disk (PKI, keys, config), and a real mosquitto."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from clinic import config as config_mod
from clinic import keys
from clinic.config import ClinicConfig
from clinic.db.schema import migrate
from clinic.devdb import DevPostgres
from devtools.broker import ingest_identity
from tests.clinic.support import issue_client
from tests.support.mosquitto import Broker, start_broker
from tests.support.pki import TestPki, make_pki

CLINIC_ID = "clinic-1"
#: the ingest workers the broker fixture admits (``clinic ingest --worker NAME``), each with
#: its own certificate (CN <clinic id>-ingest-<NAME>; the config names it with {worker})
INGEST_WORKERS = ("1", "2")
#: hubs the broker lets publish: hub-2 (revoked at the clinic) and hub-9 (never enrolled
#: there) too, so that the clinic — not the broker — is what refuses them
BROKER_HUBS = ("hub-1", "hub-2", "hub-9")
_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevPostgres]:
    db = DevPostgres.start(tmp_path_factory.mktemp("pg") / "cluster")
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def dsn(pg: DevPostgres) -> str:
    """A new, migrated database for this test."""
    name = f"t{next(_db_numbers)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    url = pg.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


def config_toml(*, dsn: str, keys_dir: Path, pki: TestPki, broker_port: int,
                clinic_cert: Path, clinic_key: Path, extra: str = "") -> str:
    return f"""
[clinic]
id = "{CLINIC_ID}"
[db]
dsn = "{dsn}"
retry_s = 0.2
[keys]
provider = "file"
dir = "{keys_dir}"
[hubs]
ca_file = "{pki.ca.cert}"
[broker]
host = "127.0.0.1"
port = {broker_port}
ca_file = "{pki.ca.cert}"
client_cert = "{clinic_cert}"
client_key = "{clinic_key}"
pins = ["{pki.broker.pin}"]
tls_min_version = "1.3"
topic_prefix = "edge/v1"
share_group = "clinic"
receive_maximum = 20
batch_max = 20
reconnect_base_s = 0.1
reconnect_cap_s = 0.5
[web]
listen = "127.0.0.1:8443"
tls_cert = "/nonexistent/web.pem"
tls_key = "/nonexistent/web.key"
idle_timeout_s = 900
time_zone = "UTC"
[log]
level = "info"
{extra}"""


@dataclass
class ClinicSetup:
    path: Path
    cfg: ClinicConfig
    ring: keys.KeyRing
    pki: TestPki


@pytest.fixture(scope="module")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    pki = make_pki(tmp_path_factory.mktemp("clinic-pki"), "hub-1", hostile=())
    for worker in INGEST_WORKERS:
        issue_client(pki.dir, pki.ca, ingest_identity(CLINIC_ID, worker))
    return pki


def write_setup(tmp: Path, dsn: str, pki: TestPki, port: int) -> ClinicSetup:
    kdir = tmp / "keys"
    kcfg = config_mod.KeysSection(provider="file", dir=kdir)
    ring = keys.initial_ring()
    keys.save(kcfg, ring)
    # each worker's own certificate, written by tpki (write_identity: <CN>.crt, <CN>.key)
    ident = pki.dir / ingest_identity(CLINIC_ID, "{worker}")
    path = tmp / "clinic.toml"
    path.write_text(config_toml(dsn=dsn, keys_dir=kdir, pki=pki, broker_port=port,
                                clinic_cert=ident.with_suffix(".crt"),
                                clinic_key=ident.with_suffix(".key")))
    return ClinicSetup(path, config_mod.load(path), ring, pki)


@pytest.fixture
def setup(tmp_path: Path, dsn: str, tpki: TestPki) -> ClinicSetup:
    return write_setup(tmp_path, dsn, tpki, 8883)


@pytest.fixture
def broker(tmp_path: Path, tpki: TestPki) -> Iterator[Broker]:
    # each ingest worker has its own certificate (CN = MQTT client id, as the broker enforces)
    b = start_broker(tmp_path, tpki, debug=False, hubs=BROKER_HUBS,
                     clinic_ids=[ingest_identity(CLINIC_ID, w) for w in INGEST_WORKERS])
    try:
        yield b
    finally:
        b.stop()
