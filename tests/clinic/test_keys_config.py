"""Keys, data sealing, config validation and the audit chain rules (pure, or a temp dir)."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from clinic import audit, keys
from clinic.config import KeysSection, parse
from clinic.errors import ClinicError, ConfigError, KeyUnavailable

REPO = Path(__file__).resolve().parents[2]


def test_data_sealing_is_bound_to_its_row_and_survives_rotation() -> None:
    ring = keys.initial_ring()
    kid, blob = keys.encrypt(ring, b'{"value":72}', b"id-1")
    assert b"72" not in blob
    newer = keys.rotated(ring)
    assert keys.decrypt(newer, kid, blob, b"id-1") == b'{"value":72}'
    with pytest.raises(ClinicError):
        keys.decrypt(newer, kid, blob, b"id-2")  # moved to another row
    with pytest.raises(KeyUnavailable):
        keys.decrypt(keys.initial_ring(), kid, blob, b"id-1")


def test_file_provider_refuses_readable_keys(tmp_path: Path) -> None:
    cfg = KeysSection(provider="file", dir=tmp_path / "k")
    keys.save(cfg, keys.initial_ring())
    assert keys.load(cfg).current_e2e
    victim = next(p for p in cfg.dir.iterdir() if p.name.startswith("data-"))
    victim.chmod(0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        keys.load(cfg)


def test_env_provider_only_when_allowed() -> None:
    ring = keys.initial_ring()
    env = {"CLINIC_KEYS": keys.to_env_json(ring)}
    with pytest.raises(KeyUnavailable, match="tests only"):
        keys.load(KeysSection(provider="env"), env)
    got = keys.load(KeysSection(provider="env", allow_env_key=True), env)
    assert got.current_e2e == ring.current_e2e and got.data == ring.data


def test_systemd_credentials_need_the_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable, match="CREDENTIALS_DIRECTORY"):
        keys.load(KeysSection(provider="systemd-credential"), {})


def test_the_example_config_is_valid() -> None:
    parse(tomllib.loads((REPO / "config" / "clinic.example.toml").read_text()))


@pytest.mark.parametrize(("section", "key", "value", "why"), [
    ("db", "dsn", "postgresql://u:secret@db.example.org/clinic", "password"),
    ("db", "dsn", "postgresql://u@db.example.org/clinic?sslmode=disable", "sslmode"),
    ("broker", "tls_min_version", "1.1", "TLS"),
    ("broker", "pins", [], "pin"),
    ("broker", "share_group", "a/+", "'+'"),
    ("clinic", "id", "bad id!", "letters"),
])
def test_insecure_values_are_errors(section: str, key: str, value: object, why: str) -> None:
    doc = tomllib.loads((REPO / "config" / "clinic.example.toml").read_text())
    doc[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse(doc)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{section}.{key}:") and why in err.value.problems[0]
    assert "secret" not in err.value.problems[0]


def test_audit_chain_rules() -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows, prev = [], audit.GENESIS
    for seq in (1, 2, 3):
        h = audit.record_hash(prev, seq, t, "a", "x", "t", "{}")
        rows.append(audit.Record(seq, t, "a", "x", "t", "{}", prev, h))
        prev = h
    assert audit.verify_rows(rows) is None
    assert audit.verify_rows([rows[0], rows[2]]) == 3  # one removed
    forged = audit.Record(2, t, "a", "y", "t", "{}", rows[1].prev_hash, rows[1].hash)
    assert audit.verify_rows([rows[0], forged, rows[2]]) == 2
