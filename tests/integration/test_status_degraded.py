"""The retained MQTT status document tells a hub that cannot do its job (issue 14): refusal
counters and a ``degraded`` list, from the real (SQLCipher) vault. A full disk showed
"online, queue 0, no refusals"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.config import UplinkConfig
from edge.intake.consent import ConsentCheck
from edge.testing import ManualClock
from edge.testing.uplink import FakeConnector
from edge.uplink.forwarder import Forwarder
from edge.vault import Vault
from tests.support.vault_support import hr, vault_config, write_key

pytestmark = pytest.mark.integration

PIN = "sha256/" + "A" * 43 + "="


class AllowAll(ConsentCheck):
    def allows(self, patient: str) -> bool:
        return True


def encode(rows: object) -> bytes:
    return b"{}"


def forwarder(vault: Vault, clock: ManualClock, devices: dict[str, object] | None = None
              ) -> Forwarder:
    cfg = UplinkConfig.model_validate({
        "host": "127.0.0.1", "ca_file": "/nonexistent/ca", "client_cert": "/nonexistent/c",
        "client_key": "/nonexistent/k", "pins": [PIN],
    })

    async def provider() -> dict[str, object]:
        return devices or {"bound": 0, "healthy": True, "without_consent": 0}

    return Forwarder(cfg, "hub-1", vault, connector=FakeConnector(), clock=clock,
                     consent=AllowAll(), encoder=encode, status_provider=provider)


async def test_a_full_disk_makes_the_status_degraded_with_its_refusal_counts(
    tmp_path: Path,
) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=0)
    key = write_key(cfg)
    clock = ManualClock()
    async with await Vault.open(cfg, key) as vault:
        await vault.append([hr(i) for i in range(3)])
        fwd = forwarder(vault, clock)
        first = await fwd.status_document()
        assert first["refusals"] == {} and first["degraded"] == []

        # readings refused because the disk is full (what the vault counts on SQLITE_FULL)
        await vault.count_refusal("disk_full", 5)
        doc = await fwd.status_document()
        assert doc["state"] == "online" and doc["queue_depth"] == 3
        assert doc["refusals"] == {"disk_full": 5}
        assert doc["degraded"] == ["disk_full"]
        assert "pt-alpha" not in json.dumps(doc)

        # current for a window after the count last rose, then only counted
        clock.step(600)
        assert (await fwd.status_document())["degraded"] == ["disk_full"]
        clock.step(600)
        later = await fwd.status_document()
        assert later["degraded"] == [] and later["refusals"] == {"disk_full": 5}


async def test_devices_without_consent_and_an_unhealthy_part_are_degraded(
    tmp_path: Path,
) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=0)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as vault:
        devices: dict[str, object] = {"bound": 1, "healthy": False, "without_consent": 1}
        doc = await forwarder(vault, ManualClock(), devices).status_document()
        assert doc["degraded"] == ["no_consent", "unhealthy"]


async def test_a_failing_vault_still_publishes_a_status_that_says_so(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=0)
    key = write_key(cfg)
    vault = await Vault.open(cfg, key)
    fwd = forwarder(vault, ManualClock())
    await vault.close()  # every vault call now fails with VaultError
    doc = await fwd.status_document()
    assert doc["queue_depth"] is None and doc["degraded"] == ["vault_error"]

