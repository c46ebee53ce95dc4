"""Helpers for the web tests: a config without files, a seeded clinic (hubs, patients, users
with TOTP secrets, assignments, Observations stored exactly as ingest stores them, an open
alert), a throwaway TLS certificate, and the real HTTPS server on a socket the test bound."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clinic import config as config_mod
from clinic import keys
from clinic.alerts.rules import Thresholds
from clinic.config import ClinicConfig
from clinic.db import registry
from clinic.db.connect import Conn, connect
from clinic.ingest.bundle import check_bundle
from clinic.ingest.sink import Judged, commit_batch
from clinic.ingest.verify import Accepted, Topic
from clinic.web.serve import make_server
from edge import fhir
from tests.support.vault_support import glucose, hr

PASSWORD = "correct horse battery staple"
HUB_A, HUB_B = "hub-a", "hub-b"


def web_cfg(dsn: str, tmp: Path, **web: Any) -> ClinicConfig:
    """A valid config (files are never read by the web app except the TLS pair)."""
    return config_mod.parse({
        "clinic": {"id": "clinic-1"},
        "db": {"dsn": dsn},
        "keys": {"provider": "file", "dir": str(tmp / "keys")},
        "hubs": {"ca_file": str(tmp / "ca.pem")},
        "broker": {"host": "127.0.0.1", "ca_file": str(tmp / "ca.pem"),
                   "client_cert": str(tmp / "c.pem"), "client_key": str(tmp / "c.key"),
                   "pins": ["sha256/" + "A" * 43 + "="]},
        "web": {"tls_cert": str(tmp / "web.pem"), "tls_key": str(tmp / "web.key"), **web},
    })


@dataclass
class User:
    name: str
    role: str
    secret: str

    def otp(self) -> str:
        return pyotp.TOTP(self.secret).now()


@dataclass
class World:
    dsn: str
    ring: keys.KeyRing
    users: dict[str, User] = field(default_factory=dict)
    #: clinician -> assigned pseudonyms
    assigned: dict[str, list[str]] = field(default_factory=dict)
    alert_id: int = 0

    def conn(self) -> Conn:
        return connect(self.dsn)


def store(conn: Conn, ring: keys.KeyRing, hub: str, patient: str, readings: list[Any]) -> None:
    """Store readings exactly as ingest does: edge's Bundle, checked, sealed, committed."""
    payload = fhir.bundle_bytes(readings, hub_id=hub)
    obs = check_bundle(payload, patient)
    j = Judged(f"edge/v1/{hub}/obs/{patient}", payload,
               Accepted(Topic(hub, "obs", patient), obs))
    commit_batch(conn, ring, "test", [j], dt.datetime.now(dt.UTC), max_quarantine_bytes=1 << 20,
                 thresholds=Thresholds())


def seed(dsn: str) -> World:
    """doc1 (clinician): pt-a, pt-b; doc2 (clinician): pt-c; adm (admin); aud (auditor).
    pt-a has heart rate (last hour) and glucose (14 days, every band); pt-b an open alert."""
    ring = keys.initial_ring()
    w = World(dsn, ring)
    ph = PasswordHasher()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with connect(dsn) as conn:
        for hub in (HUB_A, HUB_B):
            registry.enroll_hub(conn, hub, "test")
        conn.execute("UPDATE hubs SET online = true, last_seen = %s WHERE hub_id = %s",
                     (now, HUB_A))
        registry.add_patient(conn, ring, "pt-a", HUB_A, "Ada Example", "test")
        registry.add_patient(conn, ring, "pt-b", HUB_A, None, "test")
        registry.add_patient(conn, ring, "pt-c", HUB_B, "Carl Other", "test")
        for name, role in (("doc1", "clinician"), ("doc2", "clinician"), ("adm", "admin"),
                           ("aud", "auditor")):
            secret = pyotp.random_base32()
            registry.add_user(conn, ring, name, role, ph.hash(PASSWORD), secret, "test")
            w.users[name] = User(name, role, secret)
        w.assigned = {"doc1": ["pt-a", "pt-b"], "doc2": ["pt-c"]}
        for doc, ps in w.assigned.items():
            for p in ps:
                registry.assign(conn, p, doc, "test")
        hr_start = now - dt.timedelta(minutes=60)
        store(conn, ring, HUB_A, "pt-a",
              [hr(i * 30, patient="pt-a", bpm=60 + i % 30, start=hr_start) for i in range(120)])
        values = ["45", "60", "100", "150", "200", "300", "110", "95"]
        g_start = now - dt.timedelta(days=13)
        store(conn, ring, HUB_A, "pt-a",
              [glucose(k * 60 * 36, patient="pt-a", mg_dl=v, start=g_start)
               for k, v in enumerate(values)])
        store(conn, ring, HUB_B, "pt-c", [hr(i, patient="pt-c", bpm=80, start=hr_start)
                                           for i in range(5)])
        row = conn.execute("INSERT INTO alerts (patient, kind, state, opened_at) VALUES "
                           "('pt-b', 'glucose_low', 'open', %s) RETURNING id", (now,)).fetchone()
        assert row is not None
        w.alert_id = int(row[0])
    return w


def add_clinician(dsn: str, ring: keys.KeyRing, name: str, patients: list[str]) -> User:
    """A clinician (password :data:`PASSWORD`, a fresh TOTP secret) assigned ``patients``,
    e.g. beside a clinic that ingest fills (the end-to-end browser test)."""
    secret = pyotp.random_base32()
    with connect(dsn) as conn:
        registry.add_user(conn, ring, name, "clinician", PasswordHasher().hash(PASSWORD),
                          secret, "test")
        for p in patients:
            registry.assign(conn, p, name, "test")
    return User(name, "clinician", secret)


def write_tls_pair(cert: Path, key: Path) -> None:
    """A self-signed certificate for 127.0.0.1 / localhost."""
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.SubjectAlternativeName(
             [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
             critical=False)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .sign(k, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    key.chmod(0o600)


@contextlib.contextmanager
def https_server(cfg: ClinicConfig, ring: keys.KeyRing, **overrides: Any) -> Iterator[str]:
    """The real server (uvicorn, TLS) in a thread; yields its base URL. The socket is bound
    and listening before the thread starts, so the first request needs no waiting."""
    write_tls_pair(cfg.web.tls_cert, cfg.web.tls_key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = int(sock.getsockname()[1])
    server = make_server(cfg, ring, **overrides)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def write_config(path: Path, dsn: str, tmp: Path) -> Path:
    """The same config as :func:`web_cfg`, as a TOML file for the ``clinic`` command."""
    path.write_text(f"""
[clinic]
id = "clinic-1"
[db]
dsn = "{dsn}"
[keys]
dir = "{tmp / 'keys'}"
[hubs]
ca_file = "{tmp / 'ca.pem'}"
[broker]
host = "127.0.0.1"
ca_file = "{tmp / 'ca.pem'}"
client_cert = "{tmp / 'c.pem'}"
client_key = "{tmp / 'c.key'}"
pins = ["sha256/{'A' * 43}="]
[web]
tls_cert = "{tmp / 'web.pem'}"
tls_key = "{tmp / 'web.key'}"
""")
    return path
