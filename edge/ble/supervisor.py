"""One supervisor per bound device (the :class:`~edge.ble.manager.BleManager` runs them).

A supervisor loops: take an adapter (the placement: the one it was on while present, else the
least loaded, :mod:`edge.ble.adapter_pool`), wait until that adapter's allow-list watcher sees
its device, take one of the adapter's connection slots (adapters have 5-7), connect, release
the slot, run the session for the device's kind, and when the session ends — link dropped,
stalled, transfer failed, adapter gone — back off (capped, jittered) and go again. A device
that lost its bond goes to ``needs_pairing`` instead (:mod:`edge.ble.bond`). It never raises
except when cancelled.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, TypedDict, Unpack

from edge.backoff import Backoff, BackoffPolicy
from edge.ble.bond import BondWatch
from edge.ble.errors import BLE_EXCEPTIONS, BleOperationError, is_bond_lost, reason_of
from edge.ble.glucose_session import GlucoseSession
from edge.ble.hr_session import HeartRateSession
from edge.ble.link import Link, with_timeout
from edge.ble.ports import BindingLike, DeviceRegistry, IntakeSink
from edge.ble.profiles import normalize_address
from edge.ble.ratelimit import RateLimit, TokenBucket
from edge.ble.state import (
    BACKOFF,
    CONNECTED,
    CONNECTING,
    IDLE,
    NEEDS_PAIRING,
    SYNCING,
    DeviceState,
)
from edge.clock import Clock
from edge.config import BleConfig
from edge.errors import BleError, EdgeError, PairingRefused, RacpError, Transient
from edge.log import get_logger

if TYPE_CHECKING:
    from edge.ble.adapter_pool import Placement
    from edge.ble.manager import BleManager as BleManager

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
    adapter: str | None


class DeviceSupervisor:
    """Keeps one bound device connected (heart rate) or synced (glucose)."""

    def __init__(
        self,
        binding: BindingLike,
        *,
        config: BleConfig,
        registry: DeviceRegistry,
        sink: IntakeSink,
        placement: Placement,
        clock: Clock,
        local_tz: tzinfo,
        rng: random.Random,
        counters: Counter[str],
        glucose_poll_s: float = GLUCOSE_POLL_S,
        on_needs_pairing: Callable[[DeviceSupervisor], None] | None = None,
    ) -> None:
        self._glucose_poll_s = glucose_poll_s
        self.address = normalize_address(binding.address)
        self.kind = binding.kind
        self.patient = binding.patient
        self._config = config
        self._registry = registry
        self._sink = sink
        self._placement = placement
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
        #: the device's notification rate limit, kept across its sessions
        self._rate_bucket = TokenBucket(
            RateLimit(config.heart_rate_max_hz, config.heart_rate_burst)
        )
        self._last_touch: float | None = None
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.bond = BondWatch(
            retry_s=config.needs_pairing_retry_s, clock=clock,
            on_lost=(lambda: on_needs_pairing(self)) if on_needs_pairing else (lambda: None),
        )

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
                if self.bond.lost:
                    await self.bond.wait()  # no storm: re-paired, or a rare retry
                healthy = await self._one_connection()
                if healthy:
                    self.bond.works()
                if self.bond.lost:
                    continue
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
        if not self.bond.lost:
            self._set(state=IDLE)
        lane = await self._placement.place(self.address)
        if lane.name != self._state.adapter:
            self._set(adapter=lane.name)
        # A strap that dropped is reconnected at once from its last sighting; a meter is
        # connected when it advertises (meters advertise when they have something to send, and
        # connecting to one that does not only burns a connection slot until the timeout).
        device = lane.watcher.cached(self.address) if self.kind == "heart_rate" else None
        if device is None:
            try:
                device = await lane.watcher.wait_for(self.address)
            except BleError:  # the adapter went away: placed again at once
                return True
        self._seen()
        dropped = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_disconnect(_client: object) -> None:
            loop.call_soon_threadsafe(dropped.set)

        client = lane.clients(
            device, disconnected_callback=on_disconnect, timeout=self._config.connect_timeout_s
        )
        link = Link(client, dropped)
        async with lane.slots:
            self._set(state=CONNECTING)
            self._counters["connect_attempts"] += 1
            try:
                await with_timeout(
                    self._clock, self._config.connect_timeout_s, client.connect()
                )
            except BLE_EXCEPTIONS as exc:
                # the next attempt waits for a fresh advertisement
                lane.watcher.forget(self.address)
                self._fail(f"connect:{reason_of(exc)}", lost=is_bond_lost(exc))
                await link.close()
                return False
        self._set(state=CONNECTED, connects=self._state.connects + 1)
        log.info("ble.connected", address=self.address, kind=self.kind)
        healthy = False
        try:
            healthy = await self._session(link)
        except PairingRefused as exc:
            # an authentication failure underneath (no bond on this adapter, or the device
            # forgot it) is a lost bond: needs_pairing with its fix, not a retry storm
            self._fail("pairing", lost=is_bond_lost(exc))
            log.warning("ble.pairing_refused", address=self.address, error=str(exc))
            # visible in `edge status` next to the reading refusals
            await self._sink.refuse("pairing_refused")
        except BleOperationError as exc:
            self._fail(f"{exc.operation}:{exc.reason}", lost=is_bond_lost(exc))
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

    def _fail(self, reason: str, *, lost: bool = False) -> None:
        self._counters[f"error:{reason}"] += 1
        if lost or self.bond.lost:  # the bond no longer works: no storm (edge.ble.bond)
            self._set(state=NEEDS_PAIRING, last_error=reason)
            if lost:
                self.bond.mark_lost()
        else:
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
                rate_limit=self._rate_bucket,
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
            self._fail(f"{exc.operation}:{exc.reason}", lost=is_bond_lost(exc))
        return _did_work(session) and not self.bond.lost


def _did_work(session: HeartRateSession | GlucoseSession) -> bool:
    if isinstance(session, HeartRateSession):
        return session.received > 0
    # A transfer that ended early but moved the cursor is progress: resume soon. One that kept
    # nothing lets the capped backoff grow (a meter that always aborts is not hammered).
    return session.syncs > 0 or session.advanced > 0


def __getattr__(name: str) -> object:
    # ``from edge.ble.supervisor import BleManager`` still works (it lives in edge.ble.manager)
    if name == "BleManager":
        from edge.ble.manager import BleManager

        return BleManager
    raise AttributeError(name)
