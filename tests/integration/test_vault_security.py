"""Encryption at rest: wrong keys change nothing, no plaintext anywhere, backups restore."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import KeyUnavailable, VaultError
from edge.readings import GlucoseReading, HeartRateReading
from edge.vault import Vault
from edge.vault.keys import new_key
from tests.support.vault_proc import REPO, spawn
from tests.support.vault_support import (
    file_digests,
    glucose,
    hr,
    vault_config,
    write_gateway_config,
    write_key,
)

pytestmark = pytest.mark.integration

PATIENT = "pt-zebra-unique-7731"
DEVICE = "DE:AD:BE:EF:77:31"


def edge_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(tmp / "gateway.toml"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def leave_wal_behind(tmp: Path) -> None:
    """A writer killed right after appending: -wal and -shm stay with committed frames."""
    proc = spawn(tmp, "die-after-append", "50")
    assert proc.wait(timeout=60) == -9


async def test_wrong_key_changes_no_byte_of_a_cleanly_closed_vault(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(20)])
    before = file_digests(cfg.path)
    with pytest.raises(KeyUnavailable, match="file provider"):
        await Vault.open(cfg, new_key())
    assert file_digests(cfg.path) == before


async def test_wrong_key_after_a_crash_changes_no_byte_and_exits_2(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    write_gateway_config(tmp_path, cfg)
    leave_wal_behind(tmp_path)
    before = file_digests(cfg.path)
    assert before["-wal"] is not None and before["-shm"] is not None

    write_key(cfg, new_key())
    res = edge_cli(tmp_path, "vault", "stats")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "file provider" in lines[0] and "does not open" in lines[0]
    assert key.hex() not in res.stderr + res.stdout
    assert file_digests(cfg.path) == before

    cfg.key_file.unlink()  # type: ignore[union-attr]
    res = edge_cli(tmp_path, "vault", "stats")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert "file provider" in res.stderr and "edge keys init" in res.stderr
    assert file_digests(cfg.path) == before

    write_key(cfg, key)  # the right key: the crashed writer's readings are all there
    async with await Vault.open(cfg, key) as v:
        assert (await v.stats()).pending == 50


def _scan(path: Path, needles: list[bytes]) -> list[str]:
    data = path.read_bytes()
    return [f"{path.name}: {n!r}" for n in needles if n in data]


async def test_no_plaintext_in_db_wal_shm_or_backup(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    readings: list[HeartRateReading | GlucoseReading] = [
        hr(i, patient=PATIENT, device=DEVICE, bpm=187) for i in range(300)
    ]
    readings += [glucose(i, patient=PATIENT, device=DEVICE, mg_dl="123.4567") for i in range(50)]
    needles = [
        PATIENT.encode(),
        DEVICE.encode(),
        b'"bpm":187',
        b"123.4567",
        PATIENT.encode("utf-16-le"),
        readings[0].id.encode(),
        b"heart_rate",
        b"CREATE TABLE",
        b"SQLite format 3",
    ]
    backup = tmp_path / "backup.db"
    v = await Vault.open(cfg, key)
    try:
        await v.grant_consent(PATIENT, actor="admin:t")
        await v.bind_device(DEVICE, "heart_rate", PATIENT, bonded=True, actor="admin:t")
        await v.append(readings)
        await v.backup(backup)
        # While open: the WAL holds the latest pages.
        assert os.stat(str(cfg.path) + "-wal").st_size > 0
        found = []
        for suffix in ("", "-wal", "-shm"):
            found += _scan(Path(str(cfg.path) + suffix), needles)
        found += _scan(backup, needles)
        assert found == []
    finally:
        await v.close()
    assert _scan(cfg.path, needles) == []
    assert oct(backup.stat().st_mode & 0o777) == "0o600"


async def test_backup_is_consistent_and_restores_with_the_key(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    backup = tmp_path / "backup.db"
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(100)])
        await v.mark_delivered([p.id for p in await v.next_batch(30)])
        await v.audit("admin:t", "test.before_backup")
        await v.backup(backup)
        await v.append([hr(i) for i in range(100, 110)])  # after the backup: not in it
        with pytest.raises(VaultError, match="exists"):
            await v.backup(backup)

    restored = vault_config(tmp_path, path=tmp_path / "data" / "restored.db")
    os.replace(backup, restored.path)
    with pytest.raises(KeyUnavailable):
        await Vault.open(restored, new_key())
    async with await Vault.open(restored, key) as r:
        stats = await r.stats()
        assert (stats.pending, stats.delivered_retained) == (70, 30)
        assert [p.id for p in await r.next_batch(100)] == [hr(i).id for i in range(30, 100)]
        assert await r.verify_audit() == 1
        assert await r.integrity_check() == []
