"""Intake and the consent gate over the real (SQLCipher) vault: plausibility, consent, a
full vault, revoke."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.intake import ConsentGate, Intake
from edge.vault import Vault
from tests.support.vault_support import glucose, hr, vault_config, write_key

ADDR = "AA:BB:CC:DD:EE:02"


class Wakes:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


@pytest.fixture
async def vault(tmp_path: Path) -> AsyncIterator[Vault]:
    cfg = vault_config(tmp_path, max_pending=5)
    v = await Vault.open(cfg, write_key(cfg))
    yield v
    await v.close()


@pytest.fixture
async def gate(vault: Vault) -> ConsentGate:
    await vault.grant_consent("pt-alpha", scope="vitals", actor="test")
    g = ConsentGate(vault)
    await g.load()
    return g


@pytest.fixture
async def intake(vault: Vault, gate: ConsentGate) -> tuple[Intake, Wakes]:
    wakes = Wakes()
    return Intake(vault, gate, on_appended=wakes), wakes


async def test_accepted_readings_are_committed_then_the_forwarder_is_woken(
    vault: Vault, intake: tuple[Intake, Wakes]
) -> None:
    i, wakes = intake
    await i.submit([hr(1), hr(2)])
    assert (await vault.stats()).pending == 2
    assert wakes.n == 1
    assert i.stats()["received"] == {"heart_rate": 2}
    # the same readings again: stored once, counted as duplicates, not received twice
    await i.submit([hr(1)])
    assert (await vault.stats()).pending == 2
    assert i.stats()["duplicates"] == 1


async def test_implausible_values_are_refused_with_their_reason(
    vault: Vault, intake: tuple[Intake, Wakes]
) -> None:
    i, _ = intake
    await i.submit([hr(1, bpm=19), hr(2, bpm=301), hr(3)])
    stats = await vault.stats()
    assert stats.pending == 1
    assert stats.refusals["heart_rate_out_of_range"] == 2
    assert i.refused["heart_rate_out_of_range"] == 2
    await i.refuse("malformed", 3)
    assert (await vault.stats()).refusals["malformed"] == 3


async def test_no_consent_is_refused_and_not_stored(
    vault: Vault, gate: ConsentGate, intake: tuple[Intake, Wakes]
) -> None:
    i, wakes = intake
    await i.submit([hr(1, patient="pt-beta")])
    stats = await vault.stats()
    assert stats.pending == 0
    assert stats.refusals["no_consent"] == 1
    assert wakes.n == 0
    await gate.grant("pt-beta", scope="vitals", actor="op")
    assert await vault.has_consent("pt-beta")
    await i.submit([hr(2, patient="pt-beta")])
    assert (await vault.stats()).pending == 1


async def test_a_full_vault_is_counted_and_never_raises(
    vault: Vault, intake: tuple[Intake, Wakes]
) -> None:
    i, _ = intake
    await i.submit([hr(n) for n in range(5)])
    await i.submit([hr(10)])  # max_pending = 5
    stats = await vault.stats()
    assert stats.pending == 5
    assert stats.refusals["vault_full_count"] == 1
    assert i.refused["vault_full_count"] == 1


async def test_glucose_records_and_cursor_commit_together(
    vault: Vault, intake: tuple[Intake, Wakes]
) -> None:
    i, _ = intake
    records = [glucose(1), glucose(2, mg_dl="900"), glucose(3)]
    await i.submit_glucose(ADDR, records, last_sequence=3, last_device_time=None,
                           clock_offset_s=-120)
    cursor = await vault.cursor(ADDR)
    assert cursor is not None and cursor.last_sequence == 3 and cursor.clock_offset_s == -120
    stats = await vault.stats()
    assert stats.pending == 2
    assert stats.refusals["glucose_out_of_range"] == 1
    # records of a patient without consent: not stored, but the cursor moves past them
    await i.submit_glucose(ADDR, [glucose(4, patient="pt-beta")], last_sequence=4,
                           last_device_time=None, clock_offset_s=-120)
    cursor = await vault.cursor(ADDR)
    assert cursor is not None and cursor.last_sequence == 4
    assert (await vault.stats()).pending == 2


async def test_a_full_vault_keeps_the_glucose_cursor(
    vault: Vault, intake: tuple[Intake, Wakes]
) -> None:
    i, _ = intake
    await i.submit_glucose(ADDR, [glucose(n) for n in range(1, 6)], last_sequence=5,
                           last_device_time=None, clock_offset_s=0)
    await i.submit_glucose(ADDR, [glucose(6)], last_sequence=6, last_device_time=None,
                           clock_offset_s=0)
    cursor = await vault.cursor(ADDR)
    assert cursor is not None and cursor.last_sequence == 5, "refetched next time, not lost"


async def test_revoke_closes_the_gate_purges_and_audits(
    vault: Vault, gate: ConsentGate, intake: tuple[Intake, Wakes]
) -> None:
    i, _ = intake
    await i.submit([hr(1), hr(2)])
    # an append racing the revoke: it either lands before (and is purged) or is refused
    racing = asyncio.create_task(i.submit([hr(3)]))
    purged = await gate.revoke("pt-alpha", actor="op")
    await racing
    assert purged in (2, 3)
    assert not gate.allows("pt-alpha")
    assert (await vault.stats()).pending == 0
    await i.submit([hr(4)])
    assert (await vault.stats()).pending == 0
    tail = await vault.audit_tail(5)
    assert [(e.actor, e.action, e.subject) for e in tail][-1] == ("op", "consent.revoked",
                                                                  "pt-alpha")
