"""Intake: the gate between the BLE sessions and the vault.

For every reading: plausibility (refused with a named reason), a measurement time the device
reported outside the plausible window around the hub's now (refused ``implausible_time`` and
audited, once per submission, naming the device by its hash only), the consent gate (a patient
without active consent: refused ``no_consent``, nothing stored), minimisation (only what the
Reading model holds is stored) and the append to the vault. Refusals are counted in the vault
and in memory; nothing raises back into the BLE layer for a refusal or a full vault. A reading
counts as received only once the vault has committed it.

The hub clock (:class:`edge.hubclock.HubClock`, when given): every submission is stamped
with it as it arrives; while the clock is not trusted the future bound of the time window is
not applied (the hub does not know "now") and the readings are held
(:func:`edge.intake.timing.hold`): stored, not forwarded until their times are corrected.

Consent is the one :class:`~edge.intake.consent.ConsentGate`; appends hold its lock, under
which grant and revoke run, so a revoke never races an append of that patient's readings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from edge.clock import Clock, SystemClock
from edge.config import IntakeConfig
from edge.errors import EdgeError, Implausible, VaultFull
from edge.hubclock import HubClock
from edge.intake import plausibility, timing
from edge.intake.consent import ConsentGate
from edge.log import REDACTOR, get_logger
from edge.readings import GlucoseReading, HeartRateReading

log = get_logger("edge.intake")

AnyReading = HeartRateReading | GlucoseReading

NO_CONSENT = plausibility.REASON_NO_CONSENT
IMPLAUSIBLE_TIME = plausibility.REASON_TIME
#: who the audit names for refusals intake decides on its own
AUDIT_ACTOR = "system:intake"
#: the audit action of refused measurement times (the subject: device hash and count)
AUDIT_IMPLAUSIBLE_TIME = "device.implausible_time"


class Appended(Protocol):
    """What the vault reports for an append (``edge.vault.AppendResult``)."""

    @property
    def stored(self) -> int: ...


class IntakeVault(Protocol):
    """The vault calls intake makes."""

    async def append(self, readings: Sequence[AnyReading]) -> Appended: ...

    async def commit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> Appended: ...

    async def count_refusal(self, reason: str, n: int = 1) -> None: ...

    async def audit(self, actor: str, action: str, subject: str = "") -> None: ...


class Intake:
    """Implements the BLE layer's ``IntakeSink`` over a vault.

    ``clock`` gives the hub's now for the measurement-time window (``config``); the daemon
    passes its own clock and ``config.intake``."""

    def __init__(self, vault: IntakeVault, gate: ConsentGate, *,
                 on_appended: Callable[[], None], clock: Clock | None = None,
                 config: IntakeConfig | None = None,
                 hub_clock: HubClock | None = None) -> None:
        cfg = config or IntakeConfig()
        self._hub_clock = hub_clock
        self._vault = vault
        self._consent = gate
        self._on_appended = on_appended
        self._clock: Clock = clock or SystemClock()
        self._window = plausibility.TimeWindow.from_settings(
            cfg.earliest_measurement_year, cfg.max_future_s
        )
        self.received: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.duplicates = 0
        #: readings accepted while the hub clock was not trusted (held in the vault)
        self.held = 0

    # --- IntakeSink ---------------------------------------------------------------------------

    async def submit(self, readings: Sequence[AnyReading]) -> None:
        """Check and append heart-rate (or any) readings; refusals are counted, not raised."""
        accepted = await self._screen(readings, None)
        if not accepted:
            return
        async with self._consent.lock:
            accepted = await self._gate(accepted)
            if not accepted:
                return
            try:
                result = await self._vault.append(accepted)
            except VaultFull as exc:
                self._refused_full(exc, len(accepted))
                return
        self._committed(accepted, result)

    async def submit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> None:
        """Glucose records and the meter's cursor in one transaction. Refused records still
        advance the cursor (they were looked at and refused, not lost); a full vault commits
        nothing, so the cursor stays and the records are fetched again next time."""
        screened = await self._screen(readings, address)
        async with self._consent.lock:
            accepted = [r for r in await self._gate(screened) if isinstance(r, GlucoseReading)]
            try:
                result = await self._vault.commit_glucose(
                    address,
                    accepted,
                    last_sequence=last_sequence,
                    last_device_time=last_device_time,
                    clock_offset_s=clock_offset_s,
                )
            except VaultFull as exc:
                self._refused_full(exc, len(accepted))
                return
        if accepted:
            self._committed(accepted, result)

    async def refuse(self, reason: str, n: int = 1) -> None:
        """Count ``n`` refusals (e.g. ``malformed``) without storing anything. Refused
        measurement times are audited too (a session refuses a record whose time does not
        even compute)."""
        if n > 0:
            await self._count(Counter({reason: n}))
            if reason == IMPLAUSIBLE_TIME:
                await self._audit_times(None, n)

    # --- internals ----------------------------------------------------------------------------

    async def _screen(self, readings: Iterable[AnyReading], address: str | None
                      ) -> list[AnyReading]:
        """Plausibility, the time window and minimisation; refusals counted by their named
        reason, refused measurement times audited once for the whole submission."""
        accepted: list[AnyReading] = []
        # a plain dict, made only on a refusal: this runs once per notification
        refused: dict[str, int] | None = None
        devices: set[str] = set()
        stamp = self._hub_clock.stamp() if self._hub_clock is not None else None
        now = self._clock.now() if stamp is None else stamp.wall if stamp.trusted else None
        for r in readings:
            try:
                plausibility.check(r)
                plausibility.check_time(r, now, self._window)
            except Implausible as exc:
                refused = refused if refused is not None else {}
                refused[exc.reason] = refused.get(exc.reason, 0) + 1
                if exc.reason == IMPLAUSIBLE_TIME:
                    devices.add(r.device_id)
                continue
            kept = _minimise(r)
            accepted.append(kept if stamp is None or stamp.trusted else timing.hold(kept, stamp))
        if refused:
            await self._count(refused)
            if refused.get(IMPLAUSIBLE_TIME):
                if address is None and len(devices) == 1:
                    address = devices.pop()
                await self._audit_times(address, refused[IMPLAUSIBLE_TIME])
        return accepted

    async def _audit_times(self, address: str | None, n: int) -> None:
        """One audit entry: which device (its hash, never the address) and how many."""
        device = REDACTOR.device_hash(address) if address else "device unknown"
        try:
            await self._vault.audit(AUDIT_ACTOR, AUDIT_IMPLAUSIBLE_TIME, f"{device} {n} record(s)")
        except EdgeError as exc:  # counted already; a failing audit must not stop the sync
            log.warning("intake.audit_failed", error=type(exc).__name__)

    async def _gate(self, readings: Sequence[AnyReading]) -> list[AnyReading]:
        """The consent gate (called under the lock)."""
        accepted = [r for r in readings if self._consent.allows(r.patient)]
        if len(accepted) < len(readings):
            await self._count(Counter({NO_CONSENT: len(readings) - len(accepted)}))
        return accepted

    async def _count(self, counts: Mapping[str, int]) -> None:
        for reason, n in counts.items():
            if n <= 0:
                continue
            self.refused[reason] += n
            await self._vault.count_refusal(reason, n)
            log.info("intake.refused", reason=reason, n=n)

    def _refused_full(self, exc: VaultFull, n: int) -> None:
        # The vault has already counted this refusal; count in memory and log without PHI.
        self.refused[exc.reason] += n
        log.warning("intake.vault_full", reason=exc.reason, n=n)

    def _committed(self, readings: Sequence[AnyReading], result: Appended) -> None:
        inserted = result.stored
        for r in readings:
            self.received[r.kind] += 1
            if r.clock_hold is not None:
                self.held += 1
        self.duplicates += max(0, len(readings) - inserted)
        try:
            self._on_appended()
        except Exception as exc:  # the wake-up is a hint; a failing one must not lose data
            log.warning("intake.wake_failed", error=type(exc).__name__)

    def stats(self) -> dict[str, object]:
        """In-memory counters since start (no PHI)."""
        return {
            "received": dict(self.received),
            "refused": dict(self.refused),
            "duplicates": self.duplicates,
            "held_for_clock": self.held,
            # the hub clock (edge.hubclock): state, steps, last step
            **({} if self._hub_clock is None else {"clock": self._hub_clock.snapshot()}),
            "consented_patients": len(self._consent.patients()),
        }


def _minimise(reading: AnyReading) -> AnyReading:
    """Only the fields of the Reading model survive (the models forbid extras; re-validating
    a copy drops anything a subclass might carry)."""
    return type(reading).model_validate(reading.model_dump())
