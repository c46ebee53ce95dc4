"""Vault benchmark: the real ``Vault`` (writer thread, side log, SQLCipher, WAL).

Figures (one JSON object per line on stdout), all on a real disk (``/var/tmp``: tmpfs writes
are not counted by ``/proc/self/io``):

- ``vault.append_batch100_per_s``: readings/s appended in batches of 100; judged against plain
  sqlite3 inserting the same rows 100 per transaction in the same run (``ratio_to_sqlite``).
- ``vault.bytes_per_reading``: ``write_bytes`` per reading at a steady 50 readings/s, each
  appended alone and acknowledged alone (as the daemon does), simulated time, flusher rounds
  every simulated second; ``vault.fsyncs_per_s`` in the same run; the same for
  ``flush_interval_s = 0`` (every call durable, the old path) as ``..._write_through``.
- ``vault.bytes_per_pending_reading``: the vault's files on disk per pending reading, holding
  a 200,000-reading backlog (appended 100 at a time) and extrapolated linearly to a week
  offline at 10 readings/s (6 M).
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
import os
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
from edge.testing import ManualClock
from edge.vault import Vault
from edge.vault.cipher import Driver
from edge.vault.keys import new_key
from edge.vault.models import identity_time_us
from edge.vault.sidelog import log_path

TARGETS: dict[str, tuple[str, float]] = {
    "vault.bytes_per_reading": ("<=", 2048),
    "vault.fsyncs_per_s": ("<=", 2),
    "vault.bytes_per_pending_reading": ("<=", 1024),
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


#: a real disk: write_bytes does not count tmpfs
DISK = Path("/var/tmp")
#: the appended rate at steady state (35 straps + 15 meters)
RATE = 50
#: the vault's share of plain sqlite3's rate on the same rows. Provisional: the vault also
#: deduplicates against the database, encrypts into the side log and merges durably (fsync)
#: every 2000 readings; 0.34 measured on the 2-core dev box when this was set
APPEND_RATIO = 0.3


def config(path: Path, **kw: float) -> VaultConfig:
    return VaultConfig(path=path, key_provider="env", allow_env_key=True,
                       max_pending=10_000_000, max_pending_bytes=8 << 30, **kw)


def write_bytes() -> int:
    """Bytes this process caused to be written to storage (``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def plain_append(path: Path, rs: Sequence[HeartRateReading]) -> float:
    """Seconds for plain sqlite3 (WAL, synchronous=NORMAL) to insert ``rs`` 100 per
    transaction into the same table and unique index: the baseline of the ratio."""
    path.parent.mkdir(mode=0o700)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = NORMAL")
    c.execute("CREATE TABLE readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, ident INTEGER, "
              "id TEXT, patient TEXT, kind TEXT, payload BLOB, stored_at REAL)")
    c.execute("CREATE UNIQUE INDEX ri ON readings(ident, id)")
    t = time.perf_counter()
    for i in range(0, len(rs), 100):
        c.execute("BEGIN")
        c.executemany("INSERT INTO readings(ident, id, patient, kind, payload, stored_at) "
                      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      [(identity_time_us(r), r.id, r.patient, r.kind,
                        r.__pydantic_serializer__.to_json(r), 0.0) for r in rs[i:i + 100]])
        c.execute("COMMIT")
    elapsed = time.perf_counter() - t
    c.close()
    return elapsed


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
    baseline: list[float] = []
    for r in range(rounds):
        cipher.append(await workload(Vault, tmp / f"c{r}" / "vault.db", key, rs))
        plain.append(await workload(PlainVault, tmp / f"p{r}" / "vault.db", key, rs))
        baseline.append(plain_append(tmp / f"s{r}" / "plain.db", rs))
    info = {"readings": n, "rounds": rounds}
    rate = n / statistics.median(a for a, _ in cipher)
    sqlite_rate = n / statistics.median(baseline)
    bench.emit("vault.append_batch100_per_s", rate, "readings/s",
               {"vault.append_batch100_per_s": (">=", APPEND_RATIO * sqlite_rate)},
               ratio_to_sqlite=round(rate / sqlite_rate, 3),
               judged=f">= {APPEND_RATIO} x plain sqlite3 (100 rows per transaction, WAL, "
               f"synchronous=NORMAL) in this run: {sqlite_rate:.0f}/s", **info)
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


async def steady(tmp: Path, seconds: int, flush_interval_s: float) -> tuple[float, float]:
    """(write_bytes per reading, fsyncs per second) at RATE readings/s for ``seconds`` of
    simulated time: each reading appended alone, handed out, acknowledged alone; a flusher
    round every simulated second (the real flusher's own rounds may add a few fsyncs)."""
    clock = ManualClock()
    vault = await Vault.open(config(tmp / "vault.db", flush_interval_s=flush_interval_s),
                             new_key(), clock=clock)
    try:
        await vault.append(readings(50_000_000, 500))  # past the first pages of a new file
        await drain(vault, 500)
        await vault.flush()
        st = vault._engine.staging
        fsyncs0 = st.log.fsyncs if st else 0
        merges = 0
        w0 = write_bytes()
        rs = readings(0, RATE * seconds)
        for i, r in enumerate(rs):
            await vault.append([r])
            for p in await vault.next_batch(10, after_seq=0):
                await vault.mark_delivered([p.id])
            if (i + 1) % RATE == 0:
                await clock.advance(1.0)
                before = st.merged_at if st else 0.0
                await vault.tick()
                merges += st is not None and st.merged_at != before
        w1 = write_bytes()
        # Without a side log every append and every acknowledgement is one synchronous=FULL
        # commit (one fsync of the WAL); with it, log fsyncs plus one per merge.
        fsyncs = (st.log.fsyncs - fsyncs0 + merges) if st else 2 * len(rs)
    finally:
        await vault.close()
    return (w1 - w0) / len(rs), fsyncs / seconds


async def footprint(tmp: Path, n: int) -> float:
    """Bytes on disk (database, WAL, side log) per pending reading with ``n`` pending."""
    vault = await Vault.open(config(tmp / "vault.db"), new_key())
    try:
        for start in range(0, n, 100):
            await vault.append(readings(start, min(100, n - start)))
        await vault.flush()
        await vault.reclaim()
        path = tmp / "vault.db"
        size = sum(os.stat(p).st_blocks * 512 for p in
                   (path, Path(f"{path}-wal"), log_path(path)) if p.exists())
    finally:
        await vault.close()
    return size / n


async def run(quick: bool) -> None:
    n = 20_000 if quick else 50_000
    big = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="vault-bench-", dir=DISK) as d:
        tmp = Path(d)
        seconds = 120 if quick else 600
        per, fs = await steady(tmp / "steady", seconds, 1.0)
        emit("vault.bytes_per_reading", per, "bytes", rate_per_s=RATE, simulated_s=seconds,
             stretch="<= 512", gb_per_day_at_rate=round(per * RATE * 86400 / 1e9, 2))
        emit("vault.fsyncs_per_s", fs, "fsyncs/s", rate_per_s=RATE, simulated_s=seconds)
        per0, fs0 = await steady(tmp / "through", 30, 0.0)
        emit("vault.bytes_per_reading_write_through", per0, "bytes", rate_per_s=RATE,
             simulated_s=30, flush_interval_s=0, fsyncs_per_s=round(fs0))
        backlog = 50_000 if quick else 200_000
        b = await footprint(tmp / "backlog", backlog)
        emit("vault.bytes_per_pending_reading", b, "bytes", measured_with=backlog,
             week_offline_6m_gb_extrapolated=round(b * 6e6 / 1e9, 2),
             note="measured at the backlog given, extrapolated linearly to 6 M")
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
