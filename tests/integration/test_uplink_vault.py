"""The forwarder on the real SQLCipher vault and a real mosquitto: drain, and a pin mismatch
written to the vault's hash-chained audit log."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edge.config import VaultConfig
from edge.testing import eventually
from edge.testing.uplink import forwarding
from edge.vault import Vault
from tests.support.mosquitto import Broker, ids_in, start_broker, subscriber
from tests.support.pki import TestPki, make_pki
from tests.support.uplink_fakes import make_readings, real_forwarder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tpki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("uplink-vault"), "hub-1")


@pytest.fixture
def broker(tmp_path: Path, tpki: TestPki) -> Iterator[Broker]:
    b = start_broker(tmp_path, tpki)
    try:
        yield b
    finally:
        b.stop()


@asynccontextmanager
async def open_vault(tmp_path: Path) -> AsyncIterator[Vault]:
    cfg = VaultConfig(path=tmp_path / "vault" / "vault.db", key_provider="env",
                      allow_env_key=True)
    vault = await Vault.open(cfg, os.urandom(32))
    try:
        yield vault
    finally:
        await vault.close()


async def test_drains_the_real_vault(broker: Broker, tpki: TestPki, tmp_path: Path) -> None:
    readings = make_readings(500, ["patient-a", "patient-b"])
    async with open_vault(tmp_path) as vault:
        await vault.append(readings)
        assert (await vault.stats()).pending == 500
        fwd = real_forwarder(tpki.uplink_config(broker.port), tpki.hub_id, vault)
        with subscriber(broker, tpki, topic="edge/v1/+/obs/#") as sub:
            async with forwarding(fwd):
                await asyncio.to_thread(
                    sub.wait_for, lambda m: len(set(ids_in(m))) >= 500, 20.0
                )
                await eventually(lambda: fwd.stats().readings_delivered >= 500, within_s=20.0)
            got = ids_in(sub.snapshot())
        st = await vault.stats()
        assert st.pending == 0 and st.delivered_retained == 500
        assert await vault.next_batch(10) == []
    assert sorted(got) == sorted(r.id for r in readings)


async def test_pin_mismatch_is_in_the_vault_audit_chain(tpki: TestPki, tmp_path: Path) -> None:
    hostile = start_broker(tmp_path, tpki, server=tpki.hostile["same_ca_other_key"])
    try:
        async with open_vault(tmp_path) as vault:
            await vault.append(make_readings(3))
            fwd = real_forwarder(tpki.uplink_config(hostile.port), tpki.hub_id, vault)
            async with forwarding(fwd):
                await eventually(lambda: fwd.stats().state_label == "refused:pin_mismatch",
                                 within_s=10.0)

                async def audited() -> bool:
                    tail = await vault.audit_tail(5)
                    return any(e.action == "uplink.pin_mismatch" for e in tail)

                await eventually(audited, within_s=10.0, what="the pin mismatch audited")
            tail = [e for e in await vault.audit_tail(20) if e.action == "uplink.pin_mismatch"]
            assert tail[0].subject == tpki.hostile["same_ca_other_key"].pin
            assert tail[0].actor == "uplink"
            assert await vault.verify_audit() >= 1
            assert (await vault.stats()).pending == 3
    finally:
        hostile.stop()
    assert "New client connected" not in hostile.log_text()
