"""The vault's async face: a thin :class:`Vault` over the engine's writer thread.

One SQLCipher database (SQLCipher 4 defaults, raw 256-bit key, WAL, synchronous=FULL,
incremental auto-vacuum) and its encrypted side log. All database work runs on ONE dedicated
writer thread that owns the connection; the async methods hand work to it and await the
result, so the event loop never blocks on disk and there is exactly one writer. Calls that
queue up while the writer is busy are handed over as one group (:class:`_Writer`): each runs
as its own call, in order, with its own result or error, but the group costs one wake-up of
the writer and one of the event loop instead of one per call.

Durability (``vault.flush_interval_s`` > 0, the default): when :meth:`Vault.append` returns,
the readings are in the side log, so a process crash loses none; the flusher that
:meth:`Vault.open` starts fsyncs the log every interval and merges it into the database every
``merge_interval_s``, so a power cut loses at most the last interval. A glucose commit is
durable when it returns. Delivered marks are merged in batches too: a crash may lose some,
and those readings are sent again. With ``flush_interval_s = 0`` (or while another process
owns the side log) every call is its own durable transaction. Undelivered readings are never
evicted: when a bound is reached new readings are refused with a counted reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    overload,
)

import sqlcipher3

from edge.clock import Clock, SystemClock
from edge.config import VaultConfig
from edge.errors import KeyUnavailable, VaultError
from edge.log import get_logger
from edge.readings import GlucoseReading
from edge.vault import audit as audit_log
from edge.vault import maintenance, outbox, registry, replay
from edge.vault.cipher import Driver
from edge.vault.engine import Engine
from edge.vault.models import AnyReading, AppendResult, CursorRow, cursor_row

if TYPE_CHECKING:
    from edge.intake.consent import ConsentCheck

log = get_logger("edge.vault")

P = ParamSpec("P")
T = TypeVar("T")


#: one call queued for the writer thread: its loop, its future, and the call itself
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
#: a finished call: its future, and its result or its exception
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]


class _Writer:
    """The vault's one writer thread, with group handoff.

    :meth:`call` queues ``fn()`` and returns an asyncio future for its outcome. The thread
    takes every call queued at that moment, runs them one by one in queue order (each with its
    own result or exception, exactly as if alone), then hands all the outcomes back to the
    event loop in ONE ``call_soon_threadsafe``. Calls made while it is busy wait in the queue
    and form the next group: under load, one thread wake-up and one self-pipe write serve many
    calls; alone, a call is handed over at once (no linger). A call whose caller was cancelled
    before it started is not run (as with an executor)."""

    def __init__(self, name: str = "vault-writer") -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for the writer thread; await the returned future for its outcome."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, fut, fn))
        return fut

    def stop(self) -> None:
        """Let the thread end once the calls queued before this one have run."""
        self._jobs.put(None)

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            first = jobs.get()
            group: list[_Job] = []
            job = first
            while job is not None:
                group.append(job)
                try:
                    job = jobs.get_nowait()
                except Empty:
                    break
            self._run_group(group)
            if job is None:
                return

    @staticmethod
    def _run_group(group: list[_Job]) -> None:
        done: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
        for loop, fut, fn in group:
            if fut.cancelled():
                continue
            try:
                outcome: _Done = (fut, fn(), None)
            except BaseException as exc:  # it belongs to the caller, as with an executor
                outcome = (fut, None, exc)
            done.setdefault(loop, []).append(outcome)
        for loop, outcomes in done.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[_Done]) -> None:
    """On the event loop: complete each caller's future with its own outcome."""
    for fut, result, exc in outcomes:
        if fut.done():
            continue  # cancelled while it ran
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


class _OnWriter(Generic[P, T]):
    """A Vault method that runs ``fn(engine, ...)`` on the writer thread and awaits it.

    ``fn``'s own signature (minus the engine) and docstring are the method's, so each
    operation is written once, where its SQL is."""

    def __init__(self, fn: Callable[Concatenate[Engine, P], T]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, vault: None, owner: type[Vault]) -> Self: ...

    @overload
    def __get__(
        self, vault: Vault, owner: type[Vault]
    ) -> Callable[P, Coroutine[object, None, T]]: ...

    def __get__(
        self, vault: Vault | None, owner: type[Vault]
    ) -> Self | Callable[P, Coroutine[object, None, T]]:
        if vault is None:
            return self
        fn = self._fn

        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return await vault._call(fn, *args, **kwargs)

        method.__doc__ = fn.__doc__
        method.__name__ = method.__qualname__ = fn.__name__
        return method


