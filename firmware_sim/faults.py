"""Fault plans: the awkward behaviours a simulated device can be told to show.

A :class:`FaultPlan` is plain data, built from a dict (a scenario's ``[devices.faults]`` table or
a control-interface ``inject_fault`` call) with every key checked. The device keeps the runtime
counters in a :class:`FaultState`. Keys (all optional):

=============================== ======================================================
``connect_failures``            int: the next N connects fail (``le-connection-abort-by-local``)
``connect_failure_probability`` float 0..1: each connect fails with this probability (seeded)
``drop_link_after_notifications`` int: drop the link after N notifications on a connection
``drop_link_times``             int: how many connections get dropped that way (0 = all; default 1)
``in_progress_on_operation``    int: the Nth GATT operation (counted from now) fails InProgress
``malformed``                   "truncated" | "reserved_flags" | "sfloat_nan" | "sfloat_nres":
                                measurement notifications are sent broken
``malformed_every``             int: only every Nth measurement notification is broken (default 1)
``implausible``                 bool: heart rate 400 bpm / glucose 900 mg/dL
``duplicate_records``           bool: each reported glucose record is sent twice
``out_of_order_records``        bool: reported glucose records come newest first
``reset_sequence``              bool: the meter renumbers its records from 1 (applied once)
``slow_response_seconds``       float: every operation takes this long (on the sim clock)
``invisible``                   bool: the device disappears from scans and cannot be reached
``pairing_refused``             "failed" | "rejected" | "canceled": pairing fails
                                (AuthenticationFailed / AuthenticationRejected /
                                AuthenticationCanceled: the device cancels while the host's
                                agent is asked, and bluetoothd sends the agent ``Cancel``)
``racp_abort_unsuccessful``     bool: an RACP abort answers "abort unsuccessful" (7)
``racp_interrupt_after_records`` int: a report stops after N records with "procedure not
                                completed" (8)
=============================== ======================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.errors import SimError

MALFORMED_KINDS = frozenset({"truncated", "reserved_flags", "sfloat_nan", "sfloat_nres"})
PAIRING_REFUSALS = frozenset({"failed", "rejected", "canceled"})


class FaultSpecError(SimError, ValueError):
    """A fault specification has an unknown key or a bad value."""


@dataclass(frozen=True)
class FaultPlan:
    """What should go wrong. See the module docstring for the meaning of each field."""

    connect_failures: int = 0
    connect_failure_probability: float = 0.0
    drop_link_after_notifications: int | None = None
    drop_link_times: int = 1
    in_progress_on_operation: int | None = None
    malformed: str | None = None
    malformed_every: int = 1
    implausible: bool = False
    duplicate_records: bool = False
    out_of_order_records: bool = False
    reset_sequence: bool = False
    slow_response_seconds: float = 0.0
    invisible: bool = False
    pairing_refused: str | None = None
    racp_abort_unsuccessful: bool = False
    racp_interrupt_after_records: int | None = None

    @classmethod
    def from_dict(cls, spec: dict[str, Any], *, where: str = "faults") -> FaultPlan:
        """Build a plan from ``spec``; unknown keys and bad values raise :class:`FaultSpecError`
        naming ``where`` and the key."""
        return cls().merged(spec, where=where)

    def merged(self, spec: dict[str, Any], *, where: str = "faults") -> FaultPlan:
        """This plan with the keys of ``spec`` replaced (validated)."""
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in spec.items():
            if key not in known:
                raise FaultSpecError(
                    f"{where}: unknown fault {key!r}; known: {', '.join(sorted(known))}"
                )
            changes[key] = _check(key, value, where)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what a scenario would write)."""
        default = FaultPlan()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def _check(key: str, value: Any, where: str) -> Any:
    def bad(expected: str) -> FaultSpecError:
        return FaultSpecError(f"{where}.{key}: expected {expected}, got {value!r}")

    ints_min = {
        "connect_failures": 0,
        "drop_link_after_notifications": 1,
        "drop_link_times": 0,
        "in_progress_on_operation": 1,
        "malformed_every": 1,
        "racp_interrupt_after_records": 0,
    }
    if key in ints_min:
        if value is None and key in {
            "drop_link_after_notifications",
            "in_progress_on_operation",
            "racp_interrupt_after_records",
        }:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < ints_min[key]:
            raise bad(f"an integer >= {ints_min[key]}")
        return value
    if key == "connect_failure_probability":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise bad("a number between 0 and 1")
        return float(value)
    if key == "slow_response_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad("a number of seconds >= 0")
        return float(value)
    if key == "malformed":
        if value is not None and value not in MALFORMED_KINDS:
            raise bad(f"one of {sorted(MALFORMED_KINDS)}")
        return value
    if key == "pairing_refused":
        if value is not None and value not in PAIRING_REFUSALS:
            raise bad(f"one of {sorted(PAIRING_REFUSALS)}")
        return value
    if not isinstance(value, bool):
        raise bad("true or false")
    return value


@dataclass
class FaultState:
    """Runtime counters a device keeps while following its plan."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    connect_failures_left: int = 0
    drops_done: int = 0
    operations: int = 0
    in_progress_at: int | None = None
    measurement_notifications: int = 0

    def install(self, plan: FaultPlan) -> None:
        """Switch to ``plan``; one-shot counters restart from now."""
        self.plan = plan
        self.connect_failures_left = plan.connect_failures
        self.drops_done = 0
        self.in_progress_at = (
            self.operations + plan.in_progress_on_operation
            if plan.in_progress_on_operation is not None
            else None
        )
        self.measurement_notifications = 0

    def next_operation_in_progress(self) -> bool:
        """Count one GATT operation; True when it is the one that must fail InProgress."""
        self.operations += 1
        if self.in_progress_at is not None and self.operations == self.in_progress_at:
            self.in_progress_at = None
            return True
        return False

    def should_drop(self, notifications_this_link: int) -> bool:
        """True when the link must drop after this many notifications on it."""
        n = self.plan.drop_link_after_notifications
        if n is None or notifications_this_link != n:
            return False
        if self.plan.drop_link_times and self.drops_done >= self.plan.drop_link_times:
            return False
        self.drops_done += 1
        return True

    def malform_this_measurement(self) -> str | None:
        """The malformation to apply to the next measurement notification, if any."""
        self.measurement_notifications += 1
        kind = self.plan.malformed
        if kind is None or self.measurement_notifications % self.plan.malformed_every:
            return None
        return kind
