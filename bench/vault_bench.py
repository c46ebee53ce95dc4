"""Vault benchmark: the real ``Vault`` (writer thread, SQLCipher, WAL, synchronous=FULL).

Figures (one JSON object per line on stdout):

- ``vault.append_batch100_per_s``: readings/s appended in batches of 100, one transaction each.
- ``vault.drain_per_s``: readings/s through ``next_batch(500)`` + ``mark_delivered``.
- ``vault.sqlcipher_over_sqlite``: time of the same append + drain work through the same
  ``Vault`` code on plain sqlite3 (no encryption), as a ratio; same run, alternated.
- ``vault.open_ms``: opening an existing vault (raw key, schema check), median.
- ``vault.cost_1m_over_10k``: per-reading cost of appending and draining with 1,000,000
  readings stored (pending) over the same with 10,000 stored.

Run: ``python -m bench vault`` or ``python -m bench.vault_bench [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import bench
from edge.config import VaultConfig
from edge.log import configure_logging
from edge.readings import HeartRateReading, TimeSource, stable_reading_id
from edge.vault import Vault
from edge.vault.cipher import Driver
from edge.vault.keys import new_key

TARGETS: dict[str, tuple[str, float]] = {
    "vault.append_batch100_per_s": (">=", 80_000),
    "vault.drain_per_s": (">=", 100_000),
    "vault.sqlcipher_over_sqlite": ("<=", 1.6),
    "vault.cost_1m_over_10k": ("<=", 1.3),
}
DEVICES = [f"AA:BB:CC:00:00:{i:02X}" for i in range(4)]
START = datetime(2026, 1, 1, tzinfo=UTC)


class PlainVault(Vault):
    """The same vault code over unencrypted sqlite3: the baseline of the ratio, nothing else."""

    _driver: ClassVar[Driver] = sqlite3


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    """One figure of this benchmark (see :func:`bench.emit`)."""
    bench.emit(figure, value, unit, TARGETS, **extra)


def readings(start: int, n: int) -> list[HeartRateReading]:
    """``n`` heart-rate readings, 10 ms apart, in runs of 100 per strap (as sessions submit)."""
    out = []
    rr = (Decimal("0.8125"),)
    for i in range(start, start + n):
        t = START + timedelta(milliseconds=10 * i)
        device = DEVICES[(i // 100) % len(DEVICES)]
        out.append(HeartRateReading.model_construct(
            id=stable_reading_id(device, "2a37", t.isoformat(timespec="microseconds")),
            device_id=device, patient=f"pt-{(i // 100) % len(DEVICES)}",
            effective_time=t, time_source=TimeSource.GATEWAY, received_at=t,
            bpm=60 + i % 60, sensor_contact="detected", energy_expended_kj=None,
            rr_intervals_s=rr,
        ))
    return out


def config(path: Path) -> VaultConfig:
    return VaultConfig(path=path, key_provider="env", allow_env_key=True,
                       max_pending=10_000_000, max_pending_bytes=8 << 30)


async def append_all(vault: Vault, rs: Sequence[HeartRateReading], batch: int = 100) -> float:
    t = time.perf_counter()
    for i in range(0, len(rs), batch):
        await vault.append(rs[i:i + batch])
    return time.perf_counter() - t


async def drain(vault: Vault, n: int, batch: int = 500) -> float:
    t = time.perf_counter()
    done = 0
    while done < n:
        got = await vault.next_batch(min(batch, n - done))
        if not got:
            break
        done += await vault.mark_delivered([p.id for p in got])
    return time.perf_counter() - t


async def workload(cls: type[Vault], path: Path, key: bytes, rs: Sequence[HeartRateReading]
                   ) -> tuple[float, float]:
    """Append ``rs`` in batches of 100 into a new vault, then drain them all."""
    vault = await cls.open(config(path), key)
    try:
        t_append = await append_all(vault, rs)
        t_drain = await drain(vault, len(rs))
    finally:
        await vault.close()
    return t_append, t_drain


async def throughput(tmp: Path, n: int, rounds: int) -> Path:
    rs = readings(0, n)
    key = new_key()
    cipher: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    for r in range(rounds):
        cipher.append(await workload(Vault, tmp / f"c{r}" / "vault.db", key, rs))
        plain.append(await workload(PlainVault, tmp / f"p{r}" / "vault.db", key, rs))
    info = {"readings": n, "rounds": rounds}
    emit("vault.append_batch100_per_s", n / statistics.median(a for a, _ in cipher),
         "readings/s", **info)
    emit("vault.drain_per_s", n / statistics.median(d for _, d in cipher), "readings/s",
         batch=500, **info)
    c = statistics.median(a + d for a, d in cipher)
    p = statistics.median(a + d for a, d in plain)
    emit("vault.sqlcipher_over_sqlite", c / p, "ratio",
         plain_append_per_s=round(n / statistics.median(a for a, _ in plain)),
         plain_drain_per_s=round(n / statistics.median(d for _, d in plain)), **info)

    # Open an existing vault (it now holds n delivered readings).
    path = tmp / "c0" / "vault.db"
    times = []
    for _ in range(9):
        t = time.perf_counter()
        vault = await Vault.open(config(path), key)
        times.append(time.perf_counter() - t)
        await vault.close()
    emit("vault.open_ms", statistics.median(times) * 1000, "ms", samples=len(times))
    return path


async def backlog_vault(tmp: Path, stored: int) -> Vault:
    """A vault with ``stored`` readings pending, checkpointed."""
    vault = await Vault.open(config(tmp / f"backlog{stored}" / "vault.db"), new_key())
    chunk = 20_000
    for start in range(0, stored, chunk):
        await vault.append(readings(start, min(chunk, stored - start)))
    await vault.reclaim()
    return vault


async def cost(vault: Vault, start: int, work: int) -> float:
    """Seconds per reading to append ``work`` readings (batches of 100) and drain as many
    (oldest first), so the number stored stays the same."""
    rs = readings(start, work)
    t_append = await append_all(vault, rs)
    t_drain = await drain(vault, work)
    return (t_append + t_drain) / work


async def run(quick: bool) -> None:
    n = 20_000 if quick else 50_000
    big = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="vault-bench-") as d:
        tmp = Path(d)
        await throughput(tmp, n, 3)
        t = time.perf_counter()
        small_vault = await backlog_vault(tmp, 10_000)
        large_vault = await backlog_vault(tmp, big)
        small: list[float] = []
        large: list[float] = []
        work = 20_000
        try:
            # Alternated, so that load from elsewhere hits both alike.
            for r in range(5):
                start = 10_000_000 + r * work
                small.append(await cost(small_vault, start, work))
                large.append(await cost(large_vault, start, work))
        finally:
            await small_vault.close()
            await large_vault.close()
        s, g = statistics.median(small), statistics.median(large)
        emit("vault.cost_1m_over_10k", g / s, "ratio",
             stored_small=10_000, stored_large=big,
             us_per_reading_small=round(s * 1e6, 2), us_per_reading_large=round(g * 1e6, 2),
             seconds=round(time.perf_counter() - t, 1))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m bench`` (auto-discovered) and direct runs."""
    ap = argparse.ArgumentParser(prog="bench.vault_bench")
    ap.add_argument("--quick", action="store_true",
                    help="smaller sizes (100,000 stored instead of 1,000,000)")
    args = ap.parse_args(argv)
    configure_logging("warning", "console", stream=sys.stderr)
    asyncio.run(run(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
