"""The daemon: BLE -> intake -> vault -> forwarder under one TaskGroup.

Each part (BLE manager, forwarder, retention purger, control socket, vault probe) runs under
its own :class:`Supervisor`, which restarts it with capped, jittered backoff when it fails and
reports its heartbeat to :class:`edge.sdnotify.Health`. The watchdog task pets systemd only
while every part is fresh, so a hung loop or a part that keeps dying makes systemd restart the
whole service.

Consent revocation takes effect at once: the intake's gate closes (no new readings stored),
the vault revokes, purges and audits in one transaction, and the forwarder's vault view and
its MQTT link drop anything of that patient it had already read, so nothing of theirs is
published after the revoke began.

Shutdown (SIGTERM/SIGINT): STOPPING=1, the forwarder starts nothing new, BLE stops first (no
new readings), in-flight publishes may still be acknowledged (bounded by
``daemon.shutdown_timeout_s``), the rest stops, the vault closes, and ``run`` returns 0. A part
that overruns the budget is ended by ``hard_exit`` (``edge run``: the process exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from edge.backoff import Backoff, BackoffPolicy
from edge.clock import Clock, SystemClock
from edge.config import GatewayConfig
from edge.control import ControlError, ControlServer
from edge.intake import Intake
from edge.log import REDACTOR, get_logger
from edge.sdnotify import Health, Notifier, NullNotifier, one_line, watchdog_interval_s

log = get_logger("edge.daemon")

#: a part that failed this many times in a row stops beating: systemd then restarts us
MAX_CONSECUTIVE_FAILURES = 5
#: a part that ran this long before failing is considered to have recovered
STABLE_RUN_S = 60.0
#: how often delivered readings past retention are purged
PURGE_INTERVAL_S = 3600.0
#: the part of the shutdown budget given to BLE before the forwarder drains
BLE_STOP_SHARE = 0.3
#: after the shutdown budget, this much more before the process is ended regardless
HARD_EXIT_MARGIN_S = 1.5


class Stalled(Exception):
    """Raised by a probe: the part is alive but has made no progress."""


class BleLike(Protocol):
    """What the daemon needs from ``edge.ble.BleManager``."""

    async def run(self) -> None: ...

    async def refresh(self) -> None: ...

    def device_states(self) -> Any: ...


class ForwarderLike(Protocol):
    """What the daemon needs from ``edge.uplink.forwarder.Forwarder``."""

    async def run(self) -> None: ...

    def wake(self) -> None: ...

    @property
    def state(self) -> Any: ...

    def stats(self) -> Any: ...


BleFactory = Callable[[Any, Any], BleLike]
StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
ForwarderFactory = Callable[[Any, StatusProvider], ForwarderLike]
VaultFactory = Callable[[], Awaitable[Any]]


def key_bytes(key: Any) -> bytes:
    """The raw bytes of a key provider's result (bytes, or an object with ``raw``/``key``)."""
    if isinstance(key, bytes | bytearray):
        return bytes(key)
    for name in ("raw", "key", "material", "value"):
        v = getattr(key, name, None)
        if isinstance(v, bytes | bytearray):
            return bytes(v)
    if isinstance(key, str):
        return bytes.fromhex(key)
    raise TypeError("unsupported key type")


def cert_days_left(path: Path, now: datetime) -> float | None:
    """Days until the client certificate at ``path`` expires (None if unreadable)."""
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return round((cert.not_valid_after_utc - now).total_seconds() / 86400.0, 1)


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses / pydantic models / datetimes into JSON-friendly values."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        return to_jsonable(as_dict())
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        return to_jsonable(model_dump(mode="json"))
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return to_jsonable(dataclasses.asdict(obj))
    value = getattr(obj, "value", None)  # enums
    if isinstance(value, str | int):
        return value
    return str(obj)


