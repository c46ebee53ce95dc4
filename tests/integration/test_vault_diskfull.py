"""Disk full (a small tmpfs): a clear VaultFull('disk_full'), the refusal counted, nothing
corrupted, and appends succeed again once space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import VaultFull
from edge.vault import PendingReading, Vault
from tests.support.vault_support import hr, vault_config, write_key

pytestmark = pytest.mark.integration

TMPFS_SIZE = "4m"
FILLER_BYTES = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root needed: mounting is the point of the test, so no skip)."""
    mnt = tmp_path / "disk"
    mnt.mkdir(mode=0o700)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                          "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (needs root): {res.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"\0" * size)


async def test_disk_full_refuses_counts_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    cfg = vault_config(tmp_path, path=small_disk / "vault" / "vault.db")
    key = write_key(cfg)
    filler = small_disk / "filler"
    fill(filler, FILLER_BYTES)

    acknowledged: list[str] = []
    v = await Vault.open(cfg, key)
    try:
        refused = None
        for start in range(0, 1_000_000, 50):
            batch = [hr(i) for i in range(start, start + 50)]
            try:
                await v.append(batch)
            except VaultFull as exc:
                refused = exc
                break
            acknowledged += [r.id for r in batch]
        assert refused is not None, "the tmpfs never filled"
        assert refused.reason == "disk_full"
        assert "disk" in str(refused) and "nothing was stored" in str(refused)
        assert acknowledged, "the vault filled before storing anything"
        stats = await v.stats()
        assert stats.refusals.get("disk_full") == 50
        assert stats.pending == len(acknowledged)
        # The same batch again while still full: refused and counted again, nothing breaks.
        with pytest.raises(VaultFull):
            await v.append([hr(i) for i in range(10_000_000, 10_000_050)])
        assert (await v.stats()).refusals.get("disk_full") == 100
        assert await v.integrity_check() == []

        os.unlink(filler)  # space returns
        after = [hr(i) for i in range(20_000_000, 20_000_050)]
        assert (await v.append(after)).stored == 50
        acknowledged += [r.id for r in after]
        got: list[PendingReading] = []
        while page := await v.next_batch(1000, after_seq=got[-1].seq if got else 0):
            got += page
        assert [p.id for p in got] == acknowledged
        assert await v.integrity_check() == []
    finally:
        await v.close()

    async with await Vault.open(cfg, key) as v2:  # the counts were persisted once space returned
        stats = await v2.stats()
        assert stats.refusals == {"disk_full": 100}
        assert stats.pending == len(acknowledged)
        assert await v2.integrity_check() == []
