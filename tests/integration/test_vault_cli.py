"""`edge keys`, `edge vault` and `edge audit` as an operator runs them (subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3

from edge.config import VaultConfig
from edge.vault import Vault, maintenance
from edge.vault.keys import decode_key, key_id
from tests.support.vault_pages import flip, table_pages
from tests.support.vault_proc import REPO
from tests.support.vault_support import (
    file_digests,
    hr,
    vault_config,
    write_gateway_config,
    write_key,
)

pytestmark = pytest.mark.integration


def edge_cli(tmp: Path, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(tmp / "gateway.toml"), *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60,
    )


async def filled(tmp: Path) -> tuple[VaultConfig, bytes]:
    cfg = vault_config(tmp)
    key = write_key(cfg)
    write_gateway_config(tmp, cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(12)])
        await v.mark_delivered([p.id for p in await v.next_batch(2)])
        await v.count_refusal("no_consent", 4)
        for i in range(3):
            await v.audit("admin:test", "test.entry", f"s{i}")
    return cfg, key


def test_keys_init_creates_a_private_key_once_and_never_touches_a_vault(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    write_gateway_config(tmp_path, cfg)
    assert cfg.key_file is not None
    res = edge_cli(tmp_path, "keys", "init")
    assert res.returncode == 0, res.stderr
    data = cfg.key_file.read_bytes()
    assert len(data) == 65 and data.endswith(b"\n") and decode_key(data) is not None
    assert oct(cfg.key_file.stat().st_mode & 0o777) == "0o600"
    assert data.decode().strip() not in res.stdout + res.stderr

    res = edge_cli(tmp_path, "keys", "init")
    assert res.returncode == 2
    assert "never overwrites" in res.stderr
    assert cfg.key_file.read_bytes() == data

    cfg.key_file.unlink()
    cfg.path.write_bytes(b"an existing vault")
    res = edge_cli(tmp_path, "keys", "init")
    assert res.returncode == 2
    assert "already exists" in res.stderr
    assert not cfg.key_file.exists()
    assert cfg.path.read_bytes() == b"an existing vault"


def test_read_only_providers_print_guidance(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, key_provider="systemd-credential", key_file=None)
    write_gateway_config(tmp_path, cfg)
    for action in ("init", "rotate"):
        res = edge_cli(tmp_path, "keys", action)
        assert res.returncode == 2
        assert "systemd-creds encrypt" in res.stderr
        assert "LoadCredentialEncrypted=vault-key" in res.stderr

    cfg = vault_config(tmp_path, key_provider="env", key_file=None, allow_env_key=True)
    write_gateway_config(tmp_path, cfg)
    res = edge_cli(tmp_path, "keys", "init")
    assert res.returncode == 2
    assert "export EDGE_VAULT_KEY=$(openssl rand -hex 32)" in res.stderr


async def test_systemd_credential_and_env_providers_open_the_vault(tmp_path: Path) -> None:
    _, key = await filled(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "vault-key").write_bytes(key)  # systemd-creds may hold the raw 32 bytes
    write_gateway_config(tmp_path, vault_config(tmp_path, key_provider="systemd-credential"))
    res = edge_cli(tmp_path, "vault", "stats", "--json",
                   env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pending"] == 10

    write_gateway_config(tmp_path, vault_config(tmp_path, key_provider="env"))
    res = edge_cli(tmp_path, "vault", "stats", env={"EDGE_VAULT_KEY": key.hex()})
    assert res.returncode == 2
    assert "allow_env_key" in res.stderr
    write_gateway_config(tmp_path, vault_config(tmp_path, key_provider="env",
                                                allow_env_key=True))
    res = edge_cli(tmp_path, "vault", "stats", env={"EDGE_VAULT_KEY": key.hex()})
    assert res.returncode == 0, res.stderr
    assert "pending readings      10" in res.stdout


async def test_stats_human_and_json(tmp_path: Path) -> None:
    await filled(tmp_path)
    res = edge_cli(tmp_path, "vault", "stats")
    assert res.returncode == 0, res.stderr
    assert "pending readings      10" in res.stdout
    assert "delivered (retained)  2" in res.stdout
    assert "no_consent" in res.stdout
    res = edge_cli(tmp_path, "vault", "stats", "--json")
    doc = json.loads(res.stdout)
    assert doc["pending"] == 10 and doc["delivered_retained"] == 2
    assert doc["refusals"] == {"no_consent": 4}
    assert doc["pending_bytes"] > 0 and doc["db_bytes"] > 0


async def test_audit_verify_tail_and_a_broken_link(tmp_path: Path) -> None:
    cfg, key = await filled(tmp_path)
    res = edge_cli(tmp_path, "audit", "verify")
    assert (res.returncode, res.stdout.strip()) == (0, "audit chain ok: 3 entries verified")
    res = edge_cli(tmp_path, "audit", "tail", "-n", "2")
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "2" and lines[1].endswith("test.entry s2")
    res = edge_cli(tmp_path, "audit", "tail", "--json")
    assert [json.loads(ln)["id"] for ln in res.stdout.splitlines()] == [1, 2, 3]

    conn = sqlcipher3.connect(str(cfg.path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'admin:mallory' WHERE id = 2")
    conn.close()
    res = edge_cli(tmp_path, "audit", "verify")
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "edge: audit chain broken at entry 2: its contents do not match its hash")


async def test_backup_command_writes_a_private_restorable_copy(tmp_path: Path) -> None:
    cfg, key = await filled(tmp_path)
    dest = tmp_path / "backups" / "vault-backup.db"
    dest.parent.mkdir(mode=0o700)
    res = edge_cli(tmp_path, "vault", "backup", str(dest))
    assert res.returncode == 0, res.stderr
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    before = file_digests(dest)
    res = edge_cli(tmp_path, "vault", "backup", str(dest))
    assert res.returncode == 2 and file_digests(dest) == before
    restored = vault_config(tmp_path, path=dest)
    async with await Vault.open(restored, key) as r:
        assert (await r.stats()).pending == 10
        assert await r.verify_audit() == 3  # the backup's own audit entry came after it
    async with await Vault.open(cfg, key) as v:
        assert (await v.audit_tail(1))[0].action == "vault.backup"
        assert (await v.audit_tail(1))[0].actor.startswith("admin:")


def test_a_backup_of_a_vault_with_a_damaged_page_fails_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A bit flipped in an old readings page: the backup is refused with the damage named,
    and no file is left in the target directory (it left a malformed copy behind)."""
    cfg = vault_config(tmp_path, flush_interval_s=0)
    key = write_key(cfg)
    write_gateway_config(tmp_path, cfg)

    async def fill() -> None:
        async with await Vault.open(cfg, key) as v:
            for start in range(0, 1500, 500):
                await v.append([hr(i) for i in range(start, start + 500)])

    asyncio.run(fill())
    _, leaves = table_pages(cfg.path, key, "readings")
    flip(cfg.path, leaves[2])
    target = tmp_path / "backups"
    target.mkdir(mode=0o700)
    res = edge_cli(tmp_path, "vault", "backup", str(target / "vault-backup.db"))
    assert res.returncode == 2, res.stdout
    assert "damaged page" in res.stderr and "edge vault salvage" in res.stderr
    assert "table readings" in res.stderr
    assert os.listdir(target) == []


