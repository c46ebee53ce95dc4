"""The side log write path: power cuts at fsync boundaries, torn tails, no plaintext on disk,
exact dedup across the log and the database, glucose durable at once, one owner at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlcipher3

from edge.config import VaultConfig
from edge.vault import Vault
from edge.vault.sidelog import HEADER_BYTES, log_path
from edge.vault.staging import Staging
from tests.support.vault_support import glucose, hr, vault_config, write_key

pytestmark = pytest.mark.integration

SUFFIXES = ("", "-wal", "-shm", "-log")
#: the background flusher's first round comes after this: the tests drive it themselves
QUIET = 60.0


def staging(v: Vault) -> Staging:
    st = v._engine.staging
    assert st is not None, "the vault has no side log"
    return st


def snapshot(cfg: VaultConfig, dest: Path, suffixes: tuple[str, ...] = SUFFIXES) -> VaultConfig:
    """Copy the vault's files as they are now (what a power cut at this instant keeps, when
    taken right after an fsync) into ``dest``; the config of the copy."""
    dest.mkdir(mode=0o700)
    for suffix in suffixes:
        src = Path(str(cfg.path) + suffix)
        if src.exists():
            shutil.copyfile(src, Path(str(dest / cfg.path.name) + suffix))
    return cfg.model_copy(update={"path": dest / cfg.path.name})


def raw_rows(cfg: VaultConfig, key: bytes) -> tuple[dict[str, bool], list[object], list[object]]:
    """{id: delivered} and both integrity checks, read with plain sqlcipher3."""
    conn = sqlcipher3.connect(str(cfg.path), isolation_level=None)
    try:
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        rows = dict(conn.execute("SELECT id, delivered_at IS NOT NULL FROM readings"))
        cipher_check = conn.execute("PRAGMA cipher_integrity_check").fetchall()
        check = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return rows, cipher_check, check


async def test_a_power_cut_at_any_fsync_loses_only_what_followed_it(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    cuts: list[tuple[VaultConfig, set[str]]] = []
    accepted: set[str] = set()
    v = await Vault.open(cfg, key)
    try:
        def cut() -> None:
            n = len(cuts)
            cuts.append((snapshot(cfg, tmp_path / f"cut{n}"), set(accepted)))

        staging(v).log.on_sync = cut
        batches = [[hr(i) for i in range(k * 40, k * 40 + 40)] for k in range(6)]
        for k, batch in enumerate(batches):
            await v.append(batch)
            accepted |= {r.id for r in batch}
            if k == 1:
                await v.mark_delivered([r.id for r in batches[0]])
            if k % 2 == 1:
                await v.tick()  # the flusher's fsync
            if k == 3:
                await v.flush()  # a merge: durable commit, then the log starts anew
        tail = [hr(i) for i in range(1000, 1040)]
        await v.append(tail)  # after the last fsync: a power cut now may lose it
    finally:
        staging(v).log.on_sync = None
        await v.close()

    assert len(cuts) >= 4
    for n, (copy, before) in enumerate(cuts):
        async with await Vault.open(copy, key) as c:  # replays the copied log
            assert await c.integrity_check() == []
        rows, cipher_check, check = raw_rows(copy, key)
        assert before <= set(rows), f"cut {n} lost {len(before - set(rows))} synced readings"
        assert set(rows) <= accepted
        assert cipher_check == [] and check == [("ok",)]
    last_copy, last_before = cuts[-1]
    rows, _, _ = raw_rows(last_copy, key)
    assert {r.id for b in batches for r in b} == last_before <= set(rows)
    assert {r.id for r in tail}.isdisjoint(rows)


async def test_a_glucose_commit_is_durable_when_it_returns(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(30)])  # staged, in the log only
        await v.commit_glucose("AA:BB:CC:DD:EE:02", [glucose(s) for s in (1, 2, 3)],
                               last_sequence=3, last_device_time=None, clock_offset_s=0)
        # A power cut now, and the side log lost entirely: the database alone holds both
        # the records and their cursor (and what was staged, merged in the same commit).
        copy = snapshot(cfg, tmp_path / "cut", ("", "-wal", "-shm"))
    rows, cipher_check, check = raw_rows(copy, key)
    assert {glucose(s).id for s in (1, 2, 3)} <= set(rows)
    assert {hr(i).id for i in range(30)} <= set(rows)
    assert cipher_check == [] and check == [("ok",)]
    async with await Vault.open(copy, key) as c:
        cur = await c.cursor("AA:BB:CC:DD:EE:02")
        assert cur is not None and cur.last_sequence == 3


@pytest.mark.parametrize("damage", ["cut", "garbage"])
async def test_a_torn_log_tail_is_dropped_not_fatal(tmp_path: Path, damage: str) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    v = await Vault.open(cfg, key)
    await v.append([hr(i) for i in range(20)])
    await v.append([hr(i) for i in range(20, 40)])
    copy = snapshot(cfg, tmp_path / "copy")
    await v.close()
    side = log_path(copy.path)
    data = side.read_bytes()
    side.write_bytes(data[:-7] if damage == "cut" else data + b"\x00\x00\x01\x00garbage")
    async with await Vault.open(copy, key) as c:
        got = [p.id for p in await c.next_batch(100)]
        assert await c.integrity_check() == []
    first = [hr(i).id for i in range(20)]
    assert got == (first if damage == "cut" else first + [hr(i).id for i in range(20, 40)])
    assert log_path(copy.path).stat().st_size == HEADER_BYTES  # merged, started anew


async def test_no_plaintext_in_any_file_the_write_path_creates(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    marker = "pt-MARKER-93a7"
    v = await Vault.open(cfg, key)
    try:
        await v.append([hr(i, patient=marker, bpm=187) for i in range(200)])
        await v.tick()
        await v.commit_glucose("AA:BB:CC:DD:EE:02", [glucose(7, patient=marker, mg_dl="271")],
                               last_sequence=7, last_device_time=None, clock_offset_s=0)
        await v.append([hr(i, patient=marker, bpm=187) for i in range(200, 260)])
        await v.tick()
        await v.backup(tmp_path / "backup.db")
        await v.append([hr(i, patient=marker, bpm=187) for i in range(260, 300)])
        await v.tick()
        files = [p for p in cfg.path.parent.iterdir() if p.is_file()] + [tmp_path / "backup.db"]
        assert {p.name for p in files} >= {"vault.db", "vault.db-wal", "vault.db-log"}
        assert log_path(cfg.path).stat().st_size > HEADER_BYTES  # it holds readings
        for p in files:
            data = p.read_bytes()
            for needle in (marker.encode(), b"heart_rate", b'"bpm":187', b'"mg_dl":"271"'):
                assert needle not in data, f"{needle!r} in plaintext in {p.name}"
    finally:
        await v.close()


async def test_dedup_and_counts_are_exact_across_log_and_database(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        r1 = await v.append([hr(i) for i in range(10)])
        await v.flush()  # 0..9 in the database
        r2 = await v.append([hr(i) for i in range(5, 15)] + [hr(14)])  # 10..14 staged
        r3 = await v.append([hr(i) for i in range(0, 20)])
        assert (r1.stored, r1.duplicates) == (10, 0)
        assert (r2.stored, r2.duplicates) == (5, 6)
        assert (r3.stored, r3.duplicates) == (5, 15)
        batch = await v.next_batch(100)
        assert [p.id for p in batch] == [hr(i).id for i in range(20)]
        assert [p.seq for p in batch] == sorted({p.seq for p in batch})
        # acknowledged: two in the database, two staged, one unknown, one twice
        ids = [hr(2).id, hr(3).id, hr(12).id, hr(16).id, "no-such-id", hr(3).id]
        assert await v.mark_delivered(ids) == 4
        assert await v.mark_delivered([hr(12).id, hr(2).id]) == 0
        later = await v.next_batch(100)
        assert [p.id for p in later] == [hr(i).id for i in range(20) if i not in (2, 3, 12, 16)]
        assert [p.id for p in await v.next_batch(3, after_seq=batch[1].seq)] == [
            hr(i).id for i in (4, 5, 6)]
        stats = await v.stats()
        assert (stats.pending, stats.delivered_retained) == (16, 4)
        assert (await v.append([hr(12), hr(2)])).duplicates == 2  # delivered still dedup
        await v.flush()
        assert (await v.append([hr(12), hr(2)])).duplicates == 2
        assert [p.id for p in await v.next_batch(100)] == [p.id for p in later]
    async with await Vault.open(cfg, key) as v:
        stats = await v.stats()
        assert (stats.pending, stats.delivered_retained) == (16, 4)
    rows, _, _ = raw_rows(cfg, key)
    assert sorted(i for i, d in rows.items() if d) == sorted(hr(i).id for i in (2, 3, 12, 16))


async def test_one_owner_of_the_log_the_other_writes_through(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    a = await Vault.open(cfg, key)
    b = await Vault.open(cfg, key)
    try:
        assert a._engine.staging is not None and b._engine.staging is None
        await a.append([hr(i) for i in range(10)])  # staged in a
        assert (await b.append([hr(i) for i in range(100, 105)])).stored == 5  # durable now
        await a.flush()  # b's rows took the seqs a had staged: a's are numbered anew
        await a.close()
        await b.tick()  # the owner went: b takes the log over
        assert b._engine.staging is not None
        got = [p.id for p in await b.next_batch(100)]
        assert sorted(got) == sorted([hr(i).id for i in range(10)]
                                     + [hr(i).id for i in range(100, 105)])
        assert (await b.stats()).pending == 15
    finally:
        await a.close()
        await b.close()


async def test_a_log_under_another_key_is_set_aside_not_decrypted(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=QUIET)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(5)])
        stale = log_path(cfg.path).read_bytes()
    (tmp_path / "other").mkdir()
    other = vault_config(tmp_path / "other", flush_interval_s=QUIET)
    okey = write_key(other)
    async with await Vault.open(other, okey):
        pass
    log_path(other.path).write_bytes(stale)  # a log that is not this vault's
    async with await Vault.open(other, okey) as o:
        assert await o.next_batch(10) == []
    aside = list(other.path.parent.glob("vault.db-log.foreign-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == stale


async def test_interval_zero_writes_through(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=0)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        assert v._engine.staging is None
        await v.append([hr(i) for i in range(5)])
        await v.mark_delivered([hr(0).id])
        copy = snapshot(cfg, tmp_path / "cut", ("", "-wal", "-shm"))
    rows, _, check = raw_rows(copy, key)
    assert rows == {hr(i).id: i == 0 for i in range(5)}
    assert check == [("ok",)]
    assert not log_path(cfg.path).exists()
