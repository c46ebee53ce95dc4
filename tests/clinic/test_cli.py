"""The ``clinic`` command against a throwaway PostgreSQL: schema, keys, enrolment, users,
status and the audit chain (in-process ``main``, real database)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psycopg
import pyotp
import pytest
from argon2 import PasswordHasher

from clinic.cli import main
from clinic.db.schema import MIGRATIONS
from clinic.keys import load
from tests.clinic.conftest import ClinicSetup

pytestmark = pytest.mark.integration


def run(setup: ClinicSetup, *args: str) -> int:
    return main(["--config", str(setup.path), *args])


def test_migrate_is_idempotent_and_versioned(
    setup: ClinicSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(setup, "db", "migrate") == 0  # the fixture migrated already
    assert "up to date" in capsys.readouterr().out
    with psycopg.connect(setup.cfg.db.dsn) as conn:
        got = conn.execute("SELECT array_agg(version ORDER BY version) FROM schema_migrations")
        assert got.fetchone() == ([v for v, _ in sorted(MIGRATIONS)],)


def test_keys_rotate_keeps_retired_keys_and_is_audited(
    setup: ClinicSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(setup, "keys", "init") == 2  # keys exist: refused, nothing replaced
    before = load(setup.cfg.keys)
    assert run(setup, "keys", "rotate") == 0
    after = load(setup.cfg.keys)
    assert after.current_e2e != before.current_e2e
    assert set(before.e2e) < set(after.e2e) and set(before.data) < set(after.data)
    for f in setup.cfg.keys.dir.iterdir():
        if f.name != "current.json":
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
    capsys.readouterr()
    assert run(setup, "keys", "public") == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in pem
    assert run(setup, "audit", "tail") == 0
    assert "keys.rotate" in capsys.readouterr().out


def test_enrolment_users_and_status(setup: ClinicSetup, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run(setup, "hubs", "enroll", "hub-1") == 0
    assert run(setup, "patients", "add", "patient-a", "--hub", "hub-1",
               "--display-name", "Ada Lovelace") == 0
    assert run(setup, "patients", "add", "patient-b", "--hub", "hub-404") == 2
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    capsys.readouterr()
    assert run(setup, "users", "add", "dr-who", "--role", "clinician", "--password-file",
               str(pw)) == 0
    uri = capsys.readouterr().out.strip()
    assert uri.startswith("otpauth://totp/") and "\n" not in uri
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP) and totp.verify(totp.now())
    assert run(setup, "patients", "assign", "patient-a", "--clinician", "dr-who") == 0
    capsys.readouterr()
    assert run(setup, "patients", "list") == 0
    assert "patient-a\thub-1\tdr-who" in capsys.readouterr().out
    with psycopg.connect(setup.cfg.db.dsn) as conn:
        h, name = conn.execute(
            "SELECT u.password_hash, p.name_enc FROM users u, patients p").fetchone()  # type: ignore[misc]
    assert h.startswith("$argon2id$") and PasswordHasher().verify(h, "correct horse battery staple")
    assert b"Ada" not in bytes(name)
    assert run(setup, "users", "disable", "dr-who") == 0
    assert run(setup, "hubs", "revoke", "hub-1") == 0
    capsys.readouterr()
    assert run(setup, "status", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"observations", "duplicates", "rejected", "alerts_open", "hubs"} <= set(doc)
    assert doc["hubs"]["hub-1"]["revoked"] is True


def test_audit_chain_detects_tampering(setup: ClinicSetup,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for hub in ("hub-1", "hub-2", "hub-3"):
        assert run(setup, "hubs", "enroll", hub) == 0
    assert run(setup, "audit", "verify") == 0
    assert "intact (3 records)" in capsys.readouterr().out
    with psycopg.connect(setup.cfg.db.dsn, autocommit=True) as conn:
        conn.execute("UPDATE audit_log SET target = 'hub-x' WHERE seq = 2")
    assert run(setup, "audit", "verify") == 1
    assert "BROKEN at record 2" in capsys.readouterr().out


def test_check_config_reports_each_problem_on_its_own_line(
    setup: ClinicSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(setup, "check-config") == 0
    bad = setup.path.read_text().replace('tls_min_version = "1.3"', 'tls_min_version = "1.0"')
    bad = bad.replace("[log]", "[log]\ncolour = true").replace('pins = [', 'pins = [] #')
    p = tmp_path / "bad.toml"
    p.write_text(bad)
    capsys.readouterr()
    assert main(["--config", str(p), "check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert any(line.startswith("broker.tls_min_version:") for line in err)
    assert any(line.startswith("broker.pins:") for line in err)
    assert any(line.startswith("log.colour: unknown key") for line in err)
