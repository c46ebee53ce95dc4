"""The soak's fault schedule: pure — a seed, a duration and the device names in, the timed
actions out. No I/O, no clock: the runner (:mod:`soak.run`) waits for each ``at_s`` itself.

Three kinds of fault, each arriving as a Poisson process with its own mean interval
(:class:`Rates`), inside the window ``[quiet_start_s, duration_s - quiet_end_s]`` so that the
daemon starts and ends the soak in calm conditions:

- ``link_drop``: one device's BLE link drops (``firmware_sim ctl drop``); the hub reconnects.
- ``broker_restart``: mosquitto stops and starts on the same port with the same configuration;
  the hub's uplink must reconnect and re-send what was not acknowledged. Restarts are kept
  ``broker_min_gap_s`` apart.
- ``malformed``: for a window of seconds, one device sends broken measurement notifications
  (``malformed=<kind> malformed_every=<n>``), then behaves again. Each window is two actions,
  ``malformed_on`` and ``malformed_off``; one device never has two windows at once, and every
  window is closed before the quiet end. The windows go to heart-rate straps when there are
  any (they notify every second; a meter sends records only when it syncs), broken in a way
  the hub must refuse (:data:`MALFORMED_FOR`): a truncated Heart Rate Measurement. A strap's
  reserved flag bits are not a refusal (the specification says to ignore them), so they are
  not used: every malformed window should show up in ``refusals.malformed``.

When the window is long enough for it, every kind appears at least once (a kind whose Poisson
draw came out empty gets one fault at a uniformly drawn time), so a short soak still proves
each kind of recovery.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from firmware_sim.faults import MALFORMED_KINDS

Op = Literal["drop", "restart_broker", "malformed_on", "malformed_off"]
FaultKind = Literal["link_drop", "broker_restart", "malformed"]

#: the fault kind each action counts as (``malformed_off`` ends a window: not a fault)
KIND_OF: dict[str, FaultKind | None] = {
    "drop": "link_drop",
    "restart_broker": "broker_restart",
    "malformed_on": "malformed",
    "malformed_off": None,
}
FAULT_KINDS: tuple[FaultKind, ...] = ("link_drop", "broker_restart", "malformed")
#: the malformations used per device kind (the simulator's ``describe()["kind"]``)
MALFORMED_FOR: dict[str, tuple[str, ...]] = {
    "heart_rate": ("truncated",),
    "glucose": tuple(sorted(MALFORMED_KINDS)),
}


@dataclass(frozen=True)
class Rates:
    """Mean intervals between faults of each kind, and the shape of the window."""

    link_drop_every_s: float = 20.0
    broker_restart_every_s: float = 300.0
    malformed_every_s: float = 60.0
    #: a malformed window lasts between these many seconds
    malformed_window_s: tuple[float, float] = (5.0, 20.0)
    #: a malformed window breaks every Nth measurement, N drawn from this range (inclusive)
    malformed_nth: tuple[int, int] = (1, 4)
    broker_min_gap_s: float = 45.0
    quiet_start_s: float = 5.0
    quiet_end_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("link_drop_every_s", "broker_restart_every_s", "malformed_every_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        lo, hi = self.malformed_window_s
        if not 0 < lo <= hi:
            raise ValueError("malformed_window_s must be 0 < low <= high")
        nlo, nhi = self.malformed_nth
        if not 1 <= nlo <= nhi:
            raise ValueError("malformed_nth must be 1 <= low <= high")
        if self.broker_min_gap_s < 0 or self.quiet_start_s < 0 or self.quiet_end_s < 0:
            raise ValueError("gaps and quiet periods must be >= 0")


@dataclass(frozen=True)
class Action:
    """One thing the runner does ``at_s`` seconds after the soak's start."""

    at_s: float
    op: Op
    device: str | None = None
    #: for ``malformed_on``: the malformation and every how many measurements
    malformed: str | None = None
    nth: int = 1

    @property
    def kind(self) -> FaultKind | None:
        return KIND_OF[self.op]

    def describe(self) -> str:
        if self.op == "restart_broker":
            return "broker restart"
        if self.op == "drop":
            return f"link drop {self.device}"
        if self.op == "malformed_on":
            return f"malformed on {self.device} ({self.malformed}, every {self.nth})"
        return f"malformed off {self.device}"


def _arrivals(rng: random.Random, mean: float, lo: float, hi: float) -> list[float]:
    out: list[float] = []
    t = lo
    while True:
        t += rng.expovariate(1.0 / mean)
        if t >= hi:
            break
        out.append(t)
    if not out and hi > lo:
        out.append(rng.uniform(lo, hi))
    return out


def build_schedule(seed: int, duration_s: float, devices: Mapping[str, str],
                   rates: Rates | None = None) -> tuple[Action, ...]:
    """The actions of one soak, sorted by time (the same for the same arguments).
    ``devices``: name -> kind (``heart_rate`` or ``glucose``)."""
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    if not devices:
        raise ValueError("a soak needs at least one device")
    unknown = sorted(k for k in set(devices.values()) if k not in MALFORMED_FOR)
    if unknown:
        raise ValueError(f"unknown device kinds {unknown}; known: {sorted(MALFORMED_FOR)}")
    r = rates or Rates()
    names = sorted(devices)
    straps = [n for n in names if devices[n] == "heart_rate"]
    targets = straps or names
    lo, hi = r.quiet_start_s, duration_s - r.quiet_end_s
    if hi <= lo:
        return ()
    rng = random.Random(seed)  # noqa: S311 (a reproducible schedule, not a secret)
    actions: list[Action] = []

    for t in _arrivals(rng, r.link_drop_every_s, lo, hi):
        actions.append(Action(round(t, 3), "drop", rng.choice(names)))

    last = -float("inf")
    for t in _arrivals(rng, r.broker_restart_every_s, lo, hi):
        if t - last >= r.broker_min_gap_s:
            actions.append(Action(round(t, 3), "restart_broker"))
            last = t

    busy_until = dict.fromkeys(targets, -float("inf"))
    wlo, whi = r.malformed_window_s
    for t in _arrivals(rng, r.malformed_every_s, lo, hi):
        free = [n for n in targets if busy_until[n] < t]
        if not free:
            continue
        device = rng.choice(free)
        end = min(t + rng.uniform(wlo, whi), hi)
        if end <= t:
            continue
        on = Action(round(t, 3), "malformed_on", device, rng.choice(MALFORMED_FOR[devices[device]]),
                    rng.randint(*r.malformed_nth))
        off_at = max(round(end, 3), on.at_s)
        actions += [on, Action(off_at, "malformed_off", device)]
        busy_until[device] = end

    order = {"malformed_off": 0, "restart_broker": 1, "drop": 2, "malformed_on": 3}
    actions.sort(key=lambda a: (a.at_s, order[a.op], a.device or ""))
    return tuple(actions)


def fault_counts(actions: Sequence[Action]) -> dict[FaultKind, int]:
    """How many faults of each kind ``actions`` inject (every kind present, 0 when none)."""
    counts: Counter[FaultKind] = Counter()
    for a in actions:
        if a.kind is not None:
            counts[a.kind] += 1
    return {k: counts[k] for k in FAULT_KINDS}
