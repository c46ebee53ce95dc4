"""The alert rules applied at ingest, in the transaction that stores the Observations.

Only Observations the INSERT actually added are given here (a duplicate changes nothing).
Per patient, in time order, and only readings newer than the last one the rules saw (a late
backlog reading is stored but does not rewind an alarm): glucose bands, the heart-rate state
machine, and a recent reading resolves ``stale``. A hub back online resolves ``hub_offline``
for its patients. Alerts opened or resolved by a reading carry the reading's time.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from clinic.alerts import store
from clinic.alerts.rules import (
    GLUCOSE_KINDS,
    HEART_RATE_KINDS,
    Action,
    HrState,
    Kind,
    Thresholds,
    glucose_band,
    glucose_mg_dl,
    hr_alarm_of,
    hr_kind,
    is_stale,
    step_hr,
    transitions,
)
from clinic.db.connect import Conn
from clinic.ingest.bundle import Obs

ACTOR = "ingest"


def apply(conn: Conn, inserted: Sequence[Obs], hubs_online: Sequence[str],
          defaults: Thresholds, now: dt.datetime) -> int:
    """Run the rules over ``inserted`` and the hubs that said online; the number of alert
    transitions made. Call inside the batch's transaction."""
    by_patient: dict[str, list[Obs]] = defaultdict(list)
    for o in inserted:
        by_patient[o.patient].append(o)
    back: set[str] = set()
    if hubs_online:
        back = {str(r[0]) for r in conn.execute(
            "SELECT pseudonym FROM patients WHERE hub_id = ANY(%s)", (sorted(hubs_online),))}
    patients = sorted(set(by_patient) | back)
    if not patients:
        return 0
    states = store.lock_patients(conn, patients)
    thresholds = store.thresholds_for(conn, patients, defaults)
    unresolved = store.open_alerts(conn, patients)
    made = 0
    for p in patients:
        open_ids = unresolved.get(p, {})
        st, plan = decide(states[p], by_patient.get(p, []), set(open_ids), p in back,
                          thresholds[p], now)
        for at, action, kind in plan:
            if action == "open":
                open_ids[kind] = store.open_alert(conn, p, kind, at, ACTOR, now)
            else:
                store.resolve_alert(conn, open_ids.pop(kind), p, kind, at, ACTOR, now)
            made += 1
        store.save_state(conn, st)
    return made


Plan = list[tuple[dt.datetime, Action, Kind]]


def decide(st: store.PatientState, obs: Sequence[Obs], open_kinds: set[Kind],
           hub_back_online: bool, th: Thresholds, now: dt.datetime
           ) -> tuple[store.PatientState, Plan]:
    """(pure) The patient's new rule state and the transitions, in order, that ``obs`` (new
    rows, any order) and a hub back online call for, given the unresolved alert kinds."""
    plan: Plan = []
    ordered = sorted(obs, key=lambda o: o.effective_at)
    g_open = next((k for k in open_kinds if k in GLUCOSE_KINDS), None)
    g_at = st.glucose_at
    hr = replace(st.hr, alarm=hr_alarm_of(open_kinds & HEART_RATE_KINDS))
    hr_at = st.hr_at
    last = st.last_reading_at
    for o in ordered:
        at = min(o.effective_at, now)
        last = at if last is None else max(last, at)
        if o.kind == "glucose" and (g_at is None or o.effective_at > g_at):
            mg = glucose_mg_dl(o.value, o.unit, o.absent)
            if mg is None:
                continue
            band = glucose_band(mg, th)
            plan += [(at, a, k) for a, k in transitions(g_open, band)]
            g_open, g_at = band, o.effective_at
        elif o.kind == "heart_rate" and o.value is not None and (
                hr_at is None or o.effective_at > hr_at):
            new: HrState = step_hr(hr, o.value, th)
            plan += [(at, a, k) for a, k in transitions(hr_kind(hr.alarm), hr_kind(new.alarm))]
            hr, hr_at = new, o.effective_at
    # a backlog of old readings is not news: stale resolves only when the data is fresh
    if Kind.STALE in open_kinds and last is not None and not is_stale(last, now, th):
        plan.append((now, "resolve", Kind.STALE))
    if hub_back_online and Kind.HUB_OFFLINE in open_kinds:
        plan.append((now, "resolve", Kind.HUB_OFFLINE))
    return store.PatientState(st.patient, last, g_at, hr_at, hr), plan