class Vault:
    """The gateway's encrypted store. Open with :meth:`open`; every method is a coroutine
    that runs on the vault's single writer thread."""

    #: the DB-API module; a benchmark subclass may substitute plain ``sqlite3`` to compare
    _driver: ClassVar[Driver] = sqlcipher3

    def __init__(
        self, engine: Engine, writer: _Writer, config: VaultConfig, key: bytes
    ) -> None:
        self._engine = engine
        self._key = key
        self._writer = writer
        self._config = config
        self._closed = False
        self._consent: ConsentCheck | None = None
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, config: VaultConfig, key: bytes, *, clock: Clock | None = None
    ) -> Vault:
        """Open (creating if absent) the vault at ``config.path`` with a raw 32-byte key.

        A wrong key raises KeyUnavailable and leaves the files untouched."""
        encrypted = cls._driver is sqlcipher3
        if encrypted and len(key) != 32:
            raise KeyUnavailable(f"{config.key_provider} provider: a vault key is 32 bytes")
        writer = _Writer()
        loop = asyncio.get_running_loop()
        try:
            engine = await writer.call(
                functools.partial(
                    Engine.open, config, key if encrypted else None, clock or SystemClock(),
                    cls._driver, config.key_provider,
                ),
            )
            await writer.call(functools.partial(replay.attach, engine, key))
        except BaseException:
            writer.stop()
            raise
        log.info("vault.opened", schema_version=engine.schema_version, pending=engine.pending,
                 side_log=engine.staging is not None)
        vault = cls(engine, writer, config, key)
        if config.flush_interval_s > 0:
            vault._flusher = loop.create_task(vault._flush_forever(), name="vault-flusher")
        return vault

    async def _flush_forever(self) -> None:
        """Every ``flush_interval_s`` (real time: it bounds what a power cut takes): fsync the
        side log, merge it when due, and take it over if its owner went away. Failures are
        logged and tried again; what the log holds stays safe meanwhile."""
        while not self._closed:
            await asyncio.sleep(self._config.flush_interval_s)
            try:
                await self.tick()
            except VaultError as exc:
                log.warning("vault.flush_failed", error=type(exc).__name__)

    async def tick(self) -> None:
        """One round of the flusher (tests and tools may drive it themselves)."""
        await self._run(_tick, self._key)

    async def flush(self) -> None:
        """Make everything accepted durable in the database now (merge the side log)."""
        await self._run(Engine.settle)

    async def _run(self, fn: Callable[Concatenate[Engine, P], T], /,
                   *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(engine, *args, **kwargs)`` on the writer thread."""
        return await self._call(fn, *args, **kwargs)

    def _call(self, fn: Callable[Concatenate[Engine, P], T], /,
              *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Queue ``fn(engine, *args, **kwargs)`` for the writer thread (see :class:`_Writer`)."""
        if self._closed:
            raise VaultError("the vault is closed")
        return self._writer.call(functools.partial(fn, self._engine, *args, **kwargs))

    async def close(self) -> None:
        """Close the connection (the WAL is checkpointed) and stop the writer thread."""
        if self._closed:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            await self._run(replay.detach)
            await self._run(Engine.close)
        finally:
            self._closed = True
            self._writer.stop()

    async def __aenter__(self) -> Vault:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def config(self) -> VaultConfig:
        return self._config

    @property
    def schema_version(self) -> int:
        return self._engine.schema_version

    @property
    def log_hash_key(self) -> bytes:
        """A stable key for device hashes in logs and audit (``REDACTOR.set_hash_key``)."""
        return self._engine.hash_key

    def device_hash(self, address: str) -> str:
        """How the audit log names a device (``dev-1a2b3c4d``)."""
        return self._engine.hasher.device_hash(address)

    def use_consent(self, check: ConsentCheck) -> None:
        """Consult ``check`` (the one consent gate) on every append, as defence in depth:
        readings of a patient it refuses are dropped and counted as ``no_consent``."""
        self._consent = check

    # -- readings ------------------------------------------------------------------------------

    async def append(self, readings: Sequence[AnyReading]) -> AppendResult:
        """Store readings in one transaction; same id again is a no-op. Raises VaultFull
        (reason ``vault_full_count`` | ``vault_full_bytes`` | ``disk_full``) after counting
        the refusal; then nothing of the batch was stored. Readings the consent gate refuses
        (see :meth:`use_consent`) are dropped and counted, never stored."""
        kept, refused = self._consented(readings)
        return await self._call(outbox.append, kept, no_consent=refused)

    async def commit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> AppendResult:
        """Glucose records and the meter's cursor in ONE transaction: after a crash the meter
        is re-read from the cursor, never skipped. VaultFull commits neither. Records the
        consent gate refuses are dropped and counted; the cursor still moves past them."""
        cursor: CursorRow = cursor_row(address, last_sequence, last_device_time, clock_offset_s)
        kept, refused = self._consented(readings)
        return await self._run(outbox.append, kept, cursor, no_consent=refused)

    def _consented(self, readings: Sequence[AnyReading]) -> tuple[list[AnyReading], int]:
        """A snapshot of ``readings`` without those the consent gate refuses, and how many
        it refused (on the event loop: the gate is not thread-safe)."""
        check = self._consent
        if check is None:
            return list(readings), 0
        kept = [r for r in readings if check.allows(r.patient)]
        return kept, len(readings) - len(kept)

    async def mark_delivered(self, ids: Sequence[str]) -> int:
        """Mark readings acknowledged by the backend; returns how many were pending."""
        return await self._call(outbox.mark_delivered, list(ids))

    next_batch = _OnWriter(outbox.next_batch)
    purge_patient = _OnWriter(outbox.purge_patient)
    purge_delivered = _OnWriter(outbox.purge_delivered)
    count_refusal = _OnWriter(outbox.count_refusal)
    stats = _OnWriter(outbox.stats)
    release_held = _OnWriter(outbox.release_held)

    # -- bindings, consent, cursors --------------------------------------------------------------

    bind_device = _OnWriter(registry.bind_device)
    unbind_device = _OnWriter(registry.unbind_device)
    bindings = _OnWriter(registry.bindings)
    touch_device = _OnWriter(registry.touch_device)
    grant_consent = _OnWriter(registry.grant_consent)
    revoke_consent = _OnWriter(registry.revoke_consent)
    consents = _OnWriter(registry.consents)
    has_consent = _OnWriter(registry.has_consent)
    cursor = _OnWriter(registry.cursor)
    reset_cursor = _OnWriter(registry.reset_cursor)

    # -- audit -----------------------------------------------------------------------------------

    audit = _OnWriter(audit_log.audit)
    audit_tail = _OnWriter(audit_log.audit_tail)
    verify_audit = _OnWriter(audit_log.verify_audit)

    # -- maintenance -----------------------------------------------------------------------------

    integrity_check = _OnWriter(maintenance.integrity_check)
    reclaim = _OnWriter(maintenance.reclaim)
    lock_exclusive = _OnWriter(maintenance.lock_exclusive)

    async def damage_check(self, budget_s: float) -> maintenance.Damage:
        """The start-up integrity check (:func:`maintenance.find_damage`) on a read-only
        connection of its own, bounded by ``budget_s``."""
        key = self._key if self._driver is sqlcipher3 else None
        return await asyncio.to_thread(
            maintenance.find_damage, self._driver, self._config.path, key, budget_s)

    async def backup(self, dest: Path) -> None:
        """An encrypted, consistent copy at ``dest`` (0600, same key); refuses to overwrite."""
        key = self._key if self._driver is sqlcipher3 else None
        await self._run(Engine.settle)
        await self._run(maintenance.backup, dest, key)

    async def rekey(self, new_key: bytes, *, hook: maintenance.RekeyHook | None = None) -> None:
        """Re-encrypt the database with ``new_key`` (PRAGMA rekey); atomic. Use
        :func:`edge.vault.rotation.rotate_key`, which also keeps the key files safe."""
        if len(new_key) != 32:
            raise KeyUnavailable("a vault key is 32 bytes")
        await self._run(_rekey, new_key, hook)
        self._key = new_key


def _tick(db: Engine, key: bytes) -> None:
    if db.staging is None:
        replay.attach(db, key)  # the owner may have gone (a CLI that held it)
    if db.staging is not None:
        db.staging.tick(db)


def _rekey(db: Engine, new_key: bytes, hook: maintenance.RekeyHook | None) -> None:
    """Re-key the database and start the side log anew under the new key (it is empty:
    merged first)."""
    db.settle()
    maintenance.rekey(db, new_key, hook)
    if db.staging is not None:
        db.staging.log.rekey(new_key)
