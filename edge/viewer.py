"""The clinician's view used by the demo: FHIR Bundles in, a readable table out (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

HEART_RATE_LOINC = "8867-4"
GLUCOSE_LOINC = {"41653-7", "14743-9"}


@dataclass
class PatientVitals:
    heart_rate: str = "-"
    heart_rate_at: str = "-"
    glucose: str = "-"
    glucose_at: str = "-"
    #: effective time of the glucose shown; meters send history, so keep the newest
    glucose_iso: str = ""
    observations: int = 0
    ids: set[str] = field(default_factory=set)


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime(
            "%H:%M:%S"
        )
    except ValueError:
        return iso


def _date_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime(
            "%d %b %H:%M"
        )
    except ValueError:
        return iso


def _value(obs: dict[str, Any]) -> str:
    q = obs.get("valueQuantity")
    if isinstance(q, dict) and "value" in q:
        unit = "bpm" if q.get("code") == "/min" else q.get("unit", q.get("code", ""))
        text = f"{q['value']} {unit}".strip()
        for interp in obs.get("interpretation", []):
            for coding in interp.get("coding", []):
                if coding.get("code") in ("H", "L"):
                    text += f" ({coding['code']})"
        return text
    absent = obs.get("dataAbsentReason", {}).get("coding", [{}])[0].get("code", "n/a")
    return f"no value ({absent})"


class VitalsBoard:
    """Latest heart rate and glucose per patient, from the Bundles a clinician receives."""

    def __init__(self) -> None:
        self.patients: dict[str, PatientVitals] = {}
        self.messages = 0
        self.duplicates = 0

    def ingest(self, payload: bytes) -> int:
        """Take one MQTT payload (a FHIR transaction Bundle); returns new observations."""
        bundle = json.loads(payload)
        self.messages += 1
        new = 0
        for entry in bundle.get("entry", []):
            obs = entry.get("resource", {})
            if obs.get("resourceType") != "Observation":
                continue
            patient = obs.get("subject", {}).get("reference", "?").removeprefix("Patient/")
            vitals = self.patients.setdefault(patient, PatientVitals())
            oid = next((i.get("value", "") for i in obs.get("identifier", [])), "")
            if oid in vitals.ids:
                self.duplicates += 1
                continue
            vitals.ids.add(oid)
            vitals.observations += 1
            new += 1
            codes = {c.get("code") for c in obs.get("code", {}).get("coding", [])}
            when = obs.get("effectiveDateTime", "")
            if HEART_RATE_LOINC in codes:
                vitals.heart_rate, vitals.heart_rate_at = _value(obs), _local_time(when)
            elif codes & GLUCOSE_LOINC and when >= vitals.glucose_iso:
                vitals.glucose, vitals.glucose_at = _value(obs), _date_time(when)
                vitals.glucose_iso = when
        return new

    def render(self) -> str:
        """A fixed-width table, one row per patient."""
        head = (
            f"{'patient':<22} {'heart rate':<14} {'at':<9} "
            f"{'glucose':<20} {'measured':<13} {'obs':>5}"
        )
        lines = [head, "-" * len(head)]
        for patient in sorted(self.patients):
            v = self.patients[patient]
            lines.append(
                f"{patient:<22} {v.heart_rate:<14} {v.heart_rate_at:<9} "
                f"{v.glucose:<20} {v.glucose_at:<13} {v.observations:>5}"
            )
        if not self.patients:
            lines.append("(waiting for the first observations)")
        lines.append(f"messages {self.messages}, duplicates absorbed {self.duplicates}")
        return "\n".join(lines)
