"""Crash safety: a writer killed with SIGKILL at random points never loses an acknowledged
append, never duplicates, and leaves a database that passes both integrity checks.

With the side log (the default ``flush_interval_s``), what the last writer had not merged is
recovered by the next open, so the files are inspected after one open and close; delivered
marks are batched, so a kill may lose some (those readings are sent again). With
``flush_interval_s = 0`` every mark is durable at once and the stricter check applies."""

from __future__ import annotations

import asyncio
import random
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlcipher3

from edge.vault import Vault
from edge.vault.sidelog import HEADER_BYTES, log_path
from tests.support.vault_proc import spawn
from tests.support.vault_support import hr, vault_config, write_key

pytestmark = pytest.mark.integration

KILLS = 30
BUDGET_S = 90.0


def run_and_kill(tmp: Path, start: int, after_lines: int, deadline: float,
                 flush_interval_s: float) -> list[str]:
    """Start a writer, let it acknowledge ``after_lines`` appends/deliveries, SIGKILL it, and
    return every complete line it printed (each printed only after the call returned)."""
    proc = spawn(tmp, "writer", str(start), stdout=subprocess.PIPE,
                 flush_interval_s=flush_interval_s)
    assert proc.stdout is not None
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while len(lines) < after_lines:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "writer made no progress within the time budget"
            if not sel.select(timeout=min(remaining, 20.0)):
                raise AssertionError("writer printed nothing for 20 s")
            line = proc.stdout.readline()
            assert line, f"writer exited early with {proc.poll()}"
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # what it printed before dying still counts
        proc.wait(timeout=30)
        sel.close()
    lines += rest.splitlines(keepends=True)
    return [ln for ln in lines if ln.endswith("\n")]


@pytest.mark.parametrize(("flush_interval_s", "kills"), [(1.0, KILLS), (0.0, KILLS // 3)],
                         ids=["side-log", "write-through"])
async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, flush_interval_s: float, kills: int
) -> None:
    cfg = vault_config(tmp_path, flush_interval_s=flush_interval_s)
    key = write_key(cfg)
    rng = random.Random(20260301)
    appended: list[str] = []
    delivered: set[str] = set()
    deadline = time.monotonic() + BUDGET_S
    for run in range(kills):
        for line in run_and_kill(tmp_path, run * 1_000_000, rng.randint(1, 25), deadline,
                                 flush_interval_s):
            tag, *ids = line.split()
            (appended.extend if tag == "A" else delivered.update)(ids)

    assert len(appended) == len(set(appended))
    async with await Vault.open(cfg, key):
        pass  # recovery: the last writer's side log is merged
    assert not log_path(cfg.path).exists() or log_path(cfg.path).stat().st_size <= HEADER_BYTES
    conn = sqlcipher3.connect(str(cfg.path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    rows = dict(conn.execute("SELECT id, delivered_at IS NOT NULL FROM readings").fetchall())
    total, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM readings").fetchone()
    cipher_check = conn.execute("PRAGMA cipher_integrity_check").fetchall()
    check = conn.execute("PRAGMA integrity_check").fetchall()
    conn.close()

    missing = [i for i in appended if i not in rows]
    assert missing == [], f"{len(missing)} acknowledged readings lost"
    assert total == distinct
    # the writer only ever marks readings whose append it had printed
    acked = set(appended)
    assert [i for i, d in rows.items() if d and i not in acked] == []
    if flush_interval_s == 0:
        assert [i for i in delivered if not rows[i]] == []
    assert cipher_check == []
    assert check == [("ok",)]
    async with await Vault.open(cfg, key) as v:
        stats = await v.stats()
        assert stats.pending == sum(1 for d in rows.values() if not d)
        assert stats.delivered_retained == sum(1 for d in rows.values() if d)
        assert await v.integrity_check() == []


async def test_an_open_racing_another_process_checkpoint_is_never_taken_for_a_wrong_key(
    tmp_path: Path,
) -> None:
    """`edge status` closing the vault (a last close: checkpoint, WAL removed) while the daemon
    starts once made the daemon refuse with "the vault key does not open": its lock-free key
    check read a main file being checkpointed. Bounded: one child doing 150 open/append/close
    rounds while this process opens and closes with the right key until the child is done."""
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    async with await Vault.open(cfg, key) as v:
        await v.append([hr(i) for i in range(-100, 0)])
    child = spawn(tmp_path, "open-close", "150", stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert (await asyncio.to_thread(child.stdout.readline)).strip() == "ready"
    opens = 0
    while child.poll() is None:
        async with await Vault.open(cfg, key) as v:
            assert (await v.stats()).pending >= 100
        opens += 1
    assert child.wait(timeout=60) == 0
    assert opens > 10  # the two really overlapped
    async with await Vault.open(cfg, key) as v:
        assert (await v.stats()).pending == 100 + 150 * 50
        assert await v.integrity_check() == []
