"""``clinic status``: what the clinic has stored, absorbed and refused, and its hubs. No PHI."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from clinic.db.connect import Conn
from clinic.errors import StoreUnavailable


def _iso(t: object) -> str | None:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if isinstance(
        t, dt.datetime) else None


def collect(conn: Conn) -> dict[str, Any]:
    """The status document (the keys the issue names, plus ``quarantined``)."""
    try:
        obs = conn.execute("SELECT count(*) FROM observations").fetchone()
        dups = conn.execute("SELECT coalesce(sum(value), 0) FROM ingest_counters "
                            "WHERE name = 'duplicates'").fetchone()
        rejected = {str(r): int(n) for r, n in conn.execute(
            "SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason")}
        alerts = conn.execute("SELECT count(*) FROM alerts WHERE state <> 'resolved'").fetchone()
        hubs: dict[str, Any] = {}
        for hub, online, seen, depth, days, revoked in conn.execute(
            "SELECT hub_id, online, last_seen, queue_depth, cert_days_left, revoked_at "
            "FROM hubs ORDER BY hub_id"):
            hubs[str(hub)] = {"online": bool(online), "last_seen": _iso(seen),
                              "queue_depth": depth, "cert_days_left": days,
                              "revoked": revoked is not None}
    except psycopg.Error as exc:
        raise StoreUnavailable("status cannot be read from PostgreSQL") from exc
    return {
        "observations": int(obs[0]) if obs else 0,
        "duplicates": int(dups[0]) if dups else 0,
        "rejected": rejected,
        "alerts_open": int(alerts[0]) if alerts else 0,
        "hubs": hubs,
    }


def render(doc: dict[str, Any]) -> str:
    """A few human lines."""
    lines = [f"observations: {doc['observations']}  duplicates absorbed: {doc['duplicates']}"
             f"  alerts open: {doc['alerts_open']}"]
    rej = ", ".join(f"{k}={v}" for k, v in doc["rejected"].items()) or "none"
    lines.append(f"rejected: {rej}")
    for hub, h in doc["hubs"].items():
        state = "revoked" if h["revoked"] else ("online" if h["online"] else "offline")
        lines.append(f"hub {hub}: {state}, last seen {h['last_seen'] or 'never'}, "
                     f"queue {h['queue_depth'] if h['queue_depth'] is not None else '?'}")
    return "\n".join(lines)
