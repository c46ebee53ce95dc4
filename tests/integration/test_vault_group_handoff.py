"""Group handoff to the vault's writer thread: calls queued while it is busy run together, in
order, each with its own exact result or error (the writer itself, then a real vault)."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config import VaultConfig
from edge.errors import VaultError, VaultFull
from edge.testing import ManualClock
from edge.vault import Vault
from edge.vault.models import AppendResult
from edge.vault.vault import _Writer
from tests.support.vault_support import BASE_TIME, hr, vault_config, write_key

pytestmark = pytest.mark.integration


async def _busy(writer: _Writer) -> tuple[threading.Event, asyncio.Future[bool]]:
    """Occupy the writer thread until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return gate.wait(10)

    fut = writer.call(block)
    assert await asyncio.to_thread(started.wait, 10)
    return gate, fut


async def test_calls_queued_while_busy_run_in_order_with_their_own_outcomes() -> None:
    writer = _Writer("test-writer")
    ran: list[int] = []
    threads: set[str] = set()

    def job(i: int) -> int:
        threads.add(threading.current_thread().name)
        ran.append(i)
        if i == 2:
            raise ValueError("two")
        return i * 10

    try:
        gate, blocker = await _busy(writer)
        futs = [writer.call(functools.partial(job, i)) for i in range(5)]
        gate.set()
        got = await asyncio.gather(*futs, return_exceptions=True)
        assert await blocker is True
    finally:
        writer.stop()
    assert ran == [0, 1, 2, 3, 4]  # queue order
    assert got[:2] == [0, 10] and got[3:] == [30, 40]
    assert isinstance(got[2], ValueError) and str(got[2]) == "two"  # only its caller
    assert threads == {"test-writer"}


async def test_a_call_cancelled_before_it_starts_does_not_run() -> None:
    writer = _Writer()
    ran: list[str] = []
    try:
        gate, _ = await _busy(writer)
        dropped = writer.call(lambda: ran.append("dropped"))
        kept = writer.call(lambda: ran.append("kept"))
        dropped.cancel()
        gate.set()
        await kept
    finally:
        writer.stop()
    assert ran == ["kept"]


async def test_stop_lets_queued_calls_finish_first() -> None:
    writer = _Writer()
    fut = writer.call(lambda: "done")
    writer.stop()
    assert await fut == "done"


# --- a real vault -----------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path) -> VaultConfig:
    return vault_config(tmp_path, max_pending=5)


@pytest.fixture
async def vault(cfg: VaultConfig) -> AsyncIterator[Vault]:
    v = await Vault.open(cfg, write_key(cfg), clock=ManualClock(BASE_TIME))
    yield v
    await v.close()


async def test_concurrent_appends_each_get_their_exact_result(vault: Vault) -> None:
    gate, _ = await _busy(vault._writer)
    calls = [
        vault.append([hr(0), hr(1), hr(2)]),
        vault.append([hr(1), hr(2), hr(3)]),  # two already there (in the same group)
        vault.append([hr(10), hr(11)]),  # over max_pending: refused, nothing of it stored
        vault.append([hr(20)]),
    ]
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0)  # every call is queued behind the busy writer
    gate.set()
    got = await asyncio.gather(*tasks, return_exceptions=True)
    assert got[0] == AppendResult(3, 0)
    assert got[1] == AppendResult(1, 2)
    assert isinstance(got[2], VaultFull) and got[2].reason == "vault_full_count"
    assert got[3] == AppendResult(1, 0)
    batch = await vault.next_batch(10)
    assert [r.id for r in batch] == [hr(i).id for i in (0, 1, 2, 3, 20)]
    st = await vault.stats()
    assert st.pending == 5 and st.refusals.get("vault_full_count") == 2


async def test_marks_and_reads_in_one_group_keep_their_order(vault: Vault) -> None:
    await vault.append([hr(i) for i in range(4)])
    first = await vault.next_batch(2)
    gate, _ = await _busy(vault._writer)
    mark = asyncio.ensure_future(vault.mark_delivered([r.id for r in first]))
    again = asyncio.ensure_future(vault.mark_delivered([r.id for r in first]))
    read = asyncio.ensure_future(vault.next_batch(10))
    await asyncio.sleep(0)
    gate.set()
    assert await mark == 2
    assert await again == 0  # already marked by the call queued before it
    assert [r.id for r in await read] == [hr(2).id, hr(3).id]


async def test_a_closed_vault_refuses_calls(cfg: VaultConfig) -> None:
    v = await Vault.open(cfg, write_key(cfg), clock=ManualClock(BASE_TIME))
    await v.close()
    with pytest.raises(VaultError):
        await v.append([hr(0)])
