"""The daemon's watch on the hub clock: look every ``interval_s``; when the clock becomes
trusted (and once at start, if it already is), correct and release the held readings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from edge.clock import Clock
from edge.errors import EdgeError
from edge.hubclock import HubClock
from edge.intake import timing
from edge.log import get_logger
from edge.readings import GlucoseReading, HeartRateReading
from edge.vault.outbox import Fix, Released

log = get_logger("edge.intake.clock")

#: how often the hub clock is looked at (intake also looks for steps at every submission)
CHECK_INTERVAL_S = 10.0

Release = Callable[[Fix], Awaitable[Released]]


class ClockWatch:
    """``release`` is the vault's (:func:`edge.vault.outbox.releaser`; None: a vault that
    holds nothing back); ``on_released`` wakes the forwarder."""

    def __init__(self, hub_clock: HubClock, clock: Clock, release: Release | None, *,
                 on_released: Callable[[], None], interval_s: float = CHECK_INTERVAL_S) -> None:
        self.hub_clock = hub_clock
        self._clock = clock
        self._release = release
        self._on_released = on_released
        self._interval = interval_s
        self._due = True
        self.released = 0
        self.unknown_time = 0

    def fix(self, reading: HeartRateReading | GlucoseReading
            ) -> HeartRateReading | GlucoseReading | None:
        """What a held reading becomes now (see :func:`edge.intake.timing.correct`)."""
        return timing.correct(reading, self.hub_clock.anchor, self._clock.now())

    async def check_once(self) -> Released | None:
        """One look; the release done, if the clock is (newly) trusted."""
        before = self.hub_clock.state
        if self.hub_clock.check():
            self._due = True
        if self.hub_clock.state is not before:
            log.info("clock.state", state=self.hub_clock.state.value)
        if self._release is None or not (self._due and self.hub_clock.trusted):
            return None
        try:
            got = await self._release(self.fix)
        except EdgeError as exc:  # tried again at the next look; the readings stay held
            log.warning("clock.release_failed", error=type(exc).__name__)
            return None
        self._due = False
        self.released += got.released
        self.unknown_time += got.unknown_time
        if got.unknown_time:
            log.warning("clock.unknown_time", n=got.unknown_time)
        if got.released:
            self._on_released()
        return got

    async def run(self) -> None:
        while True:
            await self.check_once()
            await self._clock.sleep(self._interval)
