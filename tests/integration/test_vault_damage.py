"""A damaged vault (issue 14): bits flipped in real SQLCipher pages. The daemon refuses to
start naming the damage and the recovery; `edge vault salvage` copies every readable row."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlcipher3

from edge.config import GatewayConfig, VaultConfig, load_config
from edge.daemon import Daemon
from edge.errors import KeyUnavailable, VaultCorrupt
from edge.vault import Vault
from edge.vault.keys import key_id, new_key
from edge.vault.maintenance import find_damage
from tests.support.vault_pages import flip, table_pages
from tests.support.vault_proc import REPO
from tests.support.vault_support import hr, vault_config, write_gateway_config, write_key

pytestmark = pytest.mark.integration


def edge_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(tmp / "gateway.toml"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


async def make_vault(tmp: Path, readings: int = 40) -> tuple[VaultConfig, bytes]:
    cfg = vault_config(tmp, flush_interval_s=0)
    key = write_key(cfg)
    write_gateway_config(tmp, cfg)
    async with await Vault.open(cfg, key) as v:
        await v.grant_consent("pt-alpha", scope="heart-rate", actor="admin:test")
        for start in range(0, readings, 500):
            await v.append([hr(i) for i in range(start, min(readings, start + 500))])
        for i in range(3):
            await v.audit("admin:test", "test.entry", f"s{i}")
    return cfg, key


def gateway(tmp: Path) -> GatewayConfig:
    return load_config(tmp / "gateway.toml")


async def start_or_fail(daemon: Daemon) -> BaseException | None:
    """Run the daemon until it is ready (then stop it: None) or it fails (its error)."""
    run = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        ready.cancel()
        return run.exception()
    daemon.request_stop()
    await run
    return None


def no_ble(*_: object) -> object:
    raise AssertionError("BLE must not start on a damaged vault")


async def test_daemon_refuses_a_vault_with_one_flipped_bit_in_an_audit_page(
    tmp_path: Path,
) -> None:
    cfg, key = await make_vault(tmp_path)
    _, leaves = table_pages(cfg.path, key, "audit")
    flip(cfg.path, leaves[-1])

    daemon = Daemon(gateway(tmp_path), key=key, ble_factory=no_ble,  # type: ignore[arg-type]
                    install_signal_handlers=False)
    error = await start_or_fail(daemon)
    assert isinstance(error, VaultCorrupt), error
    text = str(error)
    assert f"page {leaves[-1]}" in text and "HMAC" in text
    assert "unreadable part(s) in table audit;" in text  # that table, no other
    assert "edge vault salvage" in text
    assert "pt-alpha" not in text and key.hex() not in text
    assert daemon.vault is None  # closed again


async def test_a_healthy_vault_has_no_damage_and_a_spent_budget_reports_none(
    tmp_path: Path,
) -> None:
    cfg, key = await make_vault(tmp_path)
    assert not find_damage(sqlcipher3, cfg.path, key, 30.0).damaged
    # A zero budget: the check is incomplete, found nothing, and says so; no hang, no refusal.
    partial = find_damage(sqlcipher3, cfg.path, key, 0.0)
    assert not partial.damaged


def test_salvage_copies_every_readable_row_and_names_what_it_could_not_read(
    tmp_path: Path,
) -> None:
    cfg, key = asyncio.run(make_vault(tmp_path, readings=1500))
    interior, leaves = table_pages(cfg.path, key, "readings")
    assert interior and len(leaves) > 4
    flip(cfg.path, leaves[len(leaves) // 2])
    before = cfg.path.read_bytes()
    out = tmp_path / "data" / "salvaged.db"

    res = edge_cli(tmp_path, "vault", "salvage", str(out))
    assert res.returncode == 1, res.stderr
    assert cfg.path.read_bytes() == before  # the damaged vault is never written
    line = next(x for x in res.stdout.splitlines() if x.strip().startswith("readings:"))
    m = re.search(r"(\d+) row\(s\) copied; COULD NOT READ row id\(s\) (\d+)–(\d+)$", line)
    assert m, line
    copied, first, last = (int(g) for g in m.groups())
    assert 0 < last - first + 1 < 40  # one leaf's rows, no more
    assert copied == 1500 - (last - first + 1)
    assert "consents: 1 row(s) copied" in res.stdout
    assert "pt-alpha" not in res.stdout + res.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert not Path(str(out) + ".lock").exists()

    async def check() -> None:
        salvaged = cfg.model_copy(update={"path": out})
        async with await Vault.open(salvaged, key) as v:
            assert await v.integrity_check() == []
            stats = await v.stats()
            assert stats.pending == copied
            seqs: set[int] = set()
            batch = await v.next_batch(5000)
            seqs = {p.seq for p in batch}
            assert seqs.isdisjoint(range(first, last + 1))
            assert len(seqs) == copied
            assert await v.verify_audit() >= 4
            tail = await v.audit_tail(1)
            assert tail[0].action == "vault.salvaged"
            assert await v.has_consent("pt-alpha")
            assert await v.revoke_consent("pt-alpha", actor="admin:test") == copied

    asyncio.run(check())


def test_salvage_of_an_unreadable_audit_table_still_gives_a_working_vault(
    tmp_path: Path,
) -> None:
    cfg, key = asyncio.run(make_vault(tmp_path))
    _, leaves = table_pages(cfg.path, key, "audit")
    assert len(leaves) == 1
    flip(cfg.path, leaves[0])
    out = tmp_path / "data" / "salvaged.db"
    res = edge_cli(tmp_path, "vault", "salvage", str(out))
    assert res.returncode == 1, res.stderr
    assert "audit: 0 row(s) copied; COULD NOT READ row id(s) 1 to the end" in res.stdout
    assert "readings: 40 row(s) copied" in res.stdout

    async def check() -> None:
        async with await Vault.open(cfg.model_copy(update={"path": out}), key) as v:
            assert await v.verify_audit() == 1  # the salvage itself starts a new chain
            assert await v.revoke_consent("pt-alpha", actor="admin:test") == 40

    asyncio.run(check())
    # An existing OUT is refused and left alone.
    res = edge_cli(tmp_path, "vault", "salvage", str(out))
    assert res.returncode == 2 and "exists" in res.stderr


async def test_page_one_damage_is_damage_and_a_wrong_key_is_still_a_wrong_key(
    tmp_path: Path,
) -> None:
    cfg, key = await make_vault(tmp_path)
    assert (tmp_path / "data" / "vault.db.keyid").read_text().strip() == key_id(key)
    flip(cfg.path, 1, offset=2000)
    with pytest.raises(VaultCorrupt) as damaged:
        await Vault.open(cfg, key)
    assert "damaged" in str(damaged.value) and "not a wrong key" in str(damaged.value)
    assert key.hex() not in str(damaged.value)
    with pytest.raises(KeyUnavailable) as wrong:
        await Vault.open(cfg, new_key())
    assert "wrong key" in str(wrong.value)


def test_the_cli_reports_page_one_damage_as_damage(tmp_path: Path) -> None:
    cfg, _ = asyncio.run(make_vault(tmp_path))
    flip(cfg.path, 1, offset=3000)
    res = edge_cli(tmp_path, "vault", "stats")
    assert res.returncode == 2
    assert "is damaged" in res.stderr and "wrong key, or not a vault" not in res.stderr
