"""The periodic evaluator: the time-based alerts (``stale``, ``hub_offline``) and the raw
retention purge. Every ingest worker runs it on a timer (:func:`run_periodically`), and
``clinic alerts evaluate`` runs it once; a PostgreSQL advisory lock lets only one of them
evaluate at a time (the others skip that round), so N workers do the work once.

A first pass reads without locks to find the patients whose alerts may need to change; each
of those is then decided again and changed in its own short transaction under the patient's
``alert_state`` lock, so the evaluator never holds up ingest for long.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from clinic.alerts import store
from clinic.alerts.rules import Kind, Thresholds, hub_offline_due, is_stale, switch
from clinic.config import ClinicConfig
from clinic.db import rollups
from clinic.db.connect import Conn, connect
from clinic.db.schema import ALERTS_LOCK
from clinic.errors import StoreUnavailable
from edge.log import get_logger

log = get_logger("clinic.alerts")
ACTOR = "evaluator"
Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class Settings:
    defaults: Thresholds
    hub_offline_after_s: float
    raw_retention_days: float

    @classmethod
    def from_config(cls, cfg: ClinicConfig) -> Settings:
        return cls(Thresholds.from_config(cfg.alerts), cfg.alerts.hub_offline_after_s,
                   cfg.ingest.raw_retention_days)


@dataclass(frozen=True)
class Evaluation:
    """What one round did; ``ran`` is False when another evaluator held the lock."""

    ran: bool
    changes: int = 0
    purged: int = 0


@contextlib.contextmanager
def exclusive(conn: Conn) -> Iterator[bool]:
    """Try the evaluator's session advisory lock (never waits); True when this holds it.
    PostgreSQL releases it if the connection dies, so a killed worker never blocks the rest."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ALERTS_LOCK,)).fetchone()
    got = bool(row and row[0])
    try:
        yield got
    finally:
        if got and not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ALERTS_LOCK,))


def evaluate(conn: Conn, settings: Settings, now: dt.datetime, *,
             on_locked: Callable[[], None] | None = None) -> Evaluation:
    """One round (``conn`` in autocommit mode). ``on_locked`` runs once the lock is held
    (a seam for tests). StoreUnavailable when PostgreSQL fails."""
    try:
        with exclusive(conn) as got:
            if not got:
                return Evaluation(ran=False)
            if on_locked is not None:
                on_locked()
            changes = sum(_reconcile(conn, p, settings, now) for p in _candidates(
                conn, settings, now))
            purged = rollups.purge_raw(conn, now, settings.raw_retention_days, ACTOR)
    except psycopg.Error as exc:
        raise StoreUnavailable("PostgreSQL failed during alert evaluation") from exc
    return Evaluation(True, changes, purged)


_PATIENTS = (
    "SELECT p.pseudonym, coalesce(s.last_reading_at, p.added_at), h.online, h.offline_since,"
    " h.revoked_at IS NOT NULL, h.hub_id FROM patients p JOIN hubs h USING (hub_id)"
    " LEFT JOIN alert_state s ON s.patient = p.pseudonym"
)


def _wanted(last: dt.datetime, online: bool | None, offline_since: dt.datetime | None,
            revoked: bool, th: Thresholds, settings: Settings, now: dt.datetime
            ) -> dict[Kind, bool]:
    # a revoked hub's patients are no longer monitored through it: nothing to alarm about
    return {Kind.STALE: not revoked and is_stale(last, now, th),
            Kind.HUB_OFFLINE: hub_offline_due(online, offline_since, revoked, now,
                                              settings.hub_offline_after_s)}


def _candidates(conn: Conn, settings: Settings, now: dt.datetime) -> list[str]:
    """Patients whose stale / hub_offline alerts look out of date (read without locks)."""
    rows = conn.execute(_PATIENTS).fetchall()
    patients = [str(r[0]) for r in rows]
    th = store.thresholds_for(conn, patients, settings.defaults)
    unresolved = store.open_alerts(conn, patients)
    out = []
    for p, last, online, since, revoked, _hub in rows:
        want = _wanted(last, online, since, bool(revoked), th[p], settings, now)
        if any(want[k] != (k in unresolved.get(p, {})) for k in want):
            out.append(str(p))
    return out


def _reconcile(conn: Conn, patient: str, settings: Settings, now: dt.datetime) -> int:
    """Decide one patient again under its lock and make the transitions; their number."""
    made = 0
    with conn.transaction():
        store.lock_patients(conn, [patient])
        row = conn.execute(_PATIENTS + " WHERE p.pseudonym = %s", (patient,)).fetchone()
        if row is None:
            return 0
        _, last, online, since, revoked, hub = row
        th = store.thresholds_for(conn, [patient], settings.defaults)[patient]
        open_ids = store.open_alerts(conn, [patient])[patient]
        for kind, want in _wanted(last, online, since, bool(revoked), th, settings,
                                  now).items():
            for action, k in switch(want, kind in open_ids, kind):
                if action == "open":
                    store.open_alert(conn, patient, k, now, ACTOR, now,
                                     hub_id=str(hub) if k == Kind.HUB_OFFLINE else None)
                else:
                    store.resolve_alert(conn, open_ids[k], patient, k, now, ACTOR, now)
                made += 1
    return made


def run_periodically(cfg: ClinicConfig, stop: threading.Event, clock: Clock) -> None:
    """Evaluate now and then every ``alerts.evaluate_interval_s`` until ``stop``; a database
    failure is logged and retried next round (never raised)."""
    settings = Settings.from_config(cfg)
    conn: Conn | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = connect(cfg.db.dsn)
            result = evaluate(conn, settings, clock())
            if result.ran and (result.changes or result.purged):
                log.info("alerts.evaluated", changes=result.changes, purged=result.purged)
        except StoreUnavailable as exc:
            log.warning("alerts.store_unavailable", error=str(exc))
            if conn is not None:
                conn.close()
                conn = None
        if stop.wait(cfg.alerts.evaluate_interval_s):
            break
    if conn is not None:
        conn.close()
