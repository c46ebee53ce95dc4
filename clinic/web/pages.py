"""The clinician's pages: patients, one patient, alerts, acknowledging an alert. Each view
of patient data is audited (who, which patient, when)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from clinic.db.connect import Conn
from clinic.db.registry import check_pseudonym
from clinic.errors import ClinicError, UsageError
from clinic.keys import KeyRing, decrypt
from clinic.web import charts, clinical, stats
from clinic.web.access import Area
from clinic.web.common import Form, WebState, gate, now, redirect, render, state, threaded

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Latest:
    text: str
    age: str
    flag: str
    stale: bool
    at: dt.datetime | None


@dataclass(frozen=True)
class Row:
    pseudonym: str
    name: str
    alerts: list[clinical.Alert]
    hr: Latest
    glucose: Latest
    hub: clinical.HubState | None


def display_name(conn: Conn, ring: KeyRing, p: str) -> str:
    row = conn.execute("SELECT name_key_id, name_enc FROM patients WHERE pseudonym = %s",
                       (p,)).fetchone()
    if row is None or row[0] is None:
        return ""
    try:
        return decrypt(ring, str(row[0]), bytes(row[1]), b"patient-name|" + p.encode()).decode()
    except ClinicError:
        return ""


def _latest(st: WebState, conn: Conn, p: str, kind: str, unit: str, t: dt.datetime) -> Latest:
    pt = clinical.latest(conn, st.ring, p, kind)
    at = pt.at if pt else None
    v = pt.value if pt else None
    if kind == "glucose":
        text = stats.glucose_text(v, unit) + (f" {unit}" if v is not None else "")
        flag, stale_s = stats.glucose_flag(v), st.cfg.web.stale_glucose_s
    else:
        text = f"{v:.0f} bpm" if v is not None else "—"
        flag, stale_s = stats.hr_flag(v), st.cfg.web.stale_hr_s
    return Latest(text, stats.age_text(at, t), flag, stats.is_stale(at, t, stale_s), at)


def patient_rows(st: WebState, conn: Conn, username: str, unit: str) -> list[Row]:
    t = now()
    mine = clinical.assigned(conn, username)
    open_alerts = st.alert_source.open_for(conn, username)
    rows = [Row(p, display_name(conn, st.ring, p), [a for a in open_alerts if a.patient == p],
                _latest(st, conn, p, "heart_rate", unit, t),
                _latest(st, conn, p, "glucose", unit, t), clinical.hub_of(conn, p))
            for p in mine]
    rows.sort(key=lambda r: (-len(r.alerts), r.pseudonym))
    return rows


@threaded
def patients_page(request: Request, form: Form) -> Response:
    st = state(request)
    with st.pool.conn() as conn:
        s = gate(request, conn, Area.CLINICAL_LIST)
        rows = patient_rows(st, conn, s.username, s.glucose_unit)
        clinical.audit_view(conn, s.username, "patients", [r.pseudonym for r in rows])
    return render(request, "patients.html", session=s, rows=rows, now=now())


def _pseudonym(request: Request) -> str:
    p = str(request.path_params["pseudonym"])
    try:
        return check_pseudonym(p)
    except UsageError as exc:
        raise HTTPException(404) from exc


@threaded
def patient_page(request: Request, form: Form) -> Response:
    st = state(request)
    p = _pseudonym(request)
    t = now()
    with st.pool.conn() as conn:
        s = gate(request, conn, Area.PATIENT, patient=p)
        minutes = st.hr_rollups.minutes(conn, p, t - 7 * DAY, t)
        day = [b for b in minutes if b.start >= t - DAY]
        glucose = clinical.points(conn, st.ring, p, "glucose", t - 14 * DAY)
        alerts = st.alert_source.for_patient(conn, p, t - 14 * DAY)
        hub = clinical.hub_of(conn, p)
        name = display_name(conn, st.ring, p)
        hr_now = _latest(st, conn, p, "heart_rate", s.glucose_unit, t)
        gl_now = _latest(st, conn, p, "glucose", s.glucose_unit, t)
        clinical.audit_view(conn, s.username, "patient", [p])
    unit = s.glucose_unit
    g_mean = stats.mean(glucose)
    return render(
        request, "patient.html", session=s, p=p, name=name, hub=hub, alerts=alerts,
        hr_now=hr_now, gl_now=gl_now, unit=unit,
        hr24=charts.hr_chart(clinical.coarsen(day, dt.timedelta(minutes=5)), t - DAY, t, st.tz,
                             "Heart rate, last 24 hours"),
        hr7=charts.hr_chart(clinical.coarsen(minutes, dt.timedelta(hours=1)), t - 7 * DAY, t,
                            st.tz, "Heart rate, last 7 days"),
        gchart=charts.glucose_chart(glucose, t - 14 * DAY, t, st.tz,
                                    "Glucose readings, last 14 days", unit),
        bands=stats.bands(glucose), band_labels=stats.BAND_LABELS,
        g_mean=stats.glucose_text(g_mean, unit), g_per_day=stats.per_day(glucose, 14),
        g_count=sum(1 for g in glucose if g.value is not None),
        g_recent=[(g, stats.glucose_text(g.value, unit), stats.glucose_flag(g.value))
                  for g in reversed(glucose[-50:])])


@threaded
def alerts_page(request: Request, form: Form) -> Response:
    st = state(request)
    with st.pool.conn() as conn:
        s = gate(request, conn, Area.CLINICAL_LIST)
        alerts = st.alert_source.open_for(conn, s.username)
        clinical.audit_view(conn, s.username, "alerts", sorted({a.patient for a in alerts}))
    return render(request, "alerts.html", session=s, alerts=alerts)


@threaded
def acknowledge(request: Request, form: Form) -> Response:
    st = state(request)
    p = _pseudonym(request)
    try:
        alert_id = int(request.path_params["alert_id"])
    except ValueError as exc:
        raise HTTPException(404) from exc
    with st.pool.conn() as conn:
        s = gate(request, conn, Area.PATIENT, form, patient=p)
        if not any(a.id == alert_id for a in st.alert_source.for_patient(conn, p, now())):
            raise HTTPException(404)
        st.alert_source.acknowledge(conn, alert_id, s.username, form.get("note", ""))
    back = form.get("back", "")
    return redirect(back if back in ("/alerts", f"/patients/{p}") else f"/patients/{p}")
