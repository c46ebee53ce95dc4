"""The health registry and the watchdog loop that pets systemd only while it is healthy.

``WATCHDOG=1`` is only sent while every registered part has reported recently: a hung event
loop cannot run the watchdog task, and a hung or dead part stops beating, so in both cases
systemd sees the pets stop and restarts the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edge.clock import Clock
from edge.daemon.sdnotify import Notifier
from edge.log import get_logger

log = get_logger("edge.daemon")


def one_line(text: str, limit: int = 200) -> str:
    """A STATUS= value: one line (notify messages are newline-separated), bounded."""
    flat = " ".join(text.split())
    return flat[:limit]


@dataclass
class _PartHealth:
    stale_after_s: float
    last_beat: float
    note: str = "starting"


@dataclass
class Health:
    """Heartbeats of the daemon's parts on an injected clock.

    A part is healthy while its last beat is younger than its ``stale_after_s``. A part that
    never registered does not count; a registered part that stops beating makes the whole
    daemon unhealthy.
    """

    clock: Clock
    _parts: dict[str, _PartHealth] = field(default_factory=dict)

    def register(self, name: str, stale_after_s: float) -> None:
        """Start tracking ``name``; it counts as fresh from now."""
        self._parts[name] = _PartHealth(stale_after_s, self.clock.monotonic())

    def unregister(self, name: str) -> None:
        """Stop tracking ``name`` (the part was stopped on purpose)."""
        self._parts.pop(name, None)

    def beat(self, name: str, note: str = "ok") -> None:
        """``name`` made progress just now."""
        part = self._parts.get(name)
        if part is not None:
            part.last_beat = self.clock.monotonic()
            part.note = note

    def stale(self) -> list[str]:
        """Names of the parts that have not beaten recently enough."""
        now = self.clock.monotonic()
        return sorted(n for n, p in self._parts.items() if now - p.last_beat > p.stale_after_s)

    def healthy(self) -> bool:
        """True when every registered part is fresh."""
        return not self.stale()

    def snapshot(self) -> dict[str, dict[str, float | str]]:
        """Per part: seconds since the last beat and its note (for status)."""
        now = self.clock.monotonic()
        return {
            n: {"age_s": round(now - p.last_beat, 3), "note": p.note}
            for n, p in sorted(self._parts.items())
        }


async def watchdog(
    health: Health,
    notifier: Notifier,
    clock: Clock,
    interval_s: float,
    status_line: Callable[[], str],
) -> None:
    """Every ``interval_s``: ``WATCHDOG=1`` with the status line while healthy, otherwise
    only ``STATUS=unhealthy: <parts>`` (no pet). Runs until cancelled."""
    was_healthy = True
    while True:
        stale = health.stale()
        if not stale:
            notifier.notify("WATCHDOG=1\nSTATUS=" + status_line())
            if not was_healthy:
                log.info("daemon.healthy")
        else:
            notifier.notify("STATUS=" + one_line("unhealthy: " + ",".join(stale)))
            if was_healthy:
                log.warning("daemon.unhealthy", parts=stale)
        was_healthy = not stale
        await clock.sleep(interval_s)
