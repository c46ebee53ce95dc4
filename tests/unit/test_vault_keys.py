"""Key providers, key file format, identity time and the audit hash (no database)."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from edge.config import VaultConfig
from edge.errors import ConfigError, KeyUnavailable, UsageError
from edge.vault import key_provider, retired, schema
from edge.vault.audit import GENESIS_HASH, audit_hash
from edge.vault.keys import (
    EnvKeyProvider,
    FileKeyProvider,
    SystemdCredentialProvider,
    decode_key,
    encode_key,
    key_id,
    new_key,
)
from edge.vault.models import identity_time_us
from tests.support.vault_support import glucose, hr, vault_config, write_key


def test_key_file_format_round_trips_and_rejects_garbage() -> None:
    key = new_key()
    data = encode_key(key)
    assert len(data) == 65 and data.endswith(b"\n")
    assert decode_key(data) == key
    assert decode_key(data.upper()) == key
    assert decode_key(data[:-2] + b"\n") is None
    assert decode_key(b"zz" * 32 + b"\n") is None
    assert decode_key(key) is None  # raw bytes only where a credential may hold them
    assert decode_key(key, allow_raw=True) == key
    with pytest.raises(ValueError):
        encode_key(b"short")


def test_file_provider_creates_once_private(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    provider = key_provider(cfg)
    assert isinstance(provider, FileKeyProvider) and provider.writable
    assert not provider.exists()
    with pytest.raises(KeyUnavailable, match="edge keys init"):
        provider.load()
    provider.create()
    assert stat.S_IMODE(os.stat(provider.path).st_mode) == 0o600
    key = provider.load()
    assert len(key) == 32
    with pytest.raises(ConfigError):
        provider.create()
    assert provider.load() == key


def test_file_provider_refuses_loose_permissions(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    write_key(cfg)
    assert cfg.key_file is not None
    for mode in (0o640, 0o604, 0o644):
        cfg.key_file.chmod(mode)
        with pytest.raises(KeyUnavailable, match="chmod 600"):
            key_provider(cfg).load()
    cfg.key_file.chmod(0o400)
    assert len(key_provider(cfg).load()) == 32


@pytest.mark.parametrize("where", [".", "keys"])
def test_file_provider_refuses_a_key_beside_the_data(tmp_path: Path, where: str) -> None:
    cfg = vault_config(tmp_path)
    key_dir = cfg.path.parent / where
    key_dir.mkdir(exist_ok=True)
    cfg = vault_config(tmp_path, key_file=key_dir / "vault.key")
    write_key(cfg)
    with pytest.raises(KeyUnavailable, match="vault's directory"):
        key_provider(cfg).load()


def test_file_provider_rotation_keeps_the_old_key_until_finished(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    old = write_key(cfg)
    provider = key_provider(cfg)
    fresh = new_key()
    steps: list[str] = []
    provider.stage_rotation(fresh, hook=steps.append)
    assert steps == ["previous_kept"]
    assert provider.load() == fresh
    assert provider.previous() == old
    provider.finish_rotation()
    assert provider.previous() is None
    # the replaced key is retired, not forgotten (old backups need it)
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "vault.key", "vault.key.retired"]


def test_rotation_keeps_the_replaced_key_retired_until_the_installer_retires_it(
    tmp_path: Path,
) -> None:
    cfg = vault_config(tmp_path)
    old = write_key(cfg)
    assert cfg.key_file is not None
    provider = key_provider(cfg)
    provider.stage_rotation(new_key())
    provider.finish_rotation()
    (kept,) = retired.listing(cfg.key_file)
    assert kept.key_id == key_id(old)
    assert kept.path.parent == tmp_path / "keys" / "vault.key.retired"
    assert kept.path.name.endswith(f"-{key_id(old)}.key")
    assert stat.S_IMODE(kept.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.path.parent.stat().st_mode) == 0o700
    assert retired.load(kept) == old
    assert cfg.path.parent not in kept.path.parents  # apart from the data

    # An interrupted rotation that never stored a new key: the leftover copy is the current
    # key, which is never "retired".
    current = provider.load()
    provider.stage_rotation(current)
    provider.finish_rotation()
    assert [k.key_id for k in retired.listing(cfg.key_file)] == [key_id(old)]

    with pytest.raises(UsageError, match=key_id(old)):
        retired.forget(cfg.key_file, "0" * 16)
    retired.forget(cfg.key_file, key_id(old))
    assert retired.listing(cfg.key_file) == []
    assert list(kept.path.parent.iterdir()) == []


def test_env_provider_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    monkeypatch.setenv("EDGE_TEST_KEY", key.hex())
    with pytest.raises(KeyUnavailable, match="allow_env_key"):
        EnvKeyProvider("EDGE_TEST_KEY", allowed=False).load()
    provider = EnvKeyProvider("EDGE_TEST_KEY", allowed=True)
    assert provider.load() == key and not provider.writable
    monkeypatch.setenv("EDGE_TEST_KEY", "not-hex")
    with pytest.raises(KeyUnavailable, match="64 hex") as exc:
        provider.load()
    assert "not-hex" not in str(exc.value)
    monkeypatch.delenv("EDGE_TEST_KEY")
    with pytest.raises(KeyUnavailable, match="not set"):
        provider.load()
    with pytest.raises(KeyUnavailable, match="openssl rand -hex 32"):
        provider.create()


def test_systemd_credential_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = key_provider(VaultConfig(path=tmp_path / "d" / "v.db"))
    assert isinstance(provider, SystemdCredentialProvider) and not provider.writable
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeyUnavailable, match="CREDENTIALS_DIRECTORY"):
        provider.load()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(KeyUnavailable, match="missing"):
        provider.load()
    key = new_key()
    (tmp_path / "vault-key").write_bytes(encode_key(key))
    assert provider.load() == key
    (tmp_path / "vault-key").write_bytes(key)
    assert provider.load() == key
    (tmp_path / "vault-key").write_bytes(b"short")
    with pytest.raises(KeyUnavailable, match="32-byte"):
        provider.load()
    with pytest.raises(KeyUnavailable, match="systemd-creds encrypt"):
        provider.create()


def test_identity_time_is_what_the_id_is_made_of() -> None:
    g = glucose(5)
    # The corrected effective time may move with the meter's clock offset; the id does not.
    moved = g.model_copy(update={"effective_time": g.effective_time + timedelta(minutes=3),
                                 "clock_offset_s": 180})
    assert moved.id == g.id
    assert identity_time_us(moved) == identity_time_us(g)
    assert identity_time_us(hr(1)) - identity_time_us(hr(0)) == 1_000_000
    assert identity_time_us(hr(0)) == int(hr(0).effective_time.timestamp()) * 1_000_000


def test_audit_hash_covers_every_field() -> None:
    entry_id = 1
    texts = ["2026-03-01T08:00:00+00:00", "admin:t", "device.bound", "dev-12345678",
             GENESIS_HASH]
    digest = audit_hash(entry_id, *texts)
    assert digest == audit_hash(entry_id, *texts) and len(digest) == 64
    assert audit_hash(entry_id + 1, *texts) != digest
    for i in range(len(texts)):
        changed = list(texts)
        changed[i] += "x"
        assert audit_hash(entry_id, *changed) != digest


def test_schema_scripts_split_into_whole_statements() -> None:
    statements = schema._statements(schema.V1)
    triggers = [s for s in statements if s.startswith("CREATE TRIGGER")]
    assert len(triggers) == 2 and all(s.endswith("END;") for s in triggers)
    assert 1 + len(schema.MIGRATIONS) == schema.CURRENT_VERSION
