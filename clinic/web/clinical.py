"""Reading clinical data for the pages and the API: which patients a user has, their stored
Observations (opened with the data key), hubs, alerts. Callers decide access first
(:mod:`clinic.web.access`); every function here takes the patients it may touch.

Alerts (:mod:`clinic.alerts.store`) and heart-rate rollups (:mod:`clinic.db.rollups`) are
used through two small protocols, so the pages can be tested with stand-ins."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from clinic import audit
from clinic.alerts import store as alert_store
from clinic.db import rollups
from clinic.db.connect import Conn
from clinic.keys import KeyRing, decrypt
from clinic.web.stats import Bucket, Point, to_mgdl

HR_CODE = "8867-4"
GLUCOSE_CODES = ("41653-7", "14743-9")
KIND_CODES = {"heart_rate": (HR_CODE,), "glucose": GLUCOSE_CODES}
MAX_POINTS = 200_000


def assigned(conn: Conn, username: str) -> list[str]:
    rows = conn.execute("SELECT pseudonym FROM assignments WHERE username = %s "
                        "ORDER BY pseudonym", (username,))
    return [str(r[0]) for r in rows]


def is_assigned(conn: Conn, username: str, pseudonym: str) -> bool:
    return conn.execute("SELECT 1 FROM assignments WHERE username = %s AND pseudonym = %s",
                        (username, pseudonym)).fetchone() is not None


def audit_view(conn: Conn, username: str, what: str, patients: Sequence[str]) -> None:
    """Every view of patient data: who, which patient(s), when (the record's time)."""
    for p in patients:
        audit.append(conn, username, "view." + what, p)


def open_resource(ring: KeyRing, identifier: str, key_id: str, blob: bytes) -> dict[str, Any]:
    res: dict[str, Any] = json.loads(decrypt(ring, key_id, blob, identifier.encode()),
                                     parse_float=Decimal)
    res["id"] = identifier
    return res


def _meal(res: dict[str, Any]) -> str | None:
    for ext in res.get("extension") or []:
        if isinstance(ext, dict) and "meal" in str(ext.get("url", "")).lower():
            v = ext.get("valueCode") or ext.get("valueString")
            if isinstance(v, str):
                return v
    for comp in res.get("component") or []:
        text = str((comp.get("code") or {}).get("text", "")).lower() if isinstance(
            comp, dict) else ""
        if "meal" in text:
            v = comp.get("valueString") or (comp.get("valueCodeableConcept") or {}).get("text")
            return str(v) if v else None
    return None


def point_of(res: dict[str, Any], at: dt.datetime) -> Point:
    """A stored Observation as a Point (glucose in mg/dL)."""
    vq = res.get("valueQuantity")
    value: Decimal | None = None
    if isinstance(vq, dict) and isinstance(vq.get("value"), int | Decimal):
        value = Decimal(vq["value"])
        value = to_mgdl(value, vq.get("code") or vq.get("unit"))
    return Point(at, value, _meal(res))


def points(conn: Conn, ring: KeyRing, patient: str, kind: str, since: dt.datetime,
           until: dt.datetime | None = None) -> list[Point]:
    """A patient's readings of ``kind`` since ``since``, oldest first."""
    rows = conn.execute(
        "SELECT identifier, effective_at, key_id, resource_enc FROM observations "
        "WHERE patient = %s AND code = ANY(%s) AND effective_at >= %s "
        "AND effective_at < coalesce(%s, 'infinity'::timestamptz) "
        "ORDER BY effective_at LIMIT %s",
        (patient, list(KIND_CODES[kind]), since, until, MAX_POINTS))
    return [point_of(open_resource(ring, str(i), str(k), bytes(b)), at)
            for i, at, k, b in rows]


def latest(conn: Conn, ring: KeyRing, patient: str, kind: str) -> Point | None:
    row = conn.execute(
        "SELECT identifier, effective_at, key_id, resource_enc FROM observations "
        "WHERE patient = %s AND code = ANY(%s) ORDER BY effective_at DESC NULLS LAST LIMIT 1",
        (patient, list(KIND_CODES[kind]))).fetchone()
    if row is None:
        return None
    return point_of(open_resource(ring, str(row[0]), str(row[2]), bytes(row[3])), row[1])


@dataclass(frozen=True)
class HubState:
    hub_id: str
    online: bool
    last_seen: dt.datetime | None
    revoked: bool
    queue_depth: int | None


def hub_of(conn: Conn, patient: str) -> HubState | None:
    row = conn.execute(
        "SELECT h.hub_id, coalesce(h.online, false), h.last_seen, h.revoked_at IS NOT NULL, "
        "h.queue_depth FROM patients p JOIN hubs h USING (hub_id) WHERE p.pseudonym = %s",
        (patient,)).fetchone()
    if row is None:
        return None
    return HubState(str(row[0]), bool(row[1]), row[2], bool(row[3]),
                    None if row[4] is None else int(row[4]))


# --- heart-rate rollups and alerts (clinic.db.rollups, clinic.alerts.store) ---------------


class HrRollups(Protocol):
    """Per-minute heart-rate rollups."""

    def minutes(self, conn: Conn, patient: str, since: dt.datetime,
                until: dt.datetime) -> list[Bucket]: ...


@dataclass(frozen=True)
class StoredHrRollups:
    """The rollups ingest keeps (clinic.db.rollups), sealed like the observations."""

    ring: KeyRing

    def minutes(self, conn: Conn, patient: str, since: dt.datetime,
                until: dt.datetime) -> list[Bucket]:
        return [Bucket(m, s.min, s.mean, s.max, s.count)
                for m, s in rollups.read(conn, self.ring, patient, since, until)]


def coarsen(minutes: Sequence[Bucket], width: dt.timedelta) -> list[Bucket]:
    """Wider buckets from per-minute ones (weighted means)."""
    step = int(width.total_seconds())
    groups: dict[int, list[Bucket]] = {}
    for b in minutes:
        groups.setdefault(int(b.start.timestamp()) // step * step, []).append(b)
    out = []
    for k, bs in sorted(groups.items()):
        n = sum(b.n for b in bs)
        out.append(Bucket(dt.datetime.fromtimestamp(k, dt.UTC), min(b.low for b in bs),
                          sum((b.mean * b.n for b in bs), Decimal(0)) / n,
                          max(b.high for b in bs), n))
    return out


Alert = alert_store.Alert


class AlertSource(Protocol):
    """What the pages need from clinic.alerts."""

    def open_for(self, conn: Conn, username: str) -> list[Alert]: ...

    def for_patient(self, conn: Conn, patient: str, since: dt.datetime) -> list[Alert]: ...

    def acknowledge(self, conn: Conn, alert_id: int, username: str, note: str) -> None: ...


@dataclass(frozen=True)
class StoredAlerts:
    """clinic.alerts.store: unresolved alerts (open or acknowledged), acknowledgement with a
    sealed note; an alert of another clinician's patient is "no such alert" (UsageError)."""

    ring: KeyRing

    def open_for(self, conn: Conn, username: str) -> list[Alert]:
        return [a for a in alert_store.list_alerts(conn, self.ring, clinician=username)
                if a.state == "open"]

    def for_patient(self, conn: Conn, patient: str, since: dt.datetime) -> list[Alert]:
        return [a for a in alert_store.list_alerts(conn, self.ring, include_resolved=True,
                                                   patient=patient, limit=200)
                if a.state != "resolved" or a.opened_at >= since]

    def acknowledge(self, conn: Conn, alert_id: int, username: str, note: str) -> None:
        alert_store.acknowledge(conn, self.ring, alert_id, username, note,
                                dt.datetime.now(dt.UTC))
