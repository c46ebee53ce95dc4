"""The hub's own clock: synchronised or not, stepped or not, and which boot this is.

A Raspberry Pi has no real-time clock. After a power cut it boots with the time it last saved
(fake-hwclock, or systemd-timesyncd's clock file) and jumps when NTP synchronises, minutes or
months later. Until then a receive time read from the wall clock is wrong, so a reading
received meanwhile is *held* (stored, not forwarded) with its monotonic receive time and the
boot id; once the clock is trusted its time is corrected from the monotonic clock:
``corrected = sync_wall - (sync_mono - recv_mono)``, valid only within the same boot
(CLOCK_MONOTONIC counts from boot and is shared by every process of that boot).

Everything here is pure logic behind two thin seams: a :class:`SyncProbe` (is the system
clock synchronised?) and the injected :class:`~edge.clock.Clock` (wall and monotonic time).
Which probe runs is ``[clock] source`` (:func:`sync_probe`).

States (``edge status``):

- ``unsynchronised``: the probe says the clock is not synchronised (or cannot tell).
- ``stepped``: the wall clock moved against the monotonic clock by more than
  ``step_threshold_s`` since the last look, while the probe says synchronised. The new time is
  not trusted until a later look sees no further step (readings meanwhile are held).
- ``synchronised``: the probe says synchronised and the last look saw no step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from edge.clock import Clock
from edge.errors import ConfigError

#: systemd-timesyncd creates this file once it has synchronised the clock (systemd >= 239)
TIMESYNCD_SYNCHRONIZED = Path("/run/systemd/timesync/synchronized")
#: the kernel's id of the current boot (a new random UUID at every boot)
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: a move of the wall clock against the monotonic clock larger than this is a step
DEFAULT_STEP_THRESHOLD_S = 2.0

#: adjtimex(2) ``maxerror`` (microseconds) at or above which the clock is not synchronised: the
#: kernel grows it by 500 ppm while nothing disciplines the clock and caps it at 16 s
_MAXERROR_UNSYNC_US = 16_000_000
#: ``struct timex`` is ~208 bytes on 64-bit Linux; a larger zeroed buffer is safe (modes = 0
#: reads only). ``modes`` is the first int; offset, freq, maxerror and esterror (longs) follow.
_TIMEX_SIZE = 512


class ClockState(StrEnum):
    SYNCHRONISED = "synchronised"
    UNSYNCHRONISED = "unsynchronised"
    STEPPED = "stepped"


class SyncProbe(Protocol):
    """Whether the system clock is synchronised to a time source right now."""

    @property
    def source(self) -> str:
        """What the probe asks (``[clock] source``), for ``edge status``."""
        ...

    def synchronised(self) -> bool: ...


class AssumeSynchronised:
    """A probe that always trusts the clock: a virtual test clock, or a hub whose clock is
    kept by something this module cannot see."""

    source = "assume-synchronised"

    def synchronised(self) -> bool:
        return True


class FakeSyncProbe:
    """A settable probe for tests."""

    source = "fake"

    def __init__(self, synchronised: bool = False) -> None:
        self.value = synchronised
        self.calls = 0

    def synchronised(self) -> bool:
        self.calls += 1
        return self.value


class SystemSyncProbe:
    """systemd-timesyncd's flag file first (authoritative where timesyncd runs, as on
    Raspberry Pi OS); otherwise the kernel's maximum-error estimate through ``adjtimex`` with
    ``modes = 0`` (read-only, unprivileged), which chrony and ntpd keep. Anything that cannot
    be read counts as not synchronised: holding a reading is safe, a wrong time is not."""

    source = "system"

    def __init__(self, flag: Path = TIMESYNCD_SYNCHRONIZED) -> None:
        self._flag = flag

    def synchronised(self) -> bool:
        return flag_present(self._flag) or kernel_synchronised()


class FlagFileSyncProbe:
    """Synchronised exactly while ``flag`` exists: for a time daemon other than timesyncd
    (e.g. a hook that touches the file once ``chronyc waitsync`` returns; chrony without
    ``rtcsync`` leaves the kernel's flag unsynchronised), and for tests that drive the clock.
    The kernel is not asked: the installer chose this file as the one authority."""

    source = "flag-file"

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def synchronised(self) -> bool:
        return flag_present(self.flag)


def flag_present(flag: Path) -> bool:
    """Whether ``flag`` exists; a path that cannot be looked at counts as absent."""
    try:
        return flag.exists()
    except OSError:
        return False


def sync_probe(source: str, flag_file: Path | None = None) -> SyncProbe:
    """The probe for ``[clock] source``. The config has already checked that ``flag_file``
    comes exactly with ``flag-file``; a caller that skipped that check gets a ConfigError."""
    if source == "system":
        return SystemSyncProbe()
    if source == "assume-synchronised":
        return AssumeSynchronised()
    if source == "flag-file" and flag_file is not None:
        return FlagFileSyncProbe(flag_file)
    raise ConfigError("invalid clock source", [
        f"clock.source: no probe for {source!r} (flag_file set: {flag_file is not None}) — fix: "
        'use "system", "assume-synchronised", or "flag-file" with flag_file'])


def kernel_synchronised() -> bool:
    """The kernel's view (adjtimex), judged as systemd does (``ntp_synced``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        buf = ctypes.create_string_buffer(_TIMEX_SIZE)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return False
    return state >= 0 and timex_synchronised(buf.raw, ctypes.sizeof(ctypes.c_long))


def timex_synchronised(raw: bytes, long_size: int = 8) -> bool:
    """Whether a ``struct timex`` says the clock is synchronised: its maximum error is below
    the kernel's 16 s cap. ``STA_UNSYNC`` is not consulted: chrony without ``rtcsync`` leaves
    it set on a synchronised clock (to keep the kernel off the RTC), which would hold every
    reading for good; systemd ignores it for the same reason."""
    # struct timex: int modes (padded to a long); long offset, freq, maxerror, esterror
    at = max(4, long_size) + 2 * long_size
    if len(raw) < at + long_size:
        return False
    maxerror = int.from_bytes(raw[at:at + long_size], sys.byteorder, signed=True)
    return 0 <= maxerror < _MAXERROR_UNSYNC_US


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The current boot's id; a fixed ``unknown`` where the kernel offers none (then no held
    reading is ever matched to a later boot by mistake: see :meth:`HubClock.correct`)."""
    try:
        return path.read_text(encoding="ascii").strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


@dataclass(frozen=True)
class Stamp:
    """The hub's clocks at one moment: wall (UTC), monotonic seconds, boot id, and whether
    the wall time can be trusted."""

    wall: datetime
    mono: float
    boot_id: str
    trusted: bool


@dataclass(frozen=True)
class Anchor:
    """Wall and monotonic time read together while the clock is trusted: the reference every
    held reading of this boot is corrected against."""

    boot_id: str
    wall: datetime
    mono: float

    def wall_at(self, mono: float) -> datetime:
        """The true wall time at monotonic ``mono`` of this boot."""
        return self.wall - timedelta(seconds=self.mono - mono)


class HubClock:
    """The hub clock's state. ``check()`` asks the probe and looks for steps (the daemon
    calls it periodically); ``stamp()`` is what intake calls for every submission (it looks
    for a step too, without asking the probe)."""

    def __init__(self, clock: Clock, probe: SyncProbe, *, boot_id: str | None = None,
                 step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S) -> None:
        self._clock = clock
        self._probe = probe
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self._threshold = step_threshold_s
        self._offset: float | None = None
        self._synced = False
        self._stepped = False
        self.steps = 0
        self.last_step_s: float | None = None
        #: the reference for corrections; set each time the clock becomes trusted
        self.anchor: Anchor | None = None

    @property
    def state(self) -> ClockState:
        if not self._synced:
            return ClockState.UNSYNCHRONISED
        return ClockState.STEPPED if self._stepped else ClockState.SYNCHRONISED

    @property
    def trusted(self) -> bool:
        return self.state is ClockState.SYNCHRONISED

    def _look(self) -> tuple[datetime, float, bool]:
        """Read both clocks; whether the wall clock stepped since the last look."""
        wall, mono = self._clock.now(), self._clock.monotonic()
        offset = wall.timestamp() - mono
        stepped = self._offset is not None and abs(offset - self._offset) > self._threshold
        if stepped and self._offset is not None:
            self.steps += 1
            self.last_step_s = offset - self._offset
        self._offset = offset
        return wall, mono, stepped

    def check(self) -> bool:
        """Ask the probe and look for a step. True when the clock has just become trusted
        (held readings can now be corrected against :attr:`anchor`)."""
        was = self.trusted
        wall, mono, stepped = self._look()
        self._synced = self._probe.synchronised()
        # A step seen now keeps the clock untrusted until a look without one.
        self._stepped = self._synced and stepped
        if self.trusted and not was:
            self.anchor = Anchor(self.boot_id, wall, mono)
            return True
        return False

    def stamp(self) -> Stamp:
        """The receive stamp of a submission. A step seen here makes the clock untrusted at
        once (until the next :meth:`check`)."""
        wall, mono, stepped = self._look()
        if stepped and self._synced:
            self._stepped = True
        return Stamp(wall.astimezone(UTC), mono, self.boot_id, self.trusted)

    def correct(self, boot_id: str, recv_mono: float) -> datetime | None:
        """The true receive time of a reading held at monotonic ``recv_mono`` of boot
        ``boot_id``; None when it cannot be known (another boot, or no trusted time yet)."""
        anchor = self.anchor
        if anchor is None or boot_id != anchor.boot_id or boot_id == "unknown":
            return None
        return anchor.wall_at(recv_mono)

    def snapshot(self) -> dict[str, object]:
        """For ``edge status`` (no PHI)."""
        return {
            "state": self.state.value,
            "source": self._probe.source,
            "steps": self.steps,
            "last_step_s": None if self.last_step_s is None else round(self.last_step_s, 3),
        }
