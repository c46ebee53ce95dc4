"""The Reading types: frozen, Decimal-valued, with a stable id.

A reading's id is derived from (device identity, characteristic, sequence number or device
time), never random, so the same measurement decoded twice — or re-sent after a crash — has
the same id, and every store and backend can deduplicate on it.

Ids and the hub clock: a reading's id is fixed when intake accepts it and never changes when
its time is corrected (the clinic deduplicates on it; a correction must not turn one
measurement into two). A heart-rate reading received while the hub clock was not
synchronised has the boot id in its discriminator (:func:`edge.intake.timing.hold`): a hub
that boots again from the same saved time must not give a new measurement the id of an old
one.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from edge.errors import UsageError

# A fixed namespace: changing it would change every reading id ever issued.
READING_ID_NAMESPACE = uuid.UUID("6f1d3c1e-6a0b-5b7e-9d5e-2f0b1c0d9e11")


#: a pseudonym is a FHIR id (``Patient/<id>``) and an MQTT topic level: letters, digits, '-'
#: and '.', at most 64 — no '/', '+', '#', spaces or anything a name would need
PSEUDONYM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$"
_PSEUDONYM_RE = re.compile(PSEUDONYM_PATTERN)


def check_pseudonym(value: str) -> str:
    """``value`` if it is a usable patient pseudonym, else UsageError (not echoing it)."""
    if not _PSEUDONYM_RE.fullmatch(value):
        raise UsageError(
            "a patient pseudonym is 1-64 letters, digits, '-' or '.', starting with a letter "
            "or digit (it becomes a FHIR id and an MQTT topic level)"
        )
    return value


class ReadingKind(StrEnum):
    HEART_RATE = "heart_rate"
    GLUCOSE = "glucose"


class TimeSource(StrEnum):
    """How a reading's ``effective_time`` was obtained."""

    #: the device's own timestamp, taken as it is
    DEVICE = "device"
    #: the device's timestamp corrected by the gateway's knowledge of the device clock offset
    DEVICE_CORRECTED = "device_corrected"
    #: the device sends no time (heart-rate straps): the gateway's receive time
    GATEWAY = "gateway"


def stable_reading_id(device_id: str, characteristic: str, discriminator: str) -> str:
    """The stable id (a UUID string) of a reading.

    ``device_id`` is the device's identity address, ``characteristic`` a 16-bit UUID in
    lower-case hex (``2a37``), ``discriminator`` the sequence number and/or device time.
    """
    name = f"{device_id.upper()}|{characteristic.lower()}|{discriminator}"
    return str(uuid.uuid5(READING_ID_NAMESPACE, name))


class ClockHold(BaseModel):
    """Why a reading waits: it was received while the hub clock was not synchronised, so its
    receive time (and any time derived from the hub clock) is corrected before it is
    forwarded. See :mod:`edge.hubclock`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the boot the reading was received in (``/proc/sys/kernel/random/boot_id``)
    boot_id: str
    #: the hub's monotonic clock (seconds since that boot) at ``received_at``
    received_mono_s: float


class _Reading(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: stable id, see :func:`stable_reading_id`
    id: str
    #: the bound device's identity address (``AA:BB:CC:DD:EE:FF``)
    device_id: str
    #: pseudonymous patient id the device is bound to — never a name
    patient: Annotated[str, Field(pattern=PSEUDONYM_PATTERN)]
    #: when the measurement was taken, UTC
    effective_time: AwareDatetime
    time_source: TimeSource
    #: when the gateway received it, UTC
    received_at: AwareDatetime
    #: set while the hub clock was not synchronised at receipt: the reading is held in the
    #: vault (not forwarded) until its times are corrected; None for every forwarded reading
    clock_hold: ClockHold | None = None


class HeartRateReading(_Reading):
    kind: Literal["heart_rate"] = "heart_rate"
    #: beats per minute
    bpm: int
    #: ``not_supported`` | ``not_detected`` | ``detected``
    sensor_contact: str
    energy_expended_kj: int | None = None
    #: RR intervals in seconds (raw / 1024), oldest first
    rr_intervals_s: tuple[Decimal, ...] = ()


class GlucoseReading(_Reading):
    kind: Literal["glucose"] = "glucose"
    sequence_number: int
    #: device local time as reported (base time + time offset), no zone
    device_time: datetime
    time_offset_min: int | None = None
    #: the meter clock's offset from the gateway's (meter minus gateway), seconds
    clock_offset_s: int = 0
    #: concentration as the device reported it, in ``unit``; None when a special value
    concentration: Decimal | None
    #: ``nan`` | ``nres`` | ``+inf`` | ``-inf`` | ``reserved`` | None
    concentration_special: str | None = None
    #: ``kg/L`` | ``mol/L`` as on the wire
    unit: str
    mg_dl: Decimal | None
    mmol_l: Decimal | None
    #: e.g. ``capillary_whole_blood``
    sample_type: str | None = None
    #: e.g. ``finger``
    sample_location: str | None = None
    #: sensor status annunciation names, e.g. ``result_too_high``
    status: tuple[str, ...] = ()
    #: meal context (``preprandial`` …) when a context record came with it
    meal: str | None = None


Reading = Annotated[HeartRateReading | GlucoseReading, Field(discriminator="kind")]

#: ``cache_strings="keys"``: pydantic's default also caches every short string *value* it parses
#: (ids, times) in a process-wide table of 16,384 entries, which fills over tens of minutes of
#: forwarding and holds ~1.4 MB for nothing: no two readings share an id
READING_ADAPTER: TypeAdapter[HeartRateReading | GlucoseReading] = TypeAdapter(
    Reading, config=ConfigDict(cache_strings="keys"))


def reading_from_json(data: str | bytes) -> HeartRateReading | GlucoseReading:
    """Parse a reading serialised with ``model_dump_json``."""
    return READING_ADAPTER.validate_json(data)
