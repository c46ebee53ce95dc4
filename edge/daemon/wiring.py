"""The daemon: BLE -> intake -> vault -> forwarder under one TaskGroup.

Each part (BLE manager, forwarder, retention purger, control socket, vault probe) runs under
its own :class:`~edge.daemon.supervisor.Supervisor`, which restarts it with capped, jittered
backoff when it fails and reports its heartbeat to :class:`~edge.daemon.health.Health`. The
watchdog task pets systemd only while every part is fresh, so a hung loop or a part that keeps
dying makes systemd restart the whole service.

Consent: one :class:`~edge.intake.ConsentGate` is consulted by the intake (nothing stored
without consent), the vault and the forwarder (nothing of a revoked patient is read out or
published after the revoke began). A revoke closes the gate first, then the vault revokes,
purges and audits in one transaction.

Shutdown (SIGTERM/SIGINT): STOPPING=1, the forwarder starts nothing new, BLE stops first (no
new readings), in-flight publishes may still be acknowledged (bounded by
``daemon.shutdown_timeout_s``), the rest stops, the vault closes, and ``run`` returns 0. A part
that overruns the budget is ended by ``hard_exit`` (``edge run``: the process exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC

from edge.ble.agent import StandingAgent, StandingAgentFactory
from edge.ble.ports import ClientFactory, ScannerFactory
from edge.ble.state import DeviceState
from edge.clock import Clock, SystemClock
from edge.config import GatewayConfig
from edge.daemon import build
from edge.daemon.control import ControlHandlers, ControlServer
from edge.daemon.health import Health, watchdog
from edge.daemon.ports import (
    BleFactory,
    BleLike,
    DaemonVault,
    ForwarderFactory,
    ForwarderLike,
    ReportsProgress,
    VaultFactory,
)
from edge.daemon.sdnotify import Notifier, NullNotifier, watchdog_interval_s
from edge.daemon.shutdown import shutdown
from edge.daemon.status import (
    DaemonFacts,
    StatusDocument,
    adapters_of,
    cert_days_left,
    consent_gaps,
    devices_of,
    mqtt_devices,
    pairing_of,
    status_document,
    status_line,
)
from edge.daemon.supervisor import Supervisor, UplinkProgress
from edge.hubclock import AssumeSynchronised, HubClock, SyncProbe
from edge.intake import ConsentGate, Intake
from edge.intake.clockwatch import ClockWatch
from edge.log import REDACTOR, get_logger
from edge.uplink.ports import Connector

log = get_logger("edge.daemon")

#: how often delivered readings past retention are purged
PURGE_INTERVAL_S = 3600.0
#: after the shutdown budget, this much more before the process is ended regardless
HARD_EXIT_MARGIN_S = 1.5
#: the start-up integrity check's time budget (past it the daemon starts, with a warning)
INTEGRITY_BUDGET_S = 30.0


class Daemon:
    """The running gateway. Construct, then ``await run()``; ``request_stop()`` (or a signal)
    ends it. The factories and ``connector`` put fakes in place of the real parts."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        key: bytes | None = None,
        vault_factory: VaultFactory | None = None,
        ble_factory: BleFactory | None = None,
        forwarder_factory: ForwarderFactory | None = None,
        scanner_factory: ScannerFactory | None = None,
        client_factory: ClientFactory | None = None,
        connector: Connector | None = None,
        agent_factory: StandingAgentFactory | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        env: Mapping[str, str] | None = None,
        install_signal_handlers: bool = True,
        hard_exit: Callable[[], None] | None = None,
        integrity_budget_s: float = INTEGRITY_BUDGET_S,
        sync_probe: SyncProbe | None = None,
    ) -> None:
        self.config = config
        self._integrity_budget_s = integrity_budget_s
        self._key = key
        self._vault_factory = vault_factory
        self._ble_factory = ble_factory
        self._forwarder_factory = forwarder_factory
        self._scanner_factory = scanner_factory
        self._client_factory = client_factory
        self._connector = connector
        # The pairing agent lives on the system bus bleak's real backend uses: held by default
        # only with that backend (tests with in-process doubles have no bus, or inject one).
        self._agent_factory = agent_factory
        self._wants_agent = agent_factory is not None or (
            ble_factory is None and client_factory is None)
        self.agent: StandingAgent | None = None
        self.clock: Clock = clock or SystemClock()
        self.notifier: Notifier = notifier or NullNotifier()
        self._env = os.environ if env is None else env
        self._install_signals = install_signal_handlers
        self.health = Health(self.clock)
        # Whether the hub clock can be trusted (edge.hubclock); no probe: trusted, as before.
        self.hub_clock = HubClock(self.clock, sync_probe or AssumeSynchronised())
        self.clock_watch: ClockWatch | None = None
        self._stop = asyncio.Event()
        self._initialised = asyncio.Event()
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.vault: DaemonVault | None = None
        self.gate: ConsentGate | None = None
        self.intake: Intake | None = None
        self.ble: BleLike | None = None
        self.forwarder: ForwarderLike | None = None
        self.supervisors: dict[str, Supervisor] = {}
        self.control: ControlServer | None = None
        self._pending: int | None = None
        self._started_at = self.clock.now()
        self._draining = False
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

    # --- building the parts ------------------------------------------------------------------

    async def _open_vault(self) -> DaemonVault:
        return await build.open_vault(self.config, key=self._key, factory=self._vault_factory,
                                      clock=self.clock)

    async def _refuse_a_damaged_vault(self, vault: DaemonVault) -> None:
        await build.refuse_a_damaged_vault(vault, budget_s=self._integrity_budget_s,
                                           path=self.config.vault.path, close=self._close_vault)

    def _make_ble(self, vault: DaemonVault, sink: Intake) -> BleLike:
        if self._ble_factory is not None:
            return self._ble_factory(vault, sink)
        return build.make_ble(self.config, vault, sink, scanner_factory=self._scanner_factory,
                              client_factory=self._client_factory, clock=self.clock)

    def _make_forwarder(self, vault: DaemonVault, gate: ConsentGate) -> ForwarderLike:
        if self._forwarder_factory is not None:
            return self._forwarder_factory(vault, gate, self.status_devices)
        return build.make_forwarder(self.config, vault, gate, connector=self._connector,
                                    clock=self.clock, env=self._env,
                                    status_provider=self.status_devices)

    def _supervisor(
        self, name: str, start: Callable[[], Awaitable[None]],
        probe: Callable[[], Awaitable[None]] | None = None,
    ) -> Supervisor:
        return Supervisor(name, start, self.health, self.clock,
                          self.config.daemon.health_interval_s, probe=probe)

    # --- running -----------------------------------------------------------------------------

    async def _run(self) -> int:
        vault = self.vault = await self._open_vault()
        await self._refuse_a_damaged_vault(vault)
        # The vault's own device-hash key, so logs and the audit name a device the same way,
        # stable across restarts.
        REDACTOR.set_hash_key(vault.log_hash_key)
        gate = self.gate = ConsentGate(vault)
        try:
            # Listen first (requests wait for the set-up below): once the socket is bound a
            # CLI can no longer fall back to writing consent straight into the vault, and
            # anything it wrote before is read by gate.load().
            handlers = ControlHandlers(ready=self._initialised, gate=gate, records=vault,
                                       status=self.full_status, refresh=self._refresh_devices)
            d = self.config.daemon
            self.control = ControlServer(
                d.control_socket, handlers.table(),
                max_connections=d.control_max_connections,
                idle_timeout_s=d.control_idle_timeout_s,
            )
            await self.control.start()
            await self._register_sensitive(vault)
            await gate.load()
            vault.use_consent(gate)
            self.intake = Intake(
                vault, gate, on_appended=self._wake_forwarder, clock=self.clock,
                config=self.config.intake, hub_clock=self.hub_clock,
            )
            self._initialised.set()
            await self._refresh_status()
            sup = self._supervisor
            self.supervisors = {
                "vault": sup("vault", self._vault_part, probe=self._refresh_status),
                "uplink": sup("uplink", self._uplink_part, probe=self._probe_uplink),
                "ble": sup("ble", self._ble_part, probe=self._probe_ble),
                "purger": sup("purger", self._purger_part),
                "control": sup("control", self.control.serve_forever),
            }
            if self._wants_agent:  # rejects unsolicited pairing requests while we run
                self.supervisors["agent"] = sup("agent", self._agent_part)
            async with asyncio.TaskGroup() as tg:
                tasks = {n: tg.create_task(s.run(), name=f"part:{n}")
                         for n, s in self.supervisors.items()}
                pets = tg.create_task(self._watchdog(), name="watchdog")
                self.notifier.notify("READY=1\nSTATUS=" + self.status_line())
                log.info("daemon.ready")
                self.ready.set()
                await self._stop.wait()
                self.notifier.notify("STOPPING=1\nSTATUS=stopping")
                await self._shutdown(tasks, pets)
        finally:
            with contextlib.suppress(Exception):
                if self.control is not None:
                    await self.control.close()
            await self._close_vault()
        log.info("daemon.stopped")
        return 0

    def _watchdog(self) -> Coroutine[None, None, None]:
        health_interval = self.config.daemon.health_interval_s
        wd = watchdog_interval_s(self._env)
        interval = min(wd, health_interval) if wd else health_interval
        return watchdog(self.health, self.notifier, self.clock, interval, self.status_line)

    async def _close_vault(self) -> None:
        vault, self.vault = self.vault, None
        if vault is None:
            return
        try:
            await vault.close()
        except Exception as exc:
            log.error("daemon.vault_close_failed", error=type(exc).__name__)

    async def _register_sensitive(self, vault: DaemonVault) -> None:
        """Bound and consented pseudonyms are scrubbed from any free-text log field."""
        # Bound patients stay registered for good; consented ones may age out of the bounded LRU.
        REDACTOR.pin(b.patient for b in await vault.bindings() if b.patient)
        REDACTOR.register(c.patient for c in await vault.consents() if c.patient)

    def _wake_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.wake()

    # --- parts -------------------------------------------------------------------------------

    def _open(self) -> tuple[DaemonVault, ConsentGate, Intake]:
        """The parts set up by ``_run`` before any supervised part starts."""
        if self.vault is None or self.gate is None or self.intake is None:
            raise RuntimeError("the daemon is not set up")
        return self.vault, self.gate, self.intake

    async def _vault_part(self) -> None:
        # The vault has no loop of its own; this part exists so its probe is supervised, and
        # watches the hub clock: held readings are corrected and released once it is trusted.
        from edge.vault.outbox import releaser

        vault, _, _ = self._open()
        self.clock_watch = ClockWatch(self.hub_clock, self.clock, releaser(vault),
                                      on_released=self._wake_forwarder)
        await self.clock_watch.run()

    async def _uplink_part(self) -> None:
        vault, gate, _ = self._open()
        self.forwarder = self._make_forwarder(vault, gate)
        if self._draining:
            self.forwarder.begin_drain()
        await self.forwarder.run()

    async def _probe_uplink(self) -> None:
        if self.forwarder is not None:
            self._uplink_progress.observe(self.forwarder.stats(), self.clock.monotonic(),
                                          2 * self.config.uplink.ack_timeout_s)

    async def _ble_part(self) -> None:
        vault, _, intake = self._open()
        if self._ble_factory is None:
            from edge.ble.orphans import release_orphaned_links

            await release_orphaned_links([b.address for b in await vault.bindings()])
        self.ble = self._make_ble(vault, intake)
        await self.ble.run()

    async def _agent_part(self) -> None:
        vault, _, _ = self._open()
        if self.agent is None:  # one agent (and its counter) across restarts of the part
            from edge.ble.agent import HubAgent

            make = self._agent_factory or HubAgent
            self.agent = make(functools.partial(vault.audit, "daemon"), self.clock)
        await self.agent.run()

    async def _probe_ble(self) -> None:
        ble = self.ble
        if isinstance(ble, ReportsProgress):
            await ble.probe()
        elif ble is not None:
            ble.device_states()  # answers: the manager's loop is alive

    async def _purger_part(self) -> None:
        vault, _, _ = self._open()
        while True:
            try:
                n = await vault.purge_delivered()
                if n:
                    log.info("daemon.retention_purged", n=n)
            except Exception as exc:
                log.warning("daemon.retention_failed", error=type(exc).__name__)
            await self.clock.sleep(PURGE_INTERVAL_S)

    async def _refresh_devices(self) -> bool:
        """``devices.refresh``: re-read the allow-list (and the names to scrub from logs)."""
        vault, _, _ = self._open()
        await self._register_sensitive(vault)
        if self.ble is None:
            return False
        await self.ble.refresh()
        return True

    # --- shutdown ----------------------------------------------------------------------------

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]],
                        pets: asyncio.Task[None]) -> None:
        # the forwarder starts nothing new; what is in flight may still be acknowledged
        self._draining = True
        if self.forwarder is not None:
            self.forwarder.begin_drain()
        await shutdown(self.clock, tasks, pets, forwarder=self.forwarder,
                       budget_s=self.config.daemon.shutdown_timeout_s)

    # --- status ------------------------------------------------------------------------------

    async def _refresh_status(self) -> None:
        vault, _, _ = self._open()
        self._pending = (await vault.stats()).pending

    def _devices(self) -> list[DeviceState]:
        return devices_of(self.ble)

    def _pairing_status(self) -> dict[str, object] | None:
        return pairing_of(self.agent, wants_agent=self._wants_agent)

    def _adapter_status(self) -> dict[str, dict[str, object]] | None:
        return adapters_of(self.ble)

    def _uplink_state(self) -> str:
        if self.forwarder is None:
            return "stopped"
        return self.forwarder.stats().state_label

    def status_line(self) -> str:
        """The one-line STATUS= summary: queue depth, devices connected, uplink state."""
        return status_line(self._pending, self._devices(), self._uplink_state())

    async def status_devices(self) -> Mapping[str, object]:
        """The device part of the status the forwarder publishes on MQTT (no PHI)."""
        gaps: list[str] = []
        if self.vault is not None and self.gate is not None:
            gaps = consent_gaps(await self.vault.bindings(), self.gate.allows)
        return mqtt_devices(self._devices(), self.health.healthy(), len(gaps))

    async def full_status(self) -> StatusDocument:
        """``edge status`` from the running daemon (local operator view)."""
        vault, _, intake = self._open()
        stats = await vault.stats()
        self._pending = stats.pending
        fwd_stats = None
        if self.forwarder is not None:
            with contextlib.suppress(Exception):
                fwd_stats = self.forwarder.stats().as_dict()
        facts = DaemonFacts(
            started_at=self._started_at.astimezone(UTC),
            healthy=self.health.healthy(),
            intake=intake.stats(),
            devices=self._devices(),
            uplink_state=self._uplink_state(),
            uplink_stats=fwd_stats,
            parts={n: s.status().as_dict() for n, s in self.supervisors.items()},
            pairing=self._pairing_status(),
            adapters=self._adapter_status(),
        )
        return status_document(hub=self.config.hub.id, vault=stats,
                               cert_days=cert_days_left(self.config.uplink, self.clock.now()),
                               daemon=facts)
