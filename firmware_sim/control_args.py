"""What the control interface and ``ctl`` accept, checked in one place and described for
``--help``: glucose record fields, fault keys, device options, heart rates, adapters."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from firmware_sim.faults import MALFORMED_KINDS, PAIRING_REFUSALS, FaultPlan

#: glucose record fields ``ctl glucose`` / ``AddGlucoseRecord`` take
GLUCOSE_FIELDS: dict[str, str] = {
    "concentration": "number, in unit (default: a plausible value)",
    "mg_dl_value": "number in mg/dL, converted to the meter's unit",
    "unit": "mg/dL | mmol/L (default: the meter's)",
    "base_time": "ISO 8601 meter-local time (default: the meter's clock)",
    "time_offset": "minutes, or null",
    "sample_type": "int (1 = capillary whole blood, 2 = capillary plasma, ...)",
    "location": "int (1 = finger, 2 = alternate site, ...)",
    "status": "int sensor status bits, or null",
    "context": "JSON object with context fields (meal, tester, health, ...)",
}
#: the bpm a heart rate can be pinned to
BPM_RANGE = (20, 300)


def _number(key: str, value: Any) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    try:
        Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{key}: expected a number, got {value!r}") from None


def check_glucose_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields for ``GlucoseMeter.add_glucose_record``, checked; ValueError says which is bad."""
    out = dict(fields)
    unknown = sorted(set(out) - set(GLUCOSE_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown record field {unknown[0]!r}; fields: {', '.join(GLUCOSE_FIELDS)}"
        )
    for key in ("concentration", "mg_dl_value"):
        if out.get(key) is not None:
            _number(key, out[key])
    if out.get("unit") not in (None, "mg/dL", "mmol/L"):
        raise ValueError(f"unit: expected mg/dL or mmol/L, got {out['unit']!r}")
    if isinstance(out.get("base_time"), str):
        try:
            out["base_time"] = datetime.fromisoformat(out["base_time"])
        except ValueError:
            raise ValueError(
                f"base_time: expected ISO 8601 (2026-01-31T08:00:00), got {out['base_time']!r}"
            ) from None
    for key in ("sample_type", "location", "status"):
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
    if out.get("context") is not None and not isinstance(out["context"], dict):
        raise ValueError("context: expected a JSON object")
    return out


def check_bpm(bpm: int) -> int | None:
    """A heart rate to pin, or -1 to release it (returns None); ValueError otherwise."""
    if bpm == -1:
        return None
    lo, hi = BPM_RANGE
    if not lo <= bpm <= hi:
        raise ValueError(f"heart rate must be {lo}-{hi} bpm (or auto), got {bpm}")
    return bpm


def fault_keys_help() -> str:
    """One line per fault key with what it takes."""
    lines = []
    for f in dataclasses.fields(FaultPlan):
        if f.name == "malformed":
            what = " | ".join(sorted(MALFORMED_KINDS)) + " | null"
        elif f.name == "pairing_refused":
            what = " | ".join(sorted(PAIRING_REFUSALS)) + " | null"
        else:
            what = str(f.type).replace(" | None", " | null")
        lines.append(f"  {f.name:<31} {what}")
    return "\n".join(lines)


def glucose_fields_help() -> str:
    """One line per glucose record field."""
    return "\n".join(f"  {k:<14} {v}" for k, v in GLUCOSE_FIELDS.items())


def device_options_help() -> str:
    """The device options ``ctl add`` takes, per kind."""
    from firmware_sim.scenario import OPTION_TYPES

    return "\n".join(
        f"  {kind}: {', '.join(sorted(opts))}" for kind, opts in OPTION_TYPES.items()
    )
