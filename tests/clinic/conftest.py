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
from tests.support.mosquitto import Broker, start_broker
from tests.support.pki import TestPki, make_pki

CLINIC_ID = "clinic-1"
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
    # The dev ACL gives a "clinician" read on <prefix>/+/obs/<p> and status: with p = "+"
    # that is exactly the clinic's grant (see the report for config/mosquitto).
    return make_pki(tmp_path_factory.mktemp("clinic-pki"), "hub-1", {CLINIC_ID: ["+"]},
                    hostile=())


def write_setup(tmp: Path, dsn: str, pki: TestPki, port: int) -> ClinicSetup:
    kdir = tmp / "keys"
    kcfg = config_mod.KeysSection(provider="file", dir=kdir)
    ring = keys.initial_ring()
    keys.save(kcfg, ring)
    ident = pki.clinician(CLINIC_ID)
    path = tmp / "clinic.toml"
    path.write_text(config_toml(dsn=dsn, keys_dir=kdir, pki=pki, broker_port=port,
                                clinic_cert=ident.cert, clinic_key=ident.key))
    return ClinicSetup(path, config_mod.load(path), ring, pki)


@pytest.fixture
def setup(tmp_path: Path, dsn: str, tpki: TestPki) -> ClinicSetup:
    return write_setup(tmp_path, dsn, tpki, 8883)


@pytest.fixture
def broker(tmp_path: Path, tpki: TestPki) -> Iterator[Broker]:
    b = start_broker(tmp_path, tpki, debug=False)
    try:
        yield b
    finally:
        b.stop()
