"""Behaviours every vault shows, the real one and ``edge.testing.vault.MemoryVault`` alike.

Each scenario opens a vault through an :data:`Opener`, asserts what must hold, and returns a
transcript of what it saw (no seq numbers, sizes on disk or device hashes, which legitimately
differ): tests/unit/test_memory_vault.py runs them on the memory vault, and
tests/integration/test_vault_memory_parity.py on both, comparing the transcripts.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping

import pytest

from edge.errors import VaultError, VaultFull
from edge.intake.consent import ConsentGate
from edge.testing import ManualClock
from edge.testing.vault import MemoryVault
from edge.vault import Vault
from tests.support.vault_support import BASE_TIME, glucose, hr

AnyVault = Vault | MemoryVault
#: opens a vault on ``clock`` with these VaultConfig overrides (max_pending, ...)
Opener = Callable[[ManualClock, Mapping[str, float]], Awaitable[AnyVault]]
Transcript = list[object]
Scenario = Callable[[Opener], Awaitable[Transcript]]

METER = "aa:bb:cc:dd:ee:02"


async def outbox_round_trip(open_vault: Opener) -> Transcript:
    """Dedup on id (delivered ones too), oldest first, delivered once, counters."""
    v = await open_vault(ManualClock(BASE_TIME), {})
    try:
        first = await v.append([hr(i) for i in range(10)])
        again = await v.append([hr(i) for i in range(5, 15)])
        assert (first.stored, first.duplicates) == (10, 0)
        assert (again.stored, again.duplicates) == (5, 5)
        batch = await v.next_batch(4)
        assert [p.id for p in batch] == [hr(i).id for i in range(4)]
        assert batch[0].reading() == hr(0)
        assert batch[0].payload == hr(0).model_dump_json().encode()
        later = await v.next_batch(100, after_seq=batch[-1].seq)
        assert [p.id for p in later] == [hr(i).id for i in range(4, 15)]
        assert await v.next_batch(0) == []
        assert await v.mark_delivered([p.id for p in batch]) == 4
        assert await v.mark_delivered([p.id for p in batch] + ["no-such-id"]) == 0
        assert (await v.append([hr(0)])).duplicates == 1
        rest = await v.next_batch(100)
        stats = await v.stats()
        assert (stats.pending, stats.delivered_retained) == (11, 4)
        assert stats.pending_bytes == sum(len(p.payload) for p in rest)
        return [first, again, [p.id for p in rest], stats.pending_bytes, stats.refusals]
    finally:
        await v.close()


async def full_by_count(open_vault: Opener) -> Transcript:
    """The count bound refuses whole batches, counts them, and never evicts."""
    v = await open_vault(ManualClock(BASE_TIME), {"max_pending": 10})
    try:
        await v.append([hr(i) for i in range(8)])
        with pytest.raises(VaultFull) as exc:
            await v.append([hr(i) for i in range(100, 105)])
        assert exc.value.reason == "vault_full_count"
        assert (await v.stats()).pending == 8
        await v.mark_delivered([hr(0).id, hr(1).id, hr(2).id])
        assert (await v.append([hr(i) for i in range(100, 105)])).stored == 5
        with pytest.raises(VaultFull):
            await v.append([hr(200)])
        stats = await v.stats()
        assert stats.refusals == {"vault_full_count": 6}
        return [str(exc.value), stats.pending, stats.refusals]
    finally:
        await v.close()


async def full_by_bytes(open_vault: Opener) -> Transcript:
    """The byte bound refuses the batch that would cross it."""
    v = await open_vault(ManualClock(BASE_TIME), {"max_pending_bytes": 4096})
    try:
        stored = 0
        with pytest.raises(VaultFull) as exc:
            for i in range(0, 1000, 3):
                stored += (await v.append([hr(i), hr(i + 1), hr(i + 2)])).stored
        assert exc.value.reason == "vault_full_bytes"
        stats = await v.stats()
        assert stats.pending == stored > 0
        assert stats.pending_bytes <= 4096
        return [stored, stats.pending_bytes, stats.refusals]
    finally:
        await v.close()


async def consent_at_the_store(open_vault: Opener) -> Transcript:
    """With the gate in use, readings of a patient without consent are dropped and counted
    ``no_consent``; a glucose cursor still moves past them; a revoke purges."""
    v = await open_vault(ManualClock(BASE_TIME), {})
    try:
        gate = ConsentGate(v)
        await gate.load()
        await gate.grant("pt-alpha", scope="vitals", actor="admin:t")
        v.use_consent(gate)
        mixed = [hr(i) for i in range(3)] + [hr(i, patient="pt-beta") for i in range(10, 12)]
        res = await v.append(mixed)
        assert (res.stored, res.duplicates) == (3, 0)
        assert {p.patient for p in await v.next_batch(100)} == {"pt-alpha"}
        beta = [glucose(s, patient="pt-beta") for s in (1, 2)]
        res_g = await v.commit_glucose(METER, beta, last_sequence=2,
                                       last_device_time=beta[-1].device_time, clock_offset_s=0)
        assert (res_g.stored, res_g.duplicates) == (0, 0)
        cur = await v.cursor(METER)
        assert cur is not None and cur.last_sequence == 2
        only_beta = await v.append([hr(20, patient="pt-beta")])
        assert (only_beta.stored, only_beta.duplicates) == (0, 0)
        assert await gate.revoke("pt-alpha", actor="admin:t") == 3
        assert (await v.append([hr(30)])).stored == 0
        assert not await v.has_consent("pt-alpha")
        stats = await v.stats()
        assert stats.pending == 0
        assert stats.refusals == {"no_consent": 2 + 2 + 1 + 1}
        consents = await v.consents()
        actions = [e.action for e in await v.audit_tail(10)]
        assert actions == ["consent.granted", "consent.revoked"]
        return [res, res_g, stats.refusals, [(c.patient, c.scope, c.active) for c in consents],
                actions]
    finally:
        await v.close()


async def registry_and_audit(open_vault: Opener) -> Transcript:
    """Bindings by upper-case address, cursors, audit by device hash, a verifiable chain."""
    clock = ManualClock(BASE_TIME)
    v = await open_vault(clock, {})
    try:
        addr = "AA:BB:CC:DD:EE:01"
        await v.bind_device(addr.lower(), "heart_rate", "pt-alpha", bonded=True, actor="admin:t")
        clock.step(5)
        await v.touch_device(addr, clock.now())
        [b] = await v.bindings()
        assert (b.address, b.patient, b.bonded, b.last_seen) == (addr, "pt-alpha", True,
                                                                clock.now())
        assert await v.cursor(METER) is None
        await v.commit_glucose(METER, [glucose(1)], last_sequence=1,
                               last_device_time=glucose(1).device_time, clock_offset_s=-7)
        cur = await v.cursor(METER.upper())
        assert cur is not None
        assert (cur.last_sequence, cur.last_device_time, cur.clock_offset_s) == (
            1, glucose(1).device_time, -7)
        await v.reset_cursor(METER, actor="admin:t")
        assert await v.cursor(METER) is None
        assert await v.unbind_device(addr, actor="admin:t") is True
        assert await v.unbind_device(addr, actor="admin:t") is False
        assert await v.bindings() == []
        await v.audit("admin:t", "test.action", "subject-1")
        with pytest.raises(ValueError, match="single line"):
            await v.audit("admin:t", "bad\naction")
        tail = await v.audit_tail(10)
        assert tail[0].subject == v.device_hash(addr) and addr not in tail[0].subject
        assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(tail))
        assert await v.verify_audit() == len(tail) == 4
        assert [e.action for e in await v.audit_tail(2)] == ["device.unbound", "test.action"]
        assert await v.audit_tail(0) == []
        return [[(e.actor, e.action) for e in tail], tail[-1].subject]
    finally:
        await v.close()


async def retention(open_vault: Opener) -> Transcript:
    """Delivered readings go after ``retention_days``; pending ones never."""
    clock = ManualClock(BASE_TIME)
    v = await open_vault(clock, {"retention_days": 7})
    try:
        await v.append([hr(i) for i in range(20)])
        await v.mark_delivered([p.id for p in await v.next_batch(15)])
        clock.step(6 * 86400)
        assert await v.purge_delivered() == 0
        clock.step(2 * 86400)
        assert await v.purge_delivered() == 15
        stats = await v.stats()
        assert (stats.pending, stats.delivered_retained) == (5, 0)
        tail = await v.audit_tail(1)
        assert (tail[0].action, tail[0].subject) == ("vault.retention_purged", "15 readings")
        # Purged for good: the same reading again is new.
        assert (await v.append([hr(0)])).stored == 1
        return [stats.pending, tail[0].actor]
    finally:
        await v.close()


async def refusals_and_age(open_vault: Opener) -> Transcript:
    """Intake refusals are counted by reason; the oldest pending age follows the clock."""
    clock = ManualClock(BASE_TIME)
    v = await open_vault(clock, {})
    try:
        assert (await v.stats()).oldest_pending_age_s is None
        await v.count_refusal("malformed", 3)
        await v.count_refusal("no_consent")
        await v.count_refusal("implausible", 0)
        with pytest.raises(ValueError, match="refusal reason"):
            await v.count_refusal("Not A Reason")
        await v.append([hr(0)])
        clock.step(90)
        await v.append([hr(1)])
        stats = await v.stats()
        assert stats.oldest_pending_age_s == pytest.approx(90)
        assert stats.refusals == {"malformed": 3, "no_consent": 1}
        return [stats.refusals, stats.oldest_pending_age_s]
    finally:
        await v.close()


async def purge_and_close(open_vault: Opener) -> Transcript:
    """purge_patient removes pending and delivered; a closed vault refuses work."""
    v = await open_vault(ManualClock(BASE_TIME), {})
    await v.append([hr(i) for i in range(4)] + [hr(i, patient="pt-beta") for i in range(9, 11)])
    await v.mark_delivered([hr(0).id])
    assert await v.purge_patient("pt-alpha", actor="admin:t") == 4
    stats = await v.stats()
    assert (stats.pending, stats.delivered_retained) == (2, 0)
    await v.close()
    await v.close()
    with pytest.raises(VaultError, match="closed"):
        await v.append([hr(0)])
    with pytest.raises(VaultError, match="closed"):
        await v.stats()
    return [stats.pending]


SCENARIOS: dict[str, Scenario] = {
    s.__name__: s
    for s in (outbox_round_trip, full_by_count, full_by_bytes, consent_at_the_store,
              registry_and_audit, retention, refusals_and_age, purge_and_close)
}
