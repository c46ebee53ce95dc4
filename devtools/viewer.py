"""The demo's clinician view: Observations in, a readable table out.

:class:`VitalsBoard` is pure (FHIR resources or Bundles in, a table out). :class:`StoredReader`
is its source in the demo: what the clinic *stored* in PostgreSQL, read with the clinic's own
key ring (the broker only carries sealed envelopes, which a subscriber cannot read).
:func:`sign_in_lines` is the web app's URL and the demo clinician's sign-in, with the current
TOTP code, shown above the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pyotp

from clinic import status
from clinic.keys import KeyRing, decrypt

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


def _obj(value: object) -> Mapping[str, object]:
    """A JSON object, or an empty one for anything else."""
    return value if isinstance(value, dict) else {}


def _list(value: object) -> Sequence[object]:
    """A JSON array, or an empty one for anything else."""
    return value if isinstance(value, list) else []


def _value(obs: Mapping[str, object]) -> str:
    q = obs.get("valueQuantity")
    if isinstance(q, dict) and "value" in q:
        unit = "bpm" if q.get("code") == "/min" else q.get("unit", q.get("code", ""))
        text = f"{q['value']} {unit}".strip()
        for interp in _list(obs.get("interpretation")):
            for coding in _list(_obj(interp).get("coding")):
                code = _obj(coding).get("code")
                if code in ("H", "L"):
                    text += f" ({code})"
        return text
    codings = _list(_obj(obs.get("dataAbsentReason")).get("coding")) or [{}]
    absent = _obj(codings[0]).get("code", "n/a")
    return f"no value ({absent})"


class VitalsBoard:
    """Latest heart rate and glucose per patient, from the Bundles a clinician receives."""

    def __init__(self) -> None:
        self.patients: dict[str, PatientVitals] = {}
        self.messages = 0
        self.duplicates = 0

    def ingest(self, payload: bytes) -> int:
        """Take one plain FHIR transaction Bundle; returns new observations."""
        bundle = _obj(json.loads(payload))
        self.messages += 1
        new = 0
        for entry in _list(bundle.get("entry")):
            new += self.add_observation(_obj(_obj(entry).get("resource")))
        return new

    def add_observation(self, obs: Mapping[str, object]) -> int:
        """Take one Observation resource; 1 if it was new, 0 for a repeat or another type."""
        if obs.get("resourceType") != "Observation":
            return 0
        patient = str(_obj(obs.get("subject")).get("reference", "?")).removeprefix("Patient/")
        vitals = self.patients.setdefault(patient, PatientVitals())
        oid = next((str(_obj(i).get("value", "")) for i in _list(obs.get("identifier"))), "")
        if oid in vitals.ids:
            self.duplicates += 1
            return 0
        vitals.ids.add(oid)
        vitals.observations += 1
        codes = {_obj(c).get("code") for c in _list(_obj(obs.get("code")).get("coding"))}
        when = str(obs.get("effectiveDateTime", ""))
        if HEART_RATE_LOINC in codes:
            vitals.heart_rate, vitals.heart_rate_at = _value(obs), _local_time(when)
        elif codes & GLUCOSE_LOINC and when >= vitals.glucose_iso:
            vitals.glucose, vitals.glucose_at = _value(obs), _date_time(when)
            vitals.glucose_iso = when
        return 1

    def render(self, footer: str | None = None) -> str:
        """A fixed-width table, one row per patient; ``footer`` replaces the message count."""
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
        lines.append(footer or f"messages {self.messages}, duplicates absorbed {self.duplicates}")
        return "\n".join(lines)


def sign_in_lines(url: str, username: str, password: str, totp: pyotp.TOTP,
                  now: float | None = None) -> str:
    """The web app's URL and a sign-in with the code current at ``now`` (seconds since the
    epoch; default: the clock) and how long it stays current."""
    now = time.time() if now is None else now
    left = totp.interval - int(now) % totp.interval
    return (f"web: {url}\n"
            f"sign in: username {username}  password {password}  "
            f"code {totp.at(int(now))} ({left:2d} s left)")


class StoredReader:
    """New rows of the clinic's ``observations`` table, opened with the clinic's key ring
    (AES-256-GCM per row, the identifier as associated data, as ingest sealed them)."""

    def __init__(self, dsn: str, ring: KeyRing) -> None:
        self._dsn = dsn
        self._ring = ring
        self._last = 0

    def poll(self, board: VitalsBoard) -> str:
        """Feed rows stored since the last poll to ``board``; the clinic's counters as a
        footer line (stored, duplicates absorbed, rejected)."""
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id, identifier, key_id, resource_enc FROM observations "
                "WHERE id > %s ORDER BY id", (self._last,)).fetchall()
            for row_id, identifier, key_id, blob in rows:
                text = decrypt(self._ring, str(key_id), bytes(blob), str(identifier).encode())
                board.add_observation(_obj(json.loads(text)))
                self._last = max(self._last, int(row_id))
            doc = status.collect(conn)
        rejected = sum(int(n) for n in doc["rejected"].values())
        return (f"clinic stored {doc['observations']} observations in PostgreSQL, "
                f"duplicates absorbed {doc['duplicates']}, rejected {rejected}")