async def within(clock: Clock, awaitable: Awaitable[Any], timeout_s: float) -> tuple[bool, Any]:
    """Await ``awaitable`` for at most ``timeout_s`` on ``clock``: (finished, result)."""
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        done, _ = await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if work in done:
        if work.cancelled():
            return True, None
        return True, work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    return False, None


@dataclass
class UplinkProgress:
    """Progress of the forwarder as its counters show it. Messages in flight with neither an
    acknowledgement nor a new session for ``limit_s`` mean its loop is stuck: the forwarder's
    own PUBACK timeout would have ended the session long before."""

    key: tuple[Any, ...] = ()
    since: float = 0.0

    def observe(self, stats: Mapping[str, Any], now: float, limit_s: float) -> None:
        """Raise :class:`Stalled` when in-flight messages have made no progress for too long."""
        in_flight = stats.get("in_flight") or 0
        key = (stats.get("messages_acked"), stats.get("sessions"), stats.get("state"))
        if not in_flight or key != self.key:
            self.key = key
            self.since = now
            return
        if now - self.since > limit_s:
            raise Stalled("uplink")


class GuardedLink:
    """The MQTT link as the forwarder uses it, with the last check before the wire: a Bundle
    for a patient whose consent is no longer active is not sent (the forwarder may hold rows
    it read ahead of a revoke; they were purged, and the message is reported as done so they
    are not retried). While the daemon drains for shutdown nothing new is sent either: such a
    message fails at once and its readings stay pending for the next start."""

    def __init__(self, link: Any, obs_prefix: str, consented: Callable[[str], bool],
                 draining: Callable[[], bool]) -> None:
        self._link = link
        self._obs_prefix = obs_prefix
        self._consented = consented
        self._draining = draining
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> Any:
        """Publish unless the message is a Bundle the daemon must no longer send."""
        if topic.startswith(self._obs_prefix):
            patient = topic[len(self._obs_prefix):]
            if not self._consented(patient):
                self.dropped += 1
                log.info("uplink.revoked_not_sent")
                return _done_future(None)
            if self._draining():
                from edge.errors import UplinkUnavailable

                return _done_future(UplinkUnavailable("stopping: not sent, stays pending"))
        return self._link.publish(topic, payload, **kwargs)


def _done_future(exc: BaseException | None) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
        # The forwarder inspects it in a done-callback; do not warn about it at exit.
        fut.add_done_callback(lambda f: f.exception())
    return fut


class ConsentFilteredOutbox:
    """The vault as the forwarder sees it: ``next_batch`` drops rows of a patient whose
    consent was revoked after the rows were read. The intake closes the gate before the vault
    purges. The forwarder reads ahead of what it publishes, so rows it already holds are
    stopped at the wire by :class:`GuardedLink`; together no reading of a revoked patient is
    published after the revoke began."""

    def __init__(self, vault: Any, consented: Callable[[str], bool]) -> None:
        self._vault = vault
        self._consented = consented
        self.dropped = 0
        #: set at shutdown: hand out nothing new, so only in-flight messages are waited for
        self.draining = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vault, name)

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> list[Any]:
        """The vault's batch without rows of patients lacking consent."""
        if self.draining:
            return []
        rows = await self._vault.next_batch(limit, after_seq=after_seq)
        if self.draining:
            return []
        kept = [r for r in rows if self._consented(r.patient)]
        self.dropped += len(rows) - len(kept)
        return kept


