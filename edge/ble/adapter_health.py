"""*Pure*: when an adapter is wedged and may be power-cycled now, and which adapter a device
goes to. No I/O, no asyncio: callers pass observations and a monotonic ``now``.

Field reports (Home Assistant's bluetooth-auto-recovery, Theengs, openHAB, bleak users): after
hours, ``StartDiscovery`` fails with ``org.bluez.Error.InProgress`` (or ``NotReady``), or
discovery runs and reports nothing, until the adapter is power-cycled. So an adapter is taken
for wedged when

- ``StartDiscovery`` failed with ``InProgress`` / ``NotReady`` ``scan_failures`` times in a
  row, or
- it heard no advertisement at all (from any device, bound or not) for ``silent_windows`` scan
  windows in a row while bound devices were missing;

and a wedged adapter is power-cycled at most once per ``min_interval_s`` (a quiet house with
the only bound device switched off also looks silent: the rate bound keeps that harmless).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

#: the scan-start failures that say "wedged" (others — no bus, permission — do not)
WEDGE_SCAN_REASONS = frozenset({"dbus:InProgress", "dbus:NotReady"})
SCAN_FAILURES = "scan_failures"
SILENT = "silent"


@dataclass(frozen=True)
class WedgePolicy:
    """Thresholds and the rate bound (``BleConfig``'s ``wedge_*`` and
    ``power_cycle_min_interval_s``)."""

    scan_failures: int = 3
    silent_windows: int = 6
    min_interval_s: float = 900.0


@dataclass(frozen=True)
class PowerCycle:
    """The decision: power-cycle ``adapter`` now, because of ``reason``."""

    adapter: str
    reason: str


class AdapterHealth:
    """One adapter's observations, and the power-cycle decisions they lead to."""

    def __init__(self, name: str, policy: WedgePolicy) -> None:
        self.name = name
        self.policy = policy
        self._failures = 0
        self._silent = 0
        self._last_cycle: float | None = None
        #: power-cycles done (``edge status``), and attempts that failed
        self.power_cycles = 0
        self.power_cycle_failures = 0
        self.last_reason: str | None = None

    @property
    def suspected(self) -> str | None:
        """The reason the adapter looks wedged now (None: it does not)."""
        if self._failures >= self.policy.scan_failures:
            return SCAN_FAILURES
        if self._silent >= self.policy.silent_windows:
            return SILENT
        return None

    def scan_failed(self, reason: str, now: float) -> PowerCycle | None:
        """``StartDiscovery`` failed with ``reason`` (an :func:`~edge.ble.errors.reason_of`)."""
        if reason in WEDGE_SCAN_REASONS:
            self._failures += 1
        else:
            self._failures = 0
        return self._decide(now)

    def window_ended(self, heard: int, wanted: bool, now: float) -> PowerCycle | None:
        """A scan window ended having heard ``heard`` advertisements; ``wanted``: bound devices
        were missing for the whole window."""
        self._failures = 0
        if heard > 0:
            self._silent = 0
        elif wanted:
            self._silent += 1
        return self._decide(now)

    def _decide(self, now: float) -> PowerCycle | None:
        reason = self.suspected
        if reason is None:
            return None
        if self._last_cycle is not None and now - self._last_cycle < self.policy.min_interval_s:
            return None
        return PowerCycle(self.name, reason)

    def started(self, decision: PowerCycle, now: float) -> None:
        """A power-cycle begins (the rate bound counts from here, success or not)."""
        self._last_cycle = now
        self._failures = 0
        self._silent = 0
        self.last_reason = decision.reason

    def finished(self, ok: bool) -> None:
        """The power-cycle is done (``ok``) or failed."""
        if ok:
            self.power_cycles += 1
        else:
            self.power_cycle_failures += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "power_cycles": self.power_cycles,
            "power_cycle_failures": self.power_cycle_failures,
            "last_power_cycle_reason": self.last_reason,
            "suspected_wedge": self.suspected,
        }


def place(
    previous: str | None,
    present: Sequence[str],
    load: Mapping[str, int],
    bonded: Collection[str] = (),
) -> str | None:
    """The adapter a device connects through: the one it was on while that is present (a
    live placement is never moved); else, among the present adapters — those BlueZ holds its
    bond on first (bonds are per adapter) — the least loaded, ties by configured order.
    None: no adapter is present."""
    if previous is not None and previous in present:
        return previous
    candidates = [a for a in present if a in bonded] or list(present)
    if not candidates:
        return None
    return min(candidates, key=lambda a: (load.get(a, 0), present.index(a)))
