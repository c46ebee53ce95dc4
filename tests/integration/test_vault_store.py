"""The vault against real SQLCipher files: outbox, bounds, consent, cursors, audit, retention."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlcipher3

from edge.config import VaultConfig
from edge.errors import AuditChainBroken, ConfigError, VaultError, VaultFull
from edge.testing import ManualClock
from edge.vault import Vault
from tests.support.vault_support import BASE_TIME, glucose, hr, vault_config, write_key

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(tmp_path: Path) -> VaultConfig:
    return vault_config(tmp_path)


@pytest.fixture
def key(cfg: VaultConfig) -> bytes:
    return write_key(cfg)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(BASE_TIME)


@pytest.fixture
async def vault(cfg: VaultConfig, key: bytes, clock: ManualClock) -> AsyncIterator[Vault]:
    v = await Vault.open(cfg, key, clock=clock)
    yield v
    await v.close()


def raw(cfg: VaultConfig, key: bytes) -> sqlcipher3.Connection:
    conn = sqlcipher3.connect(str(cfg.path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn


# --- outbox ----------------------------------------------------------------------------------


async def test_append_is_idempotent_and_batches_come_oldest_first(vault: Vault) -> None:
    first = await vault.append([hr(i) for i in range(10)])
    again = await vault.append([hr(i) for i in range(5, 15)])
    assert (first.stored, first.duplicates) == (10, 0)
    assert (again.stored, again.duplicates) == (5, 5)

    batch = await vault.next_batch(4)
    assert [p.id for p in batch] == [hr(i).id for i in range(4)]
    assert [p.seq for p in batch] == sorted(p.seq for p in batch)
    assert batch[0].reading() == hr(0)
    assert batch[0].payload == hr(0).model_dump_json().encode()
    assert (batch[0].patient, batch[0].kind) == ("pt-alpha", "heart_rate")
    later = await vault.next_batch(100, after_seq=batch[-1].seq)
    assert [p.id for p in later] == [hr(i).id for i in range(4, 15)]

    assert await vault.mark_delivered([p.id for p in batch]) == 4
    assert await vault.mark_delivered([p.id for p in batch]) == 0  # already delivered
    rest = await vault.next_batch(100)
    assert [p.id for p in rest] == [hr(i).id for i in range(4, 15)]
    # A delivered reading re-sent by a device is still a duplicate, not a new pending one.
    assert (await vault.append([hr(0)])).duplicates == 1

    stats = await vault.stats()
    assert stats.pending == 11
    assert stats.delivered_retained == 4
    assert stats.pending_bytes == sum(len(p.payload) for p in rest)


async def test_mark_delivered_finds_ids_not_handed_out_in_this_process(
    cfg: VaultConfig, key: bytes
) -> None:
    v = await Vault.open(cfg, key)
    await v.append([hr(i) for i in range(6)])
    await v.close()
    v = await Vault.open(cfg, key)
    try:
        assert await v.mark_delivered([hr(1).id, hr(4).id, "no-such-id"]) == 2
        assert [p.id for p in await v.next_batch(10)] == [hr(i).id for i in (0, 2, 3, 5)]
        assert (await v.stats()).pending == 4
    finally:
        await v.close()


async def test_stats_report_oldest_pending_age_from_the_injected_clock(
    vault: Vault, clock: ManualClock
) -> None:
    assert (await vault.stats()).oldest_pending_age_s is None
    await vault.append([hr(0)])
    clock.step(90)
    await vault.append([hr(1)])
    assert (await vault.stats()).oldest_pending_age_s == pytest.approx(90)


async def test_counters_survive_reopen_and_match_the_rows(cfg: VaultConfig, key: bytes) -> None:
    v = await Vault.open(cfg, key)
    await v.append([hr(i) for i in range(20)])
    await v.mark_delivered([p.id for p in await v.next_batch(7)])
    await v.count_refusal("malformed", 3)
    await v.count_refusal("no_consent")
    before = await v.stats()
    await v.close()
    v = await Vault.open(cfg, key)
    after = await v.stats()
    await v.close()
    assert (after.pending, after.pending_bytes, after.delivered_retained) == (
        before.pending,
        before.pending_bytes,
        before.delivered_retained,
    )
    assert after.refusals == {"malformed": 3, "no_consent": 1}
    conn = raw(cfg, key)
    pending, nbytes = conn.execute(
        "SELECT count(*), sum(length(payload)) FROM readings WHERE delivered_at IS NULL"
    ).fetchone()
    conn.close()
    assert (pending, nbytes) == (13, after.pending_bytes)


# --- bounds ----------------------------------------------------------------------------------


async def test_full_by_count_refuses_counts_and_never_evicts(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, max_pending=10)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(8)])
        with pytest.raises(VaultFull) as exc:
            await v.append([hr(i) for i in range(100, 105)])
        assert exc.value.reason == "vault_full_count"
        stats = await v.stats()
        assert stats.pending == 8
        assert stats.refusals == {"vault_full_count": 5}
        assert [p.id for p in await v.next_batch(100)] == [hr(i).id for i in range(8)]
        # Room comes back only by delivery; then the batch fits.
        await v.mark_delivered([hr(0).id, hr(1).id, hr(2).id])
        assert (await v.append([hr(i) for i in range(100, 105)])).stored == 5
        assert (await v.stats()).pending == 10
        with pytest.raises(VaultFull):
            await v.append([hr(200)])
        assert (await v.stats()).refusals == {"vault_full_count": 6}


async def test_full_by_bytes_refuses_the_whole_batch(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, max_pending_bytes=4096)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        stored = 0
        with pytest.raises(VaultFull) as exc:
            for i in range(0, 1000, 3):
                stored += (await v.append([hr(i), hr(i + 1), hr(i + 2)])).stored
        assert exc.value.reason == "vault_full_bytes"
        stats = await v.stats()
        assert stats.pending == stored > 0
        assert stats.pending_bytes <= 4096
        assert stats.refusals == {"vault_full_bytes": 3}


async def test_glucose_records_and_cursor_commit_together(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, max_pending=3)
    key = write_key(cfg)
    meter = "aa:bb:cc:dd:ee:02"
    async with await Vault.open(cfg, key) as v:
        assert await v.cursor(meter) is None
        res = await v.commit_glucose(
            meter,
            [glucose(1), glucose(2)],
            last_sequence=2,
            last_device_time=glucose(2).device_time,
            clock_offset_s=-7,
        )
        assert res.stored == 2
        cur = await v.cursor(meter.upper())
        assert cur is not None
        assert (cur.last_sequence, cur.last_device_time, cur.clock_offset_s) == (
            2,
            glucose(2).device_time,
            -7,
        )
        # Full: neither the records nor the cursor move, so the meter is re-read later.
        with pytest.raises(VaultFull):
            await v.commit_glucose(
                meter,
                [glucose(3), glucose(4)],
                last_sequence=4,
                last_device_time=None,
                clock_offset_s=0,
            )
        cur = await v.cursor(meter)
        assert cur is not None and cur.last_sequence == 2
        assert (await v.stats()).pending == 2
        await v.reset_cursor(meter, actor="admin:test")
        assert await v.cursor(meter) is None
        assert (await v.audit_tail(1))[0].action == "cursor.reset"


# --- bindings, consent, purge ------------------------------------------------------------------


async def test_bindings_are_audited_by_device_hash(vault: Vault, clock: ManualClock) -> None:
    addr = "AA:BB:CC:DD:EE:01"
    await vault.bind_device(addr.lower(), "heart_rate", "pt-alpha", bonded=True, actor="admin:t")
    clock.step(5)
    await vault.touch_device(addr, clock.now())
    [b] = await vault.bindings()
    assert (b.address, b.kind, b.patient, b.bonded, b.bound_by) == (
        addr,
        "heart_rate",
        "pt-alpha",
        True,
        "admin:t",
    )
    assert b.last_seen == clock.now()
    assert await vault.unbind_device(addr, actor="admin:t") is True
    assert await vault.unbind_device(addr, actor="admin:t") is False
    assert await vault.bindings() == []
    entries = await vault.audit_tail(10)
    assert [e.action for e in entries] == ["device.bound", "device.unbound"]
    assert all(e.subject == vault.device_hash(addr) for e in entries)
    assert all(addr not in e.subject and addr.lower() not in e.subject for e in entries)


async def test_revoke_consent_purges_and_audits_in_one_step(vault: Vault) -> None:
    await vault.grant_consent("pt-alpha", actor="admin:t")
    await vault.grant_consent("pt-beta", actor="admin:t")
    assert await vault.has_consent("pt-alpha")
    await vault.append([hr(i, patient="pt-alpha") for i in range(5)])
    await vault.append([hr(i, patient="pt-beta", device="AA:BB:CC:DD:EE:09") for i in range(3)])
    await vault.mark_delivered([hr(0, patient="pt-alpha").id])
    await vault.next_batch(100)  # the forwarder holds them in flight

    assert await vault.revoke_consent("pt-alpha", actor="admin:t") == 5
    assert not await vault.has_consent("pt-alpha")
    left = await vault.next_batch(100)
    assert {p.patient for p in left} == {"pt-beta"}
    assert await vault.mark_delivered([hr(3, patient="pt-alpha").id]) == 0
    stats = await vault.stats()
    assert (stats.pending, stats.delivered_retained) == (3, 0)
    consents = {c.patient: c for c in await vault.consents()}
    assert consents["pt-alpha"].revoked_at is not None and not consents["pt-alpha"].active
    assert consents["pt-beta"].active
    assert (await vault.audit_tail(1))[0].action == "consent.revoked"

    assert await vault.purge_patient("pt-beta", actor="admin:t") == 3
    assert (await vault.stats()).pending == 0
    assert (await vault.audit_tail(1))[0].action == "vault.patient_purged"


class AllowOnly:
    """A consent check that allows the named patients only."""

    def __init__(self, *patients: str) -> None:
        self.patients = set(patients)

    def allows(self, patient: str) -> bool:
        return patient in self.patients


async def test_the_consent_hook_drops_and_persists_no_consent_counts(
    cfg: VaultConfig, key: bytes
) -> None:
    async with await Vault.open(cfg, key) as v:
        v.use_consent(AllowOnly("pt-alpha"))
        # Nothing left to store: the count is still written at once.
        assert (await v.append([hr(0, patient="pt-beta")])).stored == 0
        res = await v.commit_glucose("aa:bb:cc:dd:ee:02", [glucose(1, patient="pt-beta")],
                                     last_sequence=1, last_device_time=None, clock_offset_s=0)
        assert (res.stored, res.duplicates) == (0, 0)
        assert (await v.append([hr(1), hr(2, patient="pt-beta")])).stored == 1
    async with await Vault.open(cfg, key) as v:  # no hook after a reopen until one is set
        assert (await v.stats()).refusals == {"no_consent": 3}
        cur = await v.cursor("AA:BB:CC:DD:EE:02")
        assert cur is not None and cur.last_sequence == 1
        assert [p.id for p in await v.next_batch(10)] == [hr(1).id]
        assert (await v.append([hr(3, patient="pt-beta")])).stored == 1


async def test_retention_purges_delivered_and_gives_pages_back(
    cfg: VaultConfig, vault: Vault, clock: ManualClock
) -> None:
    n = 3000
    for start in range(0, n, 500):
        await vault.append([hr(i) for i in range(start, start + 500)])
    keep = [hr(i) for i in range(n, n + 10)]
    await vault.append(keep)
    while batch := [p for p in await vault.next_batch(500) if p.id not in {k.id for k in keep}]:
        await vault.mark_delivered([p.id for p in batch])
    await vault.reclaim()
    size_before = cfg.path.stat().st_size

    clock.step(6 * 86400)
    assert await vault.purge_delivered() == 0
    clock.step(2 * 86400)
    assert await vault.purge_delivered() == n
    size_after = cfg.path.stat().st_size
    assert size_after < size_before / 2
    stats = await vault.stats()
    assert (stats.pending, stats.delivered_retained) == (10, 0)
    assert [p.id for p in await vault.next_batch(100)] == [k.id for k in keep]
    assert await vault.integrity_check() == []
    assert (await vault.audit_tail(1))[0].action == "vault.retention_purged"


# --- audit -------------------------------------------------------------------------------------


async def test_audit_chain_verifies_and_detects_tampering(cfg: VaultConfig, key: bytes) -> None:
    async with await Vault.open(cfg, key) as v:
        for i in range(5):
            await v.audit("admin:t", "test.action", f"subject-{i}")
        assert await v.verify_audit() == 5
        tail = await v.audit_tail(2)
        assert [e.subject for e in tail] == ["subject-3", "subject-4"]
        assert tail[1].prev_hash == tail[0].hash

    conn = raw(cfg, key)
    with pytest.raises(sqlcipher3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET subject = 'x' WHERE id = 3")
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET subject = 'forged' WHERE id = 3")
    conn.close()
    async with await Vault.open(cfg, key) as v:
        with pytest.raises(AuditChainBroken, match="entry 3"):
            await v.verify_audit()

    conn = raw(cfg, key)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE id >= 3")
    conn.execute("DELETE FROM audit WHERE id = 1")
    conn.close()
    async with await Vault.open(cfg, key) as v:
        with pytest.raises(AuditChainBroken, match="entry 2"):
            await v.verify_audit()


# --- files ---------------------------------------------------------------------------------------


async def test_files_are_private_and_an_open_directory_is_refused(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, path=tmp_path / "fresh" / "sub" / "vault.db")
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(0)])
        for suffix in ("", "-wal", "-shm"):
            mode = stat.S_IMODE(os.stat(str(cfg.path) + suffix).st_mode)
            assert mode == 0o600, suffix
        assert stat.S_IMODE(cfg.path.parent.stat().st_mode) == 0o700
    os.chmod(cfg.path.parent, 0o755)
    with pytest.raises(ConfigError) as exc:
        await Vault.open(cfg, key)
    assert "chmod 700" in exc.value.problems[0]


async def test_concurrent_callers_share_one_writer(vault: Vault) -> None:
    async def producer(k: int) -> int:
        total = 0
        for b in range(5):
            start = k * 1000 + b * 20
            total += (await vault.append([hr(i) for i in range(start, start + 20)])).stored
        return total

    async def consumer() -> int:
        delivered = 0
        for _ in range(20):
            batch = await vault.next_batch(50)
            delivered += await vault.mark_delivered([p.id for p in batch])
        return delivered

    results = await asyncio.gather(*(producer(k) for k in range(8)), consumer())
    stored, delivered = sum(results[:8]), results[8]
    assert stored == 800
    stats = await vault.stats()
    assert (stats.pending, stats.delivered_retained) == (800 - delivered, delivered)
    assert await vault.integrity_check() == []


async def test_a_closed_vault_refuses_work(cfg: VaultConfig, key: bytes) -> None:
    v = await Vault.open(cfg, key)
    await v.close()
    await v.close()  # idempotent
    with pytest.raises(VaultError, match="closed"):
        await v.append([hr(0)])


async def test_device_hash_key_is_per_vault_secret_and_survives_reopen(
    cfg: VaultConfig, key: bytes, tmp_path: Path
) -> None:
    """The daemon gives the log redactor this key: the same device must hash the same after a
    restart, differently on another hub, and the key must not be the vault key."""
    async with await Vault.open(cfg, key) as v:
        first = v.log_hash_key
        named = v.device_hash("AA:BB:CC:DD:EE:FF")
    async with await Vault.open(cfg, key) as v:
        assert v.log_hash_key == first and len(first) == 32 and first != key
        assert v.device_hash("aa:bb:cc:dd:ee:ff") == named
    other_dir = tmp_path / "other"
    await asyncio.to_thread(other_dir.mkdir, 0o700)
    other_cfg = vault_config(other_dir)
    async with await Vault.open(other_cfg, write_key(other_cfg)) as other:
        assert other.log_hash_key != first
        assert other.device_hash("AA:BB:CC:DD:EE:FF") != named


@pytest.mark.parametrize("kib", [256, 2048])
def test_the_page_cache_is_bounded_by_cache_kib(cfg: VaultConfig, key: bytes, kib: int) -> None:
    # the sqlcipher3 build's default (8,000 KiB) filled slowly and read as a memory leak
    from edge.vault.engine import Engine

    engine = Engine.open(cfg.model_copy(update={"cache_kib": kib}), key,
                         ManualClock(BASE_TIME), sqlcipher3, cfg.key_provider)
    try:
        assert engine.conn.execute("PRAGMA cache_size").fetchone()[0] == -kib
    finally:
        engine.close()