@dataclass
class Supervisor:
    """Runs one part, restarts it with backoff, and reports its heartbeat.

    While the part runs, ``probe`` (if any) is called every ``interval_s``: returning within the
    interval is a heartbeat; hanging or raising :class:`Stalled` is not. While the part waits to
    be restarted it keeps beating for the first ``max_failures`` consecutive failures only.
    """

    name: str
    start: Callable[[], Awaitable[None]]
    health: Health
    clock: Clock
    interval_s: float
    probe: Callable[[], Awaitable[None]] | None = None
    policy: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base=1.0, cap=30.0))
    max_failures: int = MAX_CONSECUTIVE_FAILURES
    state: str = "starting"
    failures: int = 0
    restarts: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.health.register(self.name, stale_after_s=3 * self.interval_s)
        self._backoff = Backoff(self.policy)

    async def run(self) -> None:
        """Run until cancelled."""
        try:
            while True:
                started = self.clock.monotonic()
                self.state = "running"
                self.health.beat(self.name, "running")
                try:
                    await self._run_once()
                    self.last_error = "exited"
                    log.warning("daemon.part_exited", part=self.name)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.last_error = type(exc).__name__
                    log.error("daemon.part_failed", part=self.name, error=type(exc).__name__)
                if self.clock.monotonic() - started >= STABLE_RUN_S:
                    self.failures = 0
                    self._backoff.reset()
                self.failures += 1
                self.restarts += 1
                await self._wait_backoff(self._backoff.next_delay())
        finally:
            self.state = "stopped"
            # stopped on purpose (shutdown): no longer part of the daemon's health
            self.health.unregister(self.name)

    async def _run_once(self) -> None:
        part = asyncio.ensure_future(self.start())
        prober = asyncio.ensure_future(self._probe_loop())
        try:
            await part
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            if not part.done():
                part.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await part

    async def _probe_loop(self) -> None:
        while True:
            await self.clock.sleep(self.interval_s)
            if self.probe is None:
                self.health.beat(self.name, "running")
                continue
            try:
                finished, _ = await within(self.clock, self.probe(), self.interval_s)
            except Stalled:
                self.state = "stalled"
                log.warning("daemon.part_stalled", part=self.name)
                continue
            except Exception as exc:
                self.state = "probe_failed"
                log.warning("daemon.probe_failed", part=self.name, error=type(exc).__name__)
                continue
            if finished:
                self.state = "running"
                self.health.beat(self.name, "running")
            else:
                self.state = "hung"
                log.warning("daemon.part_hung", part=self.name)

    async def _wait_backoff(self, delay: float) -> None:
        self.state = "restarting"
        remaining = delay
        while True:
            if self.failures <= self.max_failures:
                self.health.beat(self.name, "restarting")
            if remaining <= 0:
                return
            step = min(remaining, self.interval_s)
            await self.clock.sleep(step)
            remaining -= step

    def as_dict(self) -> dict[str, Any]:
        """For status (no PHI)."""
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


