"""Readings -> FHIR R4 Observations and transaction Bundles (pure, no I/O).

Shape per the HL7 Personal Health Device IG (see shared/reference/fhir-mapping.md):

- Every Observation carries a LOINC and an IEEE 11073 MDC coding, UCUM units, the pseudonymous
  subject ``Patient/<pseudonym>``, ``device`` pointing at the sensor, and the gateway linked by
  the ``observation-gatewayDevice`` extension.
- The identifier is the reading's stable id (``urn:uuid:<id>``); in a Bundle each Observation
  is a conditional create on it (``ifNoneExist``), so at-least-once duplicates are absorbed.
- A special value (NaN, NRes, +/-INF, reserved) is sent as ``dataAbsentReason``, never as a
  number; the glucose meter's HI / LO status becomes ``interpretation`` H / L plus a note.
- The device's decimal precision is kept digit for digit (``5.50`` stays ``5.50``).

Decisions worth knowing:

- RR intervals are components coded MDC 147240 ``MDC_ECG_TIME_PD_RR_GL`` (partition 2, term
  16168) in ``ms``, one per interval, oldest first. (The reference's "16323" does not match the
  nomenclature; 147240 is the code published IGs use.)
- Glucose: LOINC by the unit the *device* reported (kg/L -> 41653-7 in mg/dL, mol/L -> 14743-9
  in mmol/L; the conversion is an exact power-of-ten shift), MDC by the sample type (capillary
  whole blood 160184, ...; MDC_CONC_GLU_GEN 160020 when the meter sent no type). Other meter
  status bits are listed in a note.
- dataAbsentReason: ``nan`` -> not-a-number, ``+inf`` -> positive-infinity, ``-inf`` ->
  negative-infinity (all in the R4 code system); ``nres`` and ``reserved`` -> error (the device
  produced a value it could not represent; also a unit other than kg/L or mol/L, which is never
  guessed); anything else -> unknown.
- Devices are pseudonymous: the sensor's Device id is a name-based UUID of (hub id, address),
  the gateway's one of the hub id; no Bluetooth address appears in the output. Pseudonymous, not
  anonymous: someone who knows the hub id can confirm a guessed address.
- In a Bundle, Devices are conditional creates on their identifier and Observations refer to
  them by ``urn:uuid:`` fullUrl, so a FHIR server resolves the references to the existing or
  the newly created Device. A stand-alone :func:`observation` refers to ``Device/<id>``.
- The Bundle has no ``timestamp`` (not required for a transaction): the same readings always
  give the same bytes, so a re-sent batch is identical. The receive time is ``issued``.
- Times are UTC (``Z``). A glucose meter keeps local time: the UTC offset its local time had
  at the measurement (e.g. ``+02:00`` in summer, ``+01:00`` in winter) rides along as the
  standard ``tz-offset`` extension on ``_effectiveDateTime``, so a clinician can see the
  time the patient saw on the meter. Derived from the reading itself (local time = device
  time - clock offset; minus the UTC effective time); omitted for heart rate (no device
  time) and for an offset no zone has (beyond +/-14 h, or not whole minutes).

Speed: the forwarder serialises tens of thousands of readings a second, so Bundles are written
straight to JSON text from pre-encoded constant fragments (a few microseconds per reading); the
dict forms (:func:`observation`, :func:`bundle`) are parsed back from that same text, with
``Decimal`` numbers, so there is one mapping, not two.

The package: :mod:`~edge.fhir.codes` (code systems, code tables, codings),
:mod:`~edge.fhir.observations` (one reading's Observation), :mod:`~edge.fhir.bundles` (Device
ids, transaction Bundles), :mod:`~edge.fhir.jsontext` (JSON text with exact decimals). Callers
import from ``edge.fhir``.
"""

from __future__ import annotations

from edge.fhir.bundles import (
    GATEWAY_NAMESPACE,
    SENSOR_NAMESPACE,
    bundle,
    bundle_bytes,
    gateway_device_id,
    sensor_device_id,
)
from edge.fhir.codes import (
    ABSENT_REASONS,
    DATA_ABSENT_REASON,
    GATEWAY_EXTENSION,
    GLUCOSE_MDC,
    GLUCOSE_UNITS,
    INTERPRETATION,
    LOINC,
    MDC,
    OBSERVATION_CATEGORY,
    PHD_CATEGORY,
    RANGE_STATUS,
    RFC3986,
    TZ_OFFSET_EXTENSION,
    UCUM,
)
from edge.fhir.jsontext import Resource, to_json
from edge.fhir.observations import device_utc_offset, observation

__all__ = [
    "ABSENT_REASONS",
    "DATA_ABSENT_REASON",
    "GATEWAY_EXTENSION",
    "GATEWAY_NAMESPACE",
    "GLUCOSE_MDC",
    "GLUCOSE_UNITS",
    "INTERPRETATION",
    "LOINC",
    "MDC",
    "OBSERVATION_CATEGORY",
    "PHD_CATEGORY",
    "RANGE_STATUS",
    "RFC3986",
    "SENSOR_NAMESPACE",
    "TZ_OFFSET_EXTENSION",
    "UCUM",
    "Resource",
    "bundle",
    "bundle_bytes",
    "device_utc_offset",
    "gateway_device_id",
    "observation",
    "sensor_device_id",
    "to_json",
]
