"""Key rotation: a crash at every step leaves a vault that opens with exactly one of the two
keys; the next `edge keys rotate` says which and finishes the job."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlcipher3

from edge.config import VaultConfig
from edge.errors import VaultError
from edge.vault import Vault, cipher
from edge.vault.keys import decode_key
from edge.vault.rotation import rotate_key
from tests.support.vault_proc import REPO, spawn
from tests.support.vault_support import (
    file_digests,
    hr,
    vault_config,
    write_gateway_config,
    write_key,
)

pytestmark = pytest.mark.integration

#: step reached -> (which key the database opens with, what `edge keys rotate` then says)
STAGES = {
    "started": ("current", "re-keyed with a new key"),
    "previous_kept": ("current", "opened with the CURRENT key"),
    "key_written": ("previous", "opened with the PREVIOUS key"),
    "rekey_begin": ("previous", "opened with the PREVIOUS key"),
    "rekey_committed": ("current", "opened with the NEW key"),
    "audited": ("current", "opened with the NEW key"),
    "finished": ("current", "re-keyed with a new key"),
}


def edge_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(tmp / "gateway.toml"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def read_key(path: Path) -> bytes | None:
    return decode_key(path.read_bytes()) if path.exists() else None


def keys_that_open(cfg: VaultConfig, keys: dict[str, bytes | None], scratch: Path) -> set[str]:
    """Ground truth, by plain SQLCipher on copies of the files (the originals stay as the
    crash left them)."""
    opened = set()
    for name, key in keys.items():
        if key is None:
            continue
        d = scratch / name
        d.mkdir()
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(cfg.path) + suffix)
            if src.exists():
                shutil.copyfile(src, d / ("vault.db" + suffix))
        conn = sqlcipher3.connect(str(d / "vault.db"))
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        try:
            if conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 400:
                opened.add(name)
        except sqlcipher3.DatabaseError:
            pass
        finally:
            conn.close()
    return opened


async def make_vault(tmp: Path) -> tuple[VaultConfig, bytes]:
    cfg = vault_config(tmp)
    key = write_key(cfg)
    write_gateway_config(tmp, cfg)
    async with await Vault.open(cfg, key) as v:
        for start in range(0, 400, 100):
            await v.append([hr(i) for i in range(start, start + 100)])
        await v.audit("admin:test", "test.setup")
    return cfg, key


async def check_finished(cfg: VaultConfig, old: bytes) -> None:
    assert cfg.key_file is not None
    current = read_key(cfg.key_file)
    assert current is not None and current != old
    assert read_key(Path(str(cfg.key_file) + ".old")) is None
    assert oct(cfg.key_file.stat().st_mode & 0o777) == "0o600"
    async with await Vault.open(cfg, current) as v:
        assert (await v.stats()).pending == 400
        assert await v.verify_audit() >= 3
        actions = [e.action for e in await v.audit_tail(50)]
        assert actions[-1] == "keys.rotated"
        last_start = len(actions) - 1 - actions[::-1].index("keys.rotation_started")
        assert "keys.rotated" in actions[last_start:]
        assert await v.integrity_check() == []


@pytest.mark.parametrize("stage", list(STAGES))
async def test_crash_at_each_step_is_recovered(tmp_path: Path, stage: str) -> None:
    cfg, k0 = await make_vault(tmp_path)
    proc = spawn(tmp_path, "rotate-die", stage, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == -9

    assert cfg.key_file is not None
    keys = {"current": read_key(cfg.key_file),
            "previous": read_key(Path(str(cfg.key_file) + ".old"))}
    expected_key, expected_words = STAGES[stage]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    opened = keys_that_open(cfg, keys, scratch)
    if keys["current"] == keys["previous"]:
        assert opened == {"current", "previous"}
    else:
        assert opened == {expected_key}

    res = edge_cli(tmp_path, "keys", "rotate")
    assert res.returncode == 0, res.stderr
    assert expected_words in res.stdout
    await check_finished(cfg, k0)


async def test_kill_during_the_rekey_itself(tmp_path: Path) -> None:
    cfg, k0 = await make_vault(tmp_path)
    async with await Vault.open(cfg, k0) as v:  # a few MB, so the re-key takes a while
        for start in range(1000, 21000, 2000):
            await v.append([hr(i) for i in range(start, start + 2000)])
    rng = random.Random(7)
    for _ in range(3):
        proc = spawn(tmp_path, "rotate-die", "never", stdout=subprocess.PIPE)
        assert proc.stdout is not None
        while (line := proc.stdout.readline()) and line.strip() != "rekey_begin":
            pass
        assert line, "the rotation never reached the re-key"
        # A random instant inside (or just after) PRAGMA rekey.
        deadline = rng.uniform(0.0, 0.05)
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        res = edge_cli(tmp_path, "keys", "rotate")
        assert res.returncode == 0, res.stderr
        assert "re-keyed" in res.stdout
    assert cfg.key_file is not None
    current = read_key(cfg.key_file)
    assert current is not None
    async with await Vault.open(cfg, current) as v:
        assert (await v.stats()).pending == 20400
        assert await v.integrity_check() == []
        assert await v.verify_audit() >= 2


async def test_rotation_is_refused_while_the_vault_is_open_elsewhere(tmp_path: Path) -> None:
    cfg, k0 = await make_vault(tmp_path)
    async with await Vault.open(cfg, k0) as daemon:  # as a running edge would hold it
        res = edge_cli(tmp_path, "keys", "rotate")
        assert res.returncode == 2
        assert "open in another process" in res.stderr
        assert (await daemon.stats()).pending == 400  # still readable under its key
    assert cfg.key_file is not None
    assert read_key(cfg.key_file) == k0
    assert read_key(Path(str(cfg.key_file) + ".old")) is None


@pytest.mark.parametrize("stage", ["key_written", "rekey_committed"])
async def test_commands_run_by_hand_finish_an_interrupted_rotation(
    tmp_path: Path, stage: str
) -> None:
    """`edge consent list` (like `edge run`, `edge pair` …) opens through open_vault: after a
    crash that left the new key in the file but the database on the old one, it works and
    completes the rotation instead of failing with a wrong-key error."""
    cfg, k0 = await make_vault(tmp_path)
    proc = spawn(tmp_path, "rotate-die", stage, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == -9
    assert cfg.key_file is not None
    assert read_key(Path(str(cfg.key_file) + ".old")) is not None  # a rotation was left

    for name in ("ca.pem", "client.pem", "client.key"):  # the full config check wants them
        await asyncio.to_thread((tmp_path / name).write_text, "")
        await asyncio.to_thread((tmp_path / name).chmod, 0o600)
    res = edge_cli(tmp_path, "consent", "list", "--json")
    assert res.returncode == 0, res.stderr
    await check_finished(cfg, k0)


def test_recovery_checks_the_room_for_its_key_check_copy_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finishing a rotation whose re-key sits in the WAL checks the key on a private copy of
    the database and WAL: with too little free space that is said, with the amount, before
    anything is written (it was "internal error (OSError)")."""
    cfg, k0 = asyncio.run(make_vault(tmp_path))
    proc = spawn(tmp_path, "rotate-die", "rekey_committed", stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == -9
    wal_bytes = os.path.getsize(str(cfg.path) + "-wal")
    assert wal_bytes > 0
    needed = os.path.getsize(cfg.path) + wal_bytes + cipher.COPY_MARGIN
    before = file_digests(cfg.path)
    asked: list[Path] = []

    def nearly_full(directory: Path) -> int:
        asked.append(directory)
        return 64 * 1024

    monkeypatch.setattr(cipher, "free_space", nearly_full)
    with pytest.raises(VaultError) as err:
        asyncio.run(rotate_key(cfg, actor="admin:test"))
    text = str(err.value)
    assert f"({needed} bytes) free in {cfg.path.parent}" in text
    assert "only 0.1 MiB is free" in text
    assert asked == [cfg.path.parent]
    assert file_digests(cfg.path) == before
    assert not [p for p in os.listdir(cfg.path.parent) if p.startswith(".keycheck-")]

    monkeypatch.undo()
    outcome = asyncio.run(rotate_key(cfg, actor="admin:test"))
    assert outcome.recovered and "opened with the NEW key" in outcome.message
    asyncio.run(check_finished(cfg, k0))


def test_the_cli_says_there_is_no_room_not_internal_error(tmp_path: Path) -> None:
    asyncio.run(make_vault(tmp_path))
    proc = spawn(tmp_path, "rotate-die", "rekey_committed", stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == -9
    # `edge keys rotate` as run by hand, with the free-space probe reporting a nearly full disk
    env = {"EDGE_TEST_FREE_SPACE": "4096"}
    res = subprocess.run(
        [sys.executable, "-c",
         "import os, sys; import edge.vault.cipher as c; "
         "c.free_space = lambda d: int(os.environ['EDGE_TEST_FREE_SPACE']); "
         "from edge.cli import main; sys.exit(main())",
         "--config", str(tmp_path / "gateway.toml"), "keys", "rotate"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), **env),
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "internal error" not in res.stderr
    assert "free in" in res.stderr and "MiB" in res.stderr
