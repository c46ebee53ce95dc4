"""``edge.testing.vault.MemoryVault``: the vault's behaviours, in memory (no files).

The same scenarios run against real SQLCipher in tests/integration/test_vault_memory_parity.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from edge.config import VaultConfig
from edge.errors import VaultError
from edge.testing import ManualClock
from edge.testing.vault import MemoryVault
from tests.support.vault_behaviour import SCENARIOS, AnyVault, Scenario
from tests.support.vault_support import BASE_TIME, hr


async def open_memory(clock: ManualClock, overrides: Mapping[str, float]) -> AnyVault:
    return MemoryVault(VaultConfig.model_validate(dict(overrides)), clock=clock)


@pytest.mark.parametrize("scenario", list(SCENARIOS.values()), ids=list(SCENARIOS))
async def test_memory_vault_behaves_like_the_vault(scenario: Scenario) -> None:
    await scenario(open_memory)


async def test_memory_vault_writes_no_files(tmp_path: Path) -> None:
    cfg = VaultConfig(path=tmp_path / "data" / "vault.db")
    async with MemoryVault(cfg, clock=ManualClock(BASE_TIME)) as v:
        await v.append([hr(0)])
        await v.grant_consent("pt-alpha", actor="admin:t")
        assert (await v.stats()).pending == 1
        assert len(v.log_hash_key) == 32
        assert v.device_hash("aa:bb:cc:dd:ee:ff") == v.device_hash("AA:BB:CC:DD:EE:FF")
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    with pytest.raises(VaultError, match="closed"):
        await v.next_batch(1)
