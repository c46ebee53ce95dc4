"""Readings received while the hub clock is not trusted: held, then corrected (pure).

Intake stamps every submission with the hub's clocks (:meth:`edge.hubclock.HubClock.stamp`,
within milliseconds of receipt: the BLE layer hands readings over as they arrive). When the
clock is not trusted, :func:`hold` marks the reading (``clock_hold``: boot id and the
monotonic time of its ``received_at``) and the vault keeps it back from the forwarder. Once
the clock is trusted, :func:`correct` gives the reading to forward, or None.

What is corrected, by ``delta = true receive time - stamped receive time``:

- ``received_at`` (FHIR ``issued``), always;
- a heart-rate reading's ``effective_time``: it IS its receive time (straps send no time), so
  a heart-rate time never comes from an unsynchronised clock;
- a glucose reading timed ``device_corrected``: its clock offset was measured against the same
  wrong hub clock (Current Time read at the start of the session), so its effective time is
  off by the same delta; the offset is corrected with it (``effective = device time - offset``
  in the meter's zone stays true). A glucose reading timed ``device`` (the meter's own clock,
  no offset) keeps its effective time.

Readings that cannot be corrected (held in an earlier boot: the monotonic clock restarted, so
the hub cannot know when they were received) — the choice safest for clinicians:

- heart rate, and glucose timed ``device_corrected``: refused ``unknown_time`` (counted,
  audited, removed from the outbox). A value at an unknown time must not appear on a chart at
  a wrong place; a silent guess would be worse than a counted gap.
- glucose timed ``device``: its measurement time came from the meter alone and is still known;
  it is forwarded with ``received_at`` = the release time (``issued`` is when it was made
  available).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from edge.hubclock import Anchor, Stamp
from edge.intake.plausibility import REASON_UNKNOWN_TIME
from edge.readings import (
    ClockHold,
    GlucoseReading,
    HeartRateReading,
    TimeSource,
    stable_reading_id,
)

AnyReading = HeartRateReading | GlucoseReading

__all__ = ["REASON_UNKNOWN_TIME", "correct", "held_heart_rate_id", "hold"]
#: GATT Heart Rate Measurement (as in ``edge.gatt.uuids``)
_HEART_RATE_CHARACTERISTIC = "2a37"


def held_heart_rate_id(reading: HeartRateReading, boot_id: str) -> str:
    """The id of a heart-rate reading received on an untrusted clock: the receive time AND
    the boot, so a boot from the same saved time cannot reuse an earlier reading's id."""
    received = reading.received_at.isoformat(timespec="microseconds")
    return stable_reading_id(reading.device_id, _HEART_RATE_CHARACTERISTIC,
                             f"{received}|boot:{boot_id}")


def hold(reading: AnyReading, stamp: Stamp) -> AnyReading:
    """``reading`` marked as held: the monotonic time of its ``received_at`` (the stamp's,
    less how long before the stamp it was received) and the boot."""
    lag = max(0.0, (stamp.wall - reading.received_at).total_seconds())
    mark = ClockHold(boot_id=stamp.boot_id, received_mono_s=stamp.mono - lag)
    if isinstance(reading, HeartRateReading):
        return reading.model_copy(
            update={"clock_hold": mark, "id": held_heart_rate_id(reading, stamp.boot_id)})
    return reading.model_copy(update={"clock_hold": mark})


def correct(reading: AnyReading, anchor: Anchor | None, released_at: datetime
            ) -> AnyReading | None:
    """The reading to forward once the clock is trusted (``anchor``); None: its time cannot
    be known (refuse it ``unknown_time``). A reading that is not held is returned as it is."""
    mark = reading.clock_hold
    if mark is None:
        return reading
    if anchor is None or mark.boot_id != anchor.boot_id or mark.boot_id == "unknown":
        if isinstance(reading, GlucoseReading) and reading.time_source is TimeSource.DEVICE:
            return reading.model_copy(update={"clock_hold": None, "received_at": released_at})
        return None
    true_received = anchor.wall_at(mark.received_mono_s)
    update: dict[str, object] = {"clock_hold": None, "received_at": true_received}
    if isinstance(reading, HeartRateReading):
        update["effective_time"] = true_received
    elif reading.time_source is TimeSource.DEVICE_CORRECTED:
        # whole seconds: the offset is kept in whole seconds, and effective must stay
        # ``device time - offset`` exactly
        shift = round((true_received - reading.received_at).total_seconds())
        update["effective_time"] = reading.effective_time + timedelta(seconds=shift)
        update["clock_offset_s"] = reading.clock_offset_s - shift
    return reading.model_copy(update=update)
