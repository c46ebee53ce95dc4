"""``MemoryVault`` and the real vault (SQLCipher files) on the same scenarios: both pass every
assertion, and both see the same things (tests/support/vault_behaviour.py)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest

from edge.config import VaultConfig
from edge.testing import ManualClock
from edge.testing.vault import MemoryVault
from edge.vault import Vault
from tests.support.vault_behaviour import SCENARIOS, AnyVault, Opener, Scenario
from tests.support.vault_support import vault_config, write_key

pytestmark = pytest.mark.integration


def sqlcipher_opener(tmp_path: Path) -> Opener:
    """Each call opens a fresh real vault in its own directory under ``tmp_path``."""
    n = itertools.count()

    async def open_real(clock: ManualClock, overrides: Mapping[str, float]) -> AnyVault:
        d = tmp_path / f"vault{next(n)}"
        d.mkdir(mode=0o700)
        cfg = vault_config(d, **overrides)
        return await Vault.open(cfg, write_key(cfg), clock=clock)

    return open_real


async def open_memory(clock: ManualClock, overrides: Mapping[str, float]) -> AnyVault:
    return MemoryVault(VaultConfig.model_validate(dict(overrides)), clock=clock)


@pytest.mark.parametrize("scenario", list(SCENARIOS.values()), ids=list(SCENARIOS))
async def test_memory_and_sqlcipher_vaults_see_the_same(
    scenario: Scenario, tmp_path: Path
) -> None:
    real = await scenario(sqlcipher_opener(tmp_path))
    memory = await scenario(open_memory)
    assert memory == real
