"""The simulator's manual clock: :class:`edge.testing.ManualClock` starting at 08:00.

The simulator runs on the gateway's clocks (the :class:`edge.clock.Clock` protocol, real time
from :class:`edge.clock.SystemClock`); only the default start differs, because the simulator's
devices wake at a plausible morning hour. One manual clock can drive both sides of a test.
"""

from __future__ import annotations

from datetime import UTC, datetime

from edge.testing.clock import ManualClock as _ManualClock
from edge.testing.clock import settle

SIM_START = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


class ManualClock(_ManualClock):
    """:class:`edge.testing.ManualClock` with the simulator's default start time."""

    def __init__(
        self,
        start: datetime | None = None,
        *,
        autojump: bool = False,
        autojump_delay: float = 0.0,
    ) -> None:
        super().__init__(start or SIM_START, autojump=autojump, autojump_delay=autojump_delay)


__all__ = ["SIM_START", "ManualClock", "settle"]