def test_a_backup_is_written_under_a_temporary_name_and_records_its_key_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, key = asyncio.run(filled(tmp_path))
    target = tmp_path / "backups"
    target.mkdir(mode=0o700)
    dest = target / "b.db"
    seen: list[list[str]] = []
    real = maintenance.find_damage

    def spy(driver: Any, path: Path, k: bytes | None, budget: float | None) -> Any:
        seen.append(sorted(os.listdir(target)))
        assert path.parent == target and path.name.startswith(".b.db.tmp-")
        return real(driver, path, k, budget)

    monkeypatch.setattr(maintenance, "find_damage", spy)

    async def back_up() -> None:
        async with await Vault.open(cfg, key) as v:
            await v.backup(dest)

    asyncio.run(back_up())
    assert seen and not any("b.db" in names for names in seen)  # verified before it appears
    assert sorted(os.listdir(target)) == ["b.db", "b.db.keyid"]
    assert (target / "b.db.keyid").read_text() == key_id(key) + "\n"
    assert oct((target / "b.db.keyid").stat().st_mode & 0o777) == "0o600"

    def broken(*_: object) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maintenance, "find_damage", broken)
    with pytest.raises(OSError):
        asyncio.run(back_up_to(cfg, key, target / "c.db"))
    assert sorted(os.listdir(target)) == ["b.db", "b.db.keyid"]


async def back_up_to(cfg: VaultConfig, key: bytes, dest: Path) -> None:
    async with await Vault.open(cfg, key) as v:
        await v.backup(dest)


def test_a_backup_made_before_a_rotation_still_opens_until_its_key_is_retired(
    tmp_path: Path,
) -> None:
    """`edge keys rotate` overwrote the key and a backup made a minute earlier no longer
    opened. Now the replaced key is kept, the backup names the key it needs, and
    `edge vault check-backup` says which key opens it."""
    cfg, key = asyncio.run(filled(tmp_path))
    old_id = key_id(key)
    target = tmp_path / "backups"
    target.mkdir(mode=0o700)
    backup = target / "before.db"
    res = edge_cli(tmp_path, "vault", "backup", str(backup))
    assert res.returncode == 0, res.stderr
    assert f"id {old_id}" in res.stdout
    assert (target / "before.db.keyid").read_text() == old_id + "\n"

    res = edge_cli(tmp_path, "keys", "rotate")
    assert res.returncode == 0, res.stderr
    assert f"edge keys retire {old_id}" in res.stdout
    assert cfg.key_file is not None
    new_id = key_id(decode_key(cfg.key_file.read_bytes()) or b"")

    res = edge_cli(tmp_path, "vault", "check-backup", str(backup))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"opens with retired key {old_id}" in res.stdout
    assert "passes the cipher's HMAC check and quick_check" in res.stdout
    assert key.hex() not in res.stdout + res.stderr

    res = edge_cli(tmp_path, "keys", "list")
    assert res.returncode == 0, res.stderr
    assert f"current key   id {new_id}" in res.stdout and f"id {old_id}" in res.stdout

    res = edge_cli(tmp_path, "keys", "retire", new_id)
    assert res.returncode == 2 and "current vault key" in res.stderr
    res = edge_cli(tmp_path, "keys", "retire", old_id)
    assert res.returncode == 0, res.stderr

    res = edge_cli(tmp_path, "vault", "check-backup", str(backup))
    assert res.returncode == 1
    assert "does NOT open" in res.stdout and f"it needs key id {old_id}" in res.stdout

    res = edge_cli(tmp_path, "audit", "tail", "-n", "1")
    assert f"keys.retired {old_id}" in res.stdout


def test_check_backup_names_a_damaged_backup(tmp_path: Path) -> None:
    asyncio.run(filled(tmp_path))
    backup = tmp_path / "b.db"
    assert edge_cli(tmp_path, "vault", "backup", str(backup)).returncode == 0
    flip(backup, 3)
    res = edge_cli(tmp_path, "vault", "check-backup", str(backup))
    assert res.returncode == 1
    assert "opens with the current key" in res.stdout and "DAMAGED" in res.stdout
    assert "page 3" in res.stdout
