"""One generic supervisor: runs a part, restarts it with capped, jittered backoff, and reports
its heartbeat to :class:`~edge.daemon.health.Health` (probing it for progress while it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from edge.backoff import Backoff, BackoffPolicy
from edge.clock import Clock, with_timeout
from edge.daemon.health import Health
from edge.log import get_logger

log = get_logger("edge.daemon")

#: a part that failed this many times in a row stops beating: systemd then restarts us
MAX_CONSECUTIVE_FAILURES = 5
#: a part that ran this long before failing is considered to have recovered
STABLE_RUN_S = 60.0


class Stalled(Exception):
    """Raised by a probe: the part is alive but has made no progress."""


class UplinkCounters(Protocol):
    """The forwarder's counters that show progress (``edge.uplink.forwarder.ForwarderStats``)."""

    @property
    def in_flight(self) -> int: ...

    @property
    def messages_acked(self) -> int: ...

    @property
    def sessions(self) -> int: ...

    @property
    def state_label(self) -> str: ...


@dataclass
class UplinkProgress:
    """Progress of the forwarder as its counters show it. Messages in flight with neither an
    acknowledgement nor a new session for ``limit_s`` mean its loop is stuck: the forwarder's
    own PUBACK timeout would have ended the session long before."""

    key: tuple[int, int, str] | None = None
    since: float = 0.0

    def observe(self, stats: UplinkCounters, now: float, limit_s: float) -> None:
        """Raise :class:`Stalled` when in-flight messages have made no progress for too long."""
        key = (stats.messages_acked, stats.sessions, stats.state_label)
        if not stats.in_flight or key != self.key:
            self.key = key
            self.since = now
            return
        if now - self.since > limit_s:
            raise Stalled("uplink")


@dataclass(frozen=True)
class PartStatus:
    """One supervised part as ``edge status`` shows it (no PHI)."""

    state: str
    restarts: int
    last_error: str | None

    def as_dict(self) -> dict[str, str | int | None]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


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
                await with_timeout(self.clock, self.interval_s, self.probe())
            except TimeoutError:
                self.state = "hung"
                log.warning("daemon.part_hung", part=self.name)
                continue
            except Stalled:
                self.state = "stalled"
                log.warning("daemon.part_stalled", part=self.name)
                continue
            except Exception as exc:
                self.state = "probe_failed"
                log.warning("daemon.probe_failed", part=self.name, error=type(exc).__name__)
                continue
            self.state = "running"
            self.health.beat(self.name, "running")

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

    def status(self) -> PartStatus:
        """For status (no PHI)."""
        return PartStatus(self.state, self.restarts, self.last_error)