class Daemon:
    """The running gateway. Construct, then ``await run()``; ``request_stop()`` (or a signal)
    ends it."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        key: Any = None,
        vault_factory: VaultFactory | None = None,
        ble_factory: BleFactory | None = None,
        forwarder_factory: ForwarderFactory | None = None,
        scanner_factory: Any = None,
        client_factory: Any = None,
        link_factory: Any = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        env: Mapping[str, str] | None = None,
        install_signal_handlers: bool = True,
        hard_exit: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._key = key
        self._vault_factory = vault_factory
        self._ble_factory = ble_factory
        self._forwarder_factory = forwarder_factory
        self._scanner_factory = scanner_factory
        self._client_factory = client_factory
        self._link_factory = link_factory
        self.clock: Clock = clock or SystemClock()
        self.notifier: Notifier = notifier or NullNotifier()
        self._env = os.environ if env is None else env
        self._install_signals = install_signal_handlers
        self.health = Health(self.clock)
        self._stop = asyncio.Event()
        self._initialised = asyncio.Event()
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.vault: Any = None
        self.intake: Intake | None = None
        self.ble: BleLike | None = None
        self.forwarder: ForwarderLike | None = None
        self.supervisors: dict[str, Supervisor] = {}
        self._status_cache: dict[str, Any] = {}
        self._started_at = self.clock.now()
        self.control: ControlServer | None = None
        self.outbox: ConsentFilteredOutbox | None = None
        self._uplink_progress = UplinkProgress()
        self._hard_exit = hard_exit
        self._hard_timer: threading.Timer | None = None

    # --- public ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin an orderly shutdown (what SIGTERM/SIGINT do). With ``hard_exit``, a timer
        thread ends the process if the orderly path overruns its budget (a part stuck in a
        library call must not keep the hub from restarting); the WAL and at-least-once
        delivery make that safe."""
        if not self._stop.is_set():
            log.info("daemon.stopping")
            if self._hard_exit is not None:
                budget = self.config.daemon.shutdown_timeout_s + HARD_EXIT_MARGIN_S
                self._hard_timer = threading.Timer(budget, self._hard_exit)
                self._hard_timer.daemon = True
                self._hard_timer.start()
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 after an orderly stop)."""
        loop = asyncio.get_running_loop()
        if self._install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            return await self._run()
        finally:
            if self._install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if self._hard_timer is not None:
                self._hard_timer.cancel()
            self.stopped.set()

    # --- wiring ------------------------------------------------------------------------------

    async def _open_vault(self) -> Any:
        if self._vault_factory is not None:
            return await self._vault_factory()
        if self._key is None:
            # The configured provider's key; an interrupted `edge keys rotate` is finished here.
            from edge.vault.rotation import open_vault

            return await open_vault(self.config.vault, clock=self.clock, actor="daemon")
        from edge.vault import Vault

        return await Vault.open(self.config.vault, key_bytes(self._key), clock=self.clock)

    def _make_ble(self, vault: Any, sink: Intake) -> BleLike:
        if self._ble_factory is not None:
            return self._ble_factory(vault, sink)
        from edge.ble import BleManager
        from edge.ble.ports import bleak_client_factory, bleak_scanner_factory

        adapter = self.config.ble.adapter
        manager: BleLike = BleManager(
            self.config.ble,
            vault,
            sink,
            scanner_factory=self._scanner_factory or bleak_scanner_factory(adapter),
            client_factory=self._client_factory or bleak_client_factory(adapter),
            clock=self.clock,
            local_tz=datetime.now().astimezone().tzinfo,
        )
        return manager

    def _make_forwarder(self, vault: Any) -> ForwarderLike:
        if self._forwarder_factory is not None:
            return self._forwarder_factory(self._outbox(vault), self.status_devices)
        from edge.uplink.forwarder import Forwarder
        from edge.uplink.mqtt import TlsMqttConnector

        base = self._link_factory or TlsMqttConnector(self.config.uplink, self.config.hub.id)
        obs_prefix = f"{self.config.uplink.topic_prefix}/{self.config.hub.id}/obs/"

        async def guarded(will: Any) -> Any:
            link = await base(will)
            return GuardedLink(link, obs_prefix, self._consented, self._is_draining)

        return Forwarder(
            self.config.uplink,
            self.config.hub.id,
            self._outbox(vault),
            link_factory=guarded,
            clock=self.clock,
            status_provider=self.status_devices,
        )

    def _is_draining(self) -> bool:
        return self.outbox is not None and self.outbox.draining

    def _outbox(self, vault: Any) -> ConsentFilteredOutbox:
        self.outbox = ConsentFilteredOutbox(vault, self._consented)
        return self.outbox

    def _consented(self, patient: str) -> bool:
        return self.intake is not None and self.intake.consented(patient)

    def _wake_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.wake()

    async def _run(self) -> int:
        self.vault = await self._open_vault()
        # The vault's own device-hash key, so logs and the audit name a device the same way,
        # stable across restarts.
        REDACTOR.set_hash_key(self.vault.log_hash_key)
        try:
            # Listen first (requests wait for the set-up below): once the socket is bound a
            # CLI can no longer fall back to writing consent straight into the vault, and
            # anything it wrote before is read by load_consents().
            self.control = ControlServer(self.config.daemon.control_socket, self._handlers())
            await self.control.start()
            await self._register_sensitive()
            self.intake = Intake(self.vault, on_appended=self._wake_forwarder)
            await self.intake.load_consents()
            self._initialised.set()
            await self._refresh_status()
            interval = self.config.daemon.health_interval_s
            sup = self._supervisor
            self.supervisors = {
                "vault": sup("vault", self._vault_part, probe=self._probe_vault),
                "uplink": sup("uplink", self._uplink_part, probe=self._probe_uplink),
                "ble": sup("ble", self._ble_part, probe=self._probe_ble),
                "purger": sup("purger", self._purger_part),
                "control": sup("control", self._control_part),
            }
            async with asyncio.TaskGroup() as tg:
                tasks = {n: tg.create_task(s.run(), name=f"part:{n}")
                         for n, s in self.supervisors.items()}
                watchdog = tg.create_task(self._watchdog(interval), name="watchdog")
                self.notifier.notify("READY=1\nSTATUS=" + self.status_line())
                log.info("daemon.ready")
                self.ready.set()
                await self._stop.wait()
                self.notifier.notify("STOPPING=1\nSTATUS=stopping")
                await self._shutdown(tasks, watchdog)
        finally:
            with contextlib.suppress(Exception):
                if self.control is not None:
                    await self.control.close()
            await self._close_vault()
        log.info("daemon.stopped")
        return 0

    def _supervisor(
        self, name: str, start: Callable[[], Awaitable[None]],
        probe: Callable[[], Awaitable[None]] | None = None,
    ) -> Supervisor:
        return Supervisor(name, start, self.health, self.clock,
                          self.config.daemon.health_interval_s, probe=probe)

    async def _close_vault(self) -> None:
        vault, self.vault = self.vault, None
        if vault is None:
            return
        try:
            await vault.close()
        except Exception as exc:
            log.error("daemon.vault_close_failed", error=type(exc).__name__)

    async def _register_sensitive(self) -> None:
        """Bound pseudonyms (and device names) are scrubbed from any free-text log field."""
        values: list[str] = []
        for b in await self.vault.bindings():
            values.append(str(getattr(b, "patient", "")))
            name = getattr(b, "name", None)
            if isinstance(name, str):
                values.append(name)
        for c in await self.vault.consents():
            values.append(str(c["patient"] if isinstance(c, dict) else getattr(c, "patient", "")))
        REDACTOR.register(v for v in values if v)

    # --- parts -------------------------------------------------------------------------------

    async def _vault_part(self) -> None:
        # The vault has no loop of its own; this part exists so its probe is supervised.
        await asyncio.Event().wait()

    async def _probe_vault(self) -> None:
        await self._refresh_status()

    async def _uplink_part(self) -> None:
        self.forwarder = self._make_forwarder(self.vault)
        await self.forwarder.run()

    async def _probe_uplink(self) -> None:
        fwd = self.forwarder
        if fwd is None:
            return
        stats = to_jsonable(fwd.stats())
        if isinstance(stats, dict):
            self._uplink_progress.observe(stats, self.clock.monotonic(),
                                          2 * self.config.uplink.ack_timeout_s)

    async def _ble_part(self) -> None:
        assert self.intake is not None
        if self._ble_factory is None:
            from edge.bluez_links import release_orphaned_links

            bound = [str(b.address) for b in await self.vault.bindings()]
            await release_orphaned_links(bound)
        self.ble = self._make_ble(self.vault, self.intake)
        await self.ble.run()

    async def _probe_ble(self) -> None:
        await _probe_part(self.ble, "device_states")

    async def _purger_part(self) -> None:
        while True:
            try:
                purged = await self.vault.purge_delivered()
                n = purged if isinstance(purged, int) else 0
                if n:
                    log.info("daemon.retention_purged", n=n)
            except Exception as exc:
                log.warning("daemon.retention_failed", error=type(exc).__name__)
            await self.clock.sleep(PURGE_INTERVAL_S)

    async def _control_part(self) -> None:
        assert self.control is not None
        await self.control.serve_forever()

    async def _watchdog(self, health_interval: float) -> None:
        wd = watchdog_interval_s(self._env)
        interval = min(wd, health_interval) if wd else health_interval
        was_healthy = True
        while True:
            stale = self.health.stale()
            if not stale:
                self.notifier.notify("WATCHDOG=1\nSTATUS=" + self.status_line())
                if not was_healthy:
                    log.info("daemon.healthy")
            else:
                self.notifier.notify("STATUS=" + one_line("unhealthy: " + ",".join(stale)))
                if was_healthy:
                    log.warning("daemon.unhealthy", parts=stale)
            was_healthy = not stale
            await self.clock.sleep(interval)

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]],
                        watchdog: asyncio.Task[None]) -> None:
        budget = self.config.daemon.shutdown_timeout_s
        deadline = self.clock.monotonic() + budget
        # 0. the forwarder starts nothing new; what is in flight may still be acknowledged.
        if self.outbox is not None:
            self.outbox.draining = True
        # 1. no new readings: BLE first.
        await self._cancel(tasks["ble"], budget * BLE_STOP_SHARE)
        # 2. let in-flight publishes finish.
        await self._drain_forwarder(deadline)
        # 3. everything else.
        for name in ("uplink", "purger", "control", "vault"):
            await self._cancel(tasks[name], max(0.1, deadline - self.clock.monotonic()))
        watchdog.cancel()

    async def _cancel(self, task: asyncio.Task[None], timeout_s: float) -> None:
        if task.done():
            return
        task.cancel()
        finished, _ = await within(self.clock, asyncio.shield(task), timeout_s)
        if not finished:
            log.warning("daemon.part_slow_to_stop", part=task.get_name())

    async def _drain_forwarder(self, deadline: float) -> None:
        """Give the forwarder until ``deadline`` to get its in-flight messages acknowledged."""
        fwd = self.forwarder
        if fwd is None:
            return
        while self.clock.monotonic() < deadline and _inflight(fwd) > 0:
            await self.clock.sleep(0.05)

    # --- status ------------------------------------------------------------------------------

    async def _refresh_status(self) -> None:
        stats = await self.vault.stats()
        self._status_cache = {"vault": to_jsonable(stats)}

    def status_line(self) -> str:
        """The one-line STATUS= summary: queue depth, devices connected, uplink state."""
        vault = self._status_cache.get("vault") or {}
        devices = self._device_states()
        connected = sum(1 for d in devices if str(d.get("state")) in ("connected", "syncing"))
        return one_line(
            f"queue {vault.get('pending', '?')}; devices {connected}/{len(devices)} connected; "
            f"uplink {self._uplink_state()}"
        )

    def _device_states(self) -> list[dict[str, Any]]:
        if self.ble is None:
            return []
        try:
            states = to_jsonable(self.ble.device_states())
        except Exception:
            return []
        if isinstance(states, dict):
            states = list(states.values())
        return [s for s in states if isinstance(s, dict)] if isinstance(states, list) else []

    def _uplink_state(self) -> str:
        if self.forwarder is None:
            return "stopped"
        return str(to_jsonable(self.forwarder.state))

    async def status_devices(self) -> dict[str, Any]:
        """The device part of the status the forwarder publishes on MQTT: no PHI (devices
        named by their log hash, never their address or patient)."""
        states = self._device_states()
        return {
            "bound": len(states),
            "connected": sum(1 for d in states if d.get("state") in ("connected", "syncing")),
            "states": [
                {"device": REDACTOR.device_hash(str(d.get("address", ""))),
                 "kind": d.get("kind"), "state": d.get("state"), "last_seen": d.get("last_seen")}
                for d in states
            ],
            "healthy": self.health.healthy(),
        }

    async def full_status(self) -> dict[str, Any]:
        """``edge status`` from the running daemon (local operator view)."""
        await self._refresh_status()
        vault = self._status_cache.get("vault") or {}
        assert self.intake is not None
        fwd_stats: Any = None
        if self.forwarder is not None:
            with contextlib.suppress(Exception):
                fwd_stats = to_jsonable(self.forwarder.stats())
        return {
            "source": "daemon",
            "hub": self.config.hub.id,
            "started_at": self._started_at.astimezone(UTC).isoformat(),
            "healthy": self.health.healthy(),
            "queue_depth": vault.get("pending"),
            "oldest_pending_age_s": vault.get("oldest_pending_age_s"),
            "refusals": all_refusals(vault.get("refusals")),
            "vault": vault,
            "intake": self.intake.stats(),
            "devices": self._device_states(),
            "uplink": {"state": self._uplink_state(), "stats": fwd_stats},
            "cert_days_left": cert_days_left(self.config.uplink.client_cert, self.clock.now()),
            "parts": {n: s.as_dict() for n, s in self.supervisors.items()},
        }

    # --- control handlers --------------------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], str], Awaitable[Any]]]:
        handlers = {
            "status": self._h_status,
            "consent.grant": self._h_grant,
            "consent.revoke": self._h_revoke,
            "consent.list": self._h_consent_list,
            "devices.refresh": self._h_refresh,
        }
        return {op: self._after_set_up(h) for op, h in handlers.items()}

    def _after_set_up(
        self, handler: Callable[[dict[str, Any], str], Awaitable[Any]]
    ) -> Callable[[dict[str, Any], str], Awaitable[Any]]:
        async def gated(request: dict[str, Any], actor: str) -> Any:
            await self._initialised.wait()
            return await handler(request, actor)

        return gated

    async def _h_status(self, request: dict[str, Any], actor: str) -> Any:
        return await self.full_status()

    async def _h_grant(self, request: dict[str, Any], actor: str) -> Any:
        patient = _patient_param(request)
        scope = str(request.get("scope") or "vitals")
        assert self.intake is not None
        REDACTOR.register([patient])
        await self.intake.grant(patient, scope=scope, actor=f"control:{actor}")
        return {"patient": patient, "consent": "granted", "scope": scope}

    async def _h_revoke(self, request: dict[str, Any], actor: str) -> Any:
        patient = _patient_param(request)
        assert self.intake is not None
        REDACTOR.register([patient])
        purged = await self.intake.revoke(patient, actor=f"control:{actor}")
        return {"patient": patient, "consent": "revoked", "purged": purged}

    async def _h_consent_list(self, request: dict[str, Any], actor: str) -> Any:
        return to_jsonable(await self.vault.consents())

    async def _h_refresh(self, request: dict[str, Any], actor: str) -> Any:
        await self._register_sensitive()
        if self.ble is not None:
            await self.ble.refresh()
        return {"refreshed": self.ble is not None}


async def _probe_part(part: Any, fallback: str) -> None:
    """A part's own ``async probe()`` when it has one (it reports progress, so a part that is
    alive but stuck stops beating), else a cheap call that proves it answers."""
    if part is None:
        return
    probe = getattr(part, "probe", None)
    if callable(probe):
        await probe()
        return
    getattr(part, fallback)()


def all_refusals(counts: Any) -> dict[str, int]:
    """Every known refusal reason (0 when none), plus any other counted reason: the shape of
    ``refusals`` in status output never changes."""
    from edge.intake.plausibility import REFUSAL_REASONS

    out = dict.fromkeys(REFUSAL_REASONS, 0)
    if isinstance(counts, dict):
        out.update({str(k): int(v) for k, v in counts.items()})
    return out


def _patient_param(request: dict[str, Any]) -> str:
    from edge.errors import UsageError
    from edge.readings import check_pseudonym

    patient = request.get("patient")
    if not isinstance(patient, str):
        raise ControlError("a patient pseudonym is required", "bad_request")
    try:
        return check_pseudonym(patient)
    except UsageError as exc:
        raise ControlError(str(exc), "bad_request") from exc


def _inflight(forwarder: Any) -> int:
    try:
        stats = to_jsonable(forwarder.stats())
    except Exception:
        return 0
    if isinstance(stats, dict):
        for k in ("inflight", "in_flight", "inflight_messages"):
            v = stats.get(k)
            if isinstance(v, int):
                return v
    return 0
