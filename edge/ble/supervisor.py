"""One supervisor per bound device, and the :class:`BleManager` that runs them.

A supervisor loops: wait until the allow-list watcher sees its device, take a connection slot
(a semaphore shared by all supervisors: adapters have 5-7 connection slots), connect, release
the slot, run the session for the device's kind, and when the session ends — link dropped,
stalled, transfer failed — back off (capped, jittered) and go again. It never gives up and
never raises except when cancelled.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from typing import TypedDict, Unpack

from edge.backoff import Backoff, BackoffPolicy
from edge.ble.errors import BLE_EXCEPTIONS, BleOperationError, reason_of
from edge.ble.glucose_session import GlucoseSession
from edge.ble.hr_session import HeartRateSession
from edge.ble.link import Link, cancel_and_wait, with_timeout
from edge.ble.ports import (
    BindingLike,
    ClientFactory,
    DeviceRegistry,
    IntakeSink,
    ScannerFactory,
)
from edge.ble.profiles import normalize_address
from edge.ble.scanner import AllowListWatcher
from edge.ble.state import BACKOFF, CONNECTED, CONNECTING, IDLE, SYNCING, DeviceState
from edge.clock import Clock
from edge.config import BleConfig
from edge.errors import EdgeError, PairingRefused, RacpError, Transient
from edge.log import get_logger

log = get_logger("edge.ble.supervisor")

#: how often at most a device's last-seen time is written to the vault
TOUCH_INTERVAL_S = 60.0
#: a connected glucose meter is re-synced from its cursor this often (it may store records
#: without notifying); pushed records are fetched at once
GLUCOSE_POLL_S = 60.0


class _StateChanges(TypedDict, total=False):
    """The :class:`DeviceState` fields a supervisor changes."""

    state: str
    last_seen: datetime | None
    connects: int
    disconnects: int
    last_error: str | None
    readings: int


class DeviceSupervisor:
    """Keeps one bound device connected (heart rate) or synced (glucose)."""

    def __init__(
        self,
        binding: BindingLike,
        *,
        config: BleConfig,
        registry: DeviceRegistry,
        sink: IntakeSink,
        watcher: AllowListWatcher,
        client_factory: ClientFactory,
        connect_slots: asyncio.Semaphore,
        clock: Clock,
        local_tz: tzinfo,
        rng: random.Random,
        counters: Counter[str],
        glucose_poll_s: float = GLUCOSE_POLL_S,
    ) -> None:
        self._glucose_poll_s = glucose_poll_s
        self.address = normalize_address(binding.address)
        self.kind = binding.kind
        self.patient = binding.patient
        self._config = config
        self._registry = registry
        self._sink = sink
        self._watcher = watcher
        self._client_factory = client_factory
        self._slots = connect_slots
        self._clock = clock
        self._local_tz = local_tz
        self._counters = counters
        self._backoff = Backoff(
            BackoffPolicy(
                base=config.reconnect_base_s,
                cap=max(config.reconnect_cap_s, config.reconnect_base_s),
            ),
            rng,
        )
        self._state = DeviceState(self.address, self.kind, IDLE, last_seen=binding.last_seen)
        self._last_touch: float | None = None
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> DeviceState:
        return self._state

    def _set(self, **changes: Unpack[_StateChanges]) -> None:
        self._state = replace(self._state, **changes)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[DeviceState], bool]) -> DeviceState:
        """Wait until the state satisfies ``predicate`` (callers bound it with a timeout)."""
        while not predicate(self._state):
            await self._changed.wait()
        return self._state

    def _seen(self) -> None:
        now = self._clock.now()
        self._set(last_seen=now)
        mono = self._clock.monotonic()
        if self._last_touch is None or mono - self._last_touch >= TOUCH_INTERVAL_S:
            self._last_touch = mono
            task = asyncio.get_running_loop().create_task(self._touch(now))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _touch(self, now: datetime) -> None:
        try:
            await self._registry.touch_device(self.address, now)
        except Exception as exc:  # last-seen is best effort; never kill the session for it
            log.warning("ble.touch_failed", address=self.address, error=type(exc).__name__)

    async def run(self) -> None:
        """Supervise until cancelled."""
        try:
            while True:
                healthy = await self._one_connection()
                if healthy:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                if not self._state.state.startswith("error:"):
                    self._set(state=BACKOFF)
                log.info("ble.backoff", address=self.address, delay_s=round(delay, 2))
                await self._clock.sleep(delay)
        finally:
            self._state = replace(self._state, state=IDLE)

    async def _one_connection(self) -> bool:
        """Connect once and run a session. True when the session did useful work."""
        self._set(state=IDLE)
        # A strap that dropped is reconnected at once from its last sighting; a meter is
        # connected when it advertises (meters advertise when they have something to send, and
        # connecting to one that does not only burns a connection slot until the timeout).
        device = self._watcher.cached(self.address) if self.kind == "heart_rate" else None
        if device is None:
            device = await self._watcher.wait_for(self.address)
        self._seen()
        dropped = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_disconnect(_client: object) -> None:
            loop.call_soon_threadsafe(dropped.set)

        client = self._client_factory(
            device, disconnected_callback=on_disconnect, timeout=self._config.connect_timeout_s
        )
        link = Link(client, dropped)
        async with self._slots:
            self._set(state=CONNECTING)
            self._counters["connect_attempts"] += 1
            try:
                await with_timeout(
                    self._clock, self._config.connect_timeout_s, client.connect()
                )
            except BLE_EXCEPTIONS as exc:
                # the next attempt waits for a fresh advertisement
                self._watcher.forget(self.address)
                self._fail(f"connect:{reason_of(exc)}")
                await link.close()
                return False
        self._set(state=CONNECTED, connects=self._state.connects + 1)
        log.info("ble.connected", address=self.address, kind=self.kind)
        healthy = False
        try:
            healthy = await self._session(link)
        except PairingRefused as exc:
            self._fail("pairing")
            log.warning("ble.pairing_refused", address=self.address, error=str(exc))
            # visible in `edge status` next to the reading refusals
            await self._sink.refuse("pairing_refused")
        except BleOperationError as exc:
            self._fail(f"{exc.operation}:{exc.reason}")
        except RacpError as exc:
            self._fail("racp")
            log.warning("ble.racp_failed", address=self.address, error=str(exc))
        except Transient as exc:
            self._fail(type(exc).__name__)
        except EdgeError as exc:
            self._fail(type(exc).__name__)
            log.warning("ble.session_failed", address=self.address, error=str(exc))
        finally:
            await link.close()
            self._set(disconnects=self._state.disconnects + 1)
            log.info("ble.disconnected", address=self.address)
        return healthy

    def _fail(self, reason: str) -> None:
        self._counters[f"error:{reason}"] += 1
        self._set(state=f"error:{reason}", last_error=reason)
        log.info("ble.session_error", address=self.address, reason=reason)

    def _count_readings(self, n: int) -> None:
        self._seen()
        self._set(readings=self._state.readings + n)

    def _count_malformed(self, n: int) -> None:
        self._counters["malformed"] += n

    async def _session(self, link: Link) -> bool:
        """Run the kind's session until it ends; True when it did useful work (the backoff
        then restarts from its base: a strap that streamed and dropped reconnects soon)."""
        session: HeartRateSession | GlucoseSession
        if self.kind == "heart_rate":
            session = HeartRateSession(
                link,
                address=self.address,
                patient=self.patient,
                sink=self._sink,
                clock=self._clock,
                stall_timeout_s=self._config.stall_timeout_s,
                on_reading=self._count_readings,
                on_malformed=self._count_malformed,
            )
        elif self.kind == "glucose":
            session = GlucoseSession(
                link,
                address=self.address,
                patient=self.patient,
                sink=self._sink,
                registry=self._registry,
                clock=self._clock,
                local_tz=self._local_tz,
                racp_timeout_s=self._config.racp_timeout_s,
                poll_s=self._glucose_poll_s,
                on_syncing=lambda: self._set(state=SYNCING),
                on_synced=lambda: self._set(state=CONNECTED),
                on_reading=self._count_readings,
                on_malformed=self._count_malformed,
            )
        else:
            raise BleOperationError("session", "unsupported_kind")
        try:
            await session.run()
        except BleOperationError as exc:
            self._fail(f"{exc.operation}:{exc.reason}")
        return _did_work(session)


def _did_work(session: HeartRateSession | GlucoseSession) -> bool:
    if isinstance(session, HeartRateSession):
        return session.received > 0
    return session.syncs > 0


class BleManager:
    """Runs the allow-list watcher and one supervisor per bound device."""

    def __init__(
        self,
        config: BleConfig,
        vault: DeviceRegistry,
        sink: IntakeSink,
        *,
        scanner_factory: ScannerFactory,
        client_factory: ClientFactory,
        clock: Clock,
        local_tz: tzinfo | None,
        rng: random.Random | None = None,
        glucose_poll_s: float = GLUCOSE_POLL_S,
    ) -> None:
        self._config = config
        self._glucose_poll_s = glucose_poll_s
        self._vault = vault
        self._sink = sink
        self._client_factory = client_factory
        self._clock = clock
        self._local_tz = local_tz or datetime.now().astimezone().tzinfo or UTC
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not secrecy
        self._slots = asyncio.Semaphore(config.max_concurrent_connects)
        self.watcher = AllowListWatcher(scanner_factory, clock, window_s=config.scan_seconds)
        self._supervisors: dict[str, tuple[DeviceSupervisor, asyncio.Task[None]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._refresh_lock = asyncio.Lock()
        self.counters: Counter[str] = Counter()
        self._unknown_reported = 0

    async def run(self) -> None:
        """Supervise every bound device until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                tg.create_task(self.watcher.run(), name="ble-watcher")
                tg.create_task(self._report_unknown(), name="ble-unknown")
                await self.refresh()
                await asyncio.Event().wait()
            finally:
                self._tg = None
                for _, task in list(self._supervisors.values()):
                    task.cancel()
                self._supervisors.clear()

    async def refresh(self) -> None:
        """Re-read the bindings: start supervisors for new ones, stop removed or changed ones."""
        async with self._refresh_lock:
            bindings = list(await self._vault.bindings())
            wanted: dict[str, BindingLike] = {}
            for b in bindings:
                try:
                    wanted[normalize_address(b.address)] = b
                except ValueError:
                    continue
            self.watcher.set_allowed(wanted)
            for address, (sup, task) in list(self._supervisors.items()):
                now_bound = wanted.get(address)
                if (now_bound is None or now_bound.kind != sup.kind
                        or now_bound.patient != sup.patient):
                    del self._supervisors[address]
                    await cancel_and_wait(task)
                    log.info("ble.supervisor_stopped", address=address)
            tg = self._tg
            if tg is None:
                return
            for address, b in wanted.items():
                if address in self._supervisors:
                    continue
                sup = DeviceSupervisor(
                    b,
                    config=self._config,
                    registry=self._vault,
                    sink=self._sink,
                    watcher=self.watcher,
                    client_factory=self._client_factory,
                    connect_slots=self._slots,
                    clock=self._clock,
                    local_tz=self._local_tz,
                    rng=self._rng,
                    counters=self.counters,
                    glucose_poll_s=self._glucose_poll_s,
                )
                task = tg.create_task(self._guard(sup), name="ble-supervisor")
                self._supervisors[address] = (sup, task)
                log.info("ble.supervisor_started", address=address, kind=b.kind)

    async def _guard(self, sup: DeviceSupervisor) -> None:
        # A bug in one supervisor must not take the TaskGroup (and every other device) down.
        while True:
            try:
                await sup.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters["supervisor_crash"] += 1
                log.error("ble.supervisor_crashed", address=sup.address,
                          error=type(exc).__name__)
                await self._clock.sleep(self._config.reconnect_cap_s)

    async def _report_unknown(self) -> None:
        # Unknown devices are counted as a number only; forward the count to intake's refusals.
        while True:
            await self._clock.sleep(self._config.scan_seconds)
            try:
                await self.flush_unknown()
            except Exception as exc:  # a count must never take the BLE part down
                log.warning("ble.unknown_count_failed", error=type(exc).__name__)

    async def flush_unknown(self) -> None:
        """Report new unknown-device sightings to intake as ``unknown_device`` refusals."""
        total = self.watcher.unknown_sightings
        delta = total - self._unknown_reported
        if delta > 0:
            self._unknown_reported = total
            self.counters["unknown_device"] += delta
            log.info("ble.unknown_devices", n=delta)
            await self._sink.refuse("unknown_device", delta)

    def device_states(self) -> dict[str, DeviceState]:
        """Each bound device's state and last seen, by address (for ``edge status``)."""
        return {a: sup.state for a, (sup, _) in self._supervisors.items()}

    def supervisor(self, address: str) -> DeviceSupervisor | None:
        """The supervisor of ``address`` (tests wait on its state with ``wait_until``)."""
        entry = self._supervisors.get(normalize_address(address))
        return entry[0] if entry else None
