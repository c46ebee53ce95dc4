"""The alert rules and rollup arithmetic (pure: values in, decisions out; no database)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from clinic.alerts.on_ingest import decide
from clinic.alerts.rules import (
    HrState,
    Kind,
    Thresholds,
    glucose_band,
    glucose_mg_dl,
    hr_kind,
    hub_offline_due,
    is_stale,
    step_hr,
    switch,
    transitions,
)
from clinic.alerts.store import PatientState
from clinic.config import AlertsSection, parse
from clinic.db.rollups import MinuteStats, aggregate, minute_of, purge_cutoff
from clinic.errors import ConfigError
from clinic.ingest.bundle import check_bundle
from edge import fhir
from tests.clinic.support import glucose, hr

T0 = dt.datetime(2026, 3, 15, 8, 0, tzinfo=dt.UTC)
TH = Thresholds()
D = Decimal


@pytest.mark.parametrize(("value", "unit", "absent", "want"), [
    (D("65"), "mg/dL", None, D("65")),
    (D("3.0"), "mmol/L", None, D("54.048")),
    (D("13.9"), "mmol/L", None, D("250.4224")),
    (D("5"), "g/L", None, None),               # a unit we do not know is never guessed
    (D("5"), None, None, None),
    (None, None, "positive-infinity", D("Infinity")),   # the meter's HI
    (None, None, "negative-infinity", D("-Infinity")),  # the meter's LO
    (None, None, "not-a-number", None),
    (None, None, "error", None),
    (None, None, None, None),
])
def test_glucose_in_mg_dl(value: Decimal | None, unit: str | None, absent: str | None,
                          want: Decimal | None) -> None:
    assert glucose_mg_dl(value, unit, absent) == want


@pytest.mark.parametrize(("mg_dl", "want"), [
    (D("20"), Kind.GLUCOSE_URGENT_LOW),
    (D("53.9"), Kind.GLUCOSE_URGENT_LOW),
    (D("54"), Kind.GLUCOSE_LOW),          # "below 54" is urgent; 54 itself is level 1
    (D("69.9"), Kind.GLUCOSE_LOW),
    (D("70"), None),
    (D("180"), None),
    (D("250"), None),                     # "above 250" is high; 250 itself is not
    (D("250.1"), Kind.GLUCOSE_HIGH),
    (D("Infinity"), Kind.GLUCOSE_HIGH),
    (D("-Infinity"), Kind.GLUCOSE_URGENT_LOW),
    (D("2.9") * D("18.016"), Kind.GLUCOSE_URGENT_LOW),  # mmol/L readings, converted
    (D("3.8") * D("18.016"), Kind.GLUCOSE_LOW),
    (D("13.8") * D("18.016"), None),
    (D("13.9") * D("18.016"), Kind.GLUCOSE_HIGH),
])
def test_glucose_bands(mg_dl: Decimal, want: Kind | None) -> None:
    assert glucose_band(mg_dl, TH) == want


def _alarms(samples: list[int], sustain: int, start: HrState | None = None) -> list[str | None]:
    th = Thresholds(heart_rate_sustain_samples=sustain)
    s = start or HrState()
    out: list[str | None] = []
    for bpm in samples:
        s = step_hr(s, D(bpm), th)
        out.append(s.alarm)
    return out


@pytest.mark.parametrize(("samples", "sustain", "want"), [
    # a single glitch is not an alarm
    ([80, 200, 80, 80], 3, [None, None, None, None]),
    ([80, 20, 80, 20, 80], 3, [None] * 5),
    # sustained: the alarm rises on the N-th consecutive sample
    ([150, 150, 150, 150], 3, [None, None, "high", "high"]),
    ([30, 30, 30], 3, [None, None, "low"]),
    # the limits themselves are in range
    ([40, 130, 40, 130], 1, [None, None, None, None]),
    ([39, 131], 1, ["low", "high"]),
    # a run broken by the other side starts again
    ([150, 150, 30, 150, 150], 3, [None, None, None, None, None]),
    # one good sample does not clear a raised alarm; N consecutive good ones do
    ([150, 150, 150, 80, 150, 80, 80, 80], 3,
     [None, None, "high", "high", "high", "high", "high", None]),
    # sustained on the other side moves the alarm straight across
    ([150, 150, 30, 30], 2, [None, "high", "high", "low"]),
])
def test_heart_rate_state_machine(samples: list[int], sustain: int,
                                  want: list[str | None]) -> None:
    assert _alarms(samples, sustain) == want


def test_heart_rate_state_resumes_across_batches() -> None:
    th = Thresholds(heart_rate_sustain_samples=3)
    s = step_hr(step_hr(HrState(), D(150), th), D(150), th)
    assert (s.side, s.run, s.alarm) == ("high", 2, None)
    assert step_hr(s, D(150), th).alarm == "high"  # the third sample, in the next batch


@pytest.mark.parametrize(("before", "after", "want"), [
    (None, None, []),
    (None, Kind.GLUCOSE_LOW, [("open", Kind.GLUCOSE_LOW)]),
    (Kind.GLUCOSE_LOW, None, [("resolve", Kind.GLUCOSE_LOW)]),
    (Kind.GLUCOSE_LOW, Kind.GLUCOSE_LOW, []),
    (Kind.GLUCOSE_LOW, Kind.GLUCOSE_URGENT_LOW,
     [("resolve", Kind.GLUCOSE_LOW), ("open", Kind.GLUCOSE_URGENT_LOW)]),
    (hr_kind("high"), hr_kind("low"),
     [("resolve", Kind.HEART_RATE_HIGH), ("open", Kind.HEART_RATE_LOW)]),
])
def test_transitions(before: Kind | None, after: Kind | None, want: list[object]) -> None:
    assert transitions(before, after) == want


@pytest.mark.parametrize(("ago_s", "stale"), [(0, False), (3599, False), (3600, True),
                                              (86400, True), (-600, False)])
def test_stale(ago_s: int, stale: bool) -> None:
    now = T0 + dt.timedelta(days=1)
    assert is_stale(now - dt.timedelta(seconds=ago_s), now, TH) is stale
    assert switch(stale, False, Kind.STALE) == ([("open", Kind.STALE)] if stale else [])
    assert switch(stale, True, Kind.STALE) == ([] if stale else [("resolve", Kind.STALE)])


@pytest.mark.parametrize(("online", "since_s", "revoked", "due"), [
    (False, 900, False, True),
    (False, 899, False, False),
    (True, None, False, False),
    (None, None, False, False),     # never reported: nothing known
    (False, 5000, True, False),     # revoked: no longer monitored
    (False, None, False, False),
])
def test_hub_offline(online: bool | None, since_s: int | None, revoked: bool, due: bool) -> None:
    since = None if since_s is None else T0 - dt.timedelta(seconds=since_s)
    assert hub_offline_due(online, since, revoked, T0, 900) is due


def test_thresholds_defaults_overrides_and_problems() -> None:
    assert Thresholds.from_config(AlertsSection()) == Thresholds()
    th = TH.overridden({"glucose_low_mg_dl": 80, "heart_rate_sustain_samples": D(3),
                        "stale_after_s": None, "bogus": 1})
    assert th.glucose_low_mg_dl == D(80) and th.heart_rate_sustain_samples == 3
    assert th.stale_after_s == TH.stale_after_s
    assert TH.overridden({"glucose_low_mg_dl": 300}).problems() == [
        "glucose thresholds must be 0 < urgent low < low < high"]
    assert TH.problems() == []


def test_alerts_config_refuses_disordered_thresholds() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"clinic": {"id": "c"}, "db": {"dsn": "postgresql://u@127.0.0.1/c"},
               "hubs": {"ca_file": "/x"}, "broker": {"host": "b", "ca_file": "/x",
                                                     "client_cert": "/x", "client_key": "/x",
                                                     "pins": ["sha256/" + "A" * 43 + "="]},
               "alerts": {"glucose_low_mg_dl": 40}})
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith("alerts:")


def _state(glucose_at: dt.datetime | None = None) -> PatientState:
    return PatientState("patient-a", None, glucose_at, None, HrState())


def test_decide_applies_readings_in_time_order_and_ignores_older_ones() -> None:
    now = T0 + dt.timedelta(hours=1)
    obs = check_bundle(fhir.bundle_bytes([
        glucose("patient-a", T0 + dt.timedelta(minutes=2), mg_dl="120"),
        glucose("patient-a", T0 + dt.timedelta(minutes=1), mg_dl="50"),   # sent out of order
        glucose("patient-a", T0, mmol_l="3.5"),                           # 63 mg/dL
    ], hub_id="hub-1"), "patient-a")
    st, plan = decide(_state(), obs, set(), False, TH, now)
    assert [(a, k) for _, a, k in plan] == [
        ("open", Kind.GLUCOSE_LOW), ("resolve", Kind.GLUCOSE_LOW),
        ("open", Kind.GLUCOSE_URGENT_LOW), ("resolve", Kind.GLUCOSE_URGENT_LOW)]
    assert [t for t, _, _ in plan][1] == T0 + dt.timedelta(minutes=1)  # the reading's time
    assert st.glucose_at == T0 + dt.timedelta(minutes=2)
    # a backlog reading older than what the rules saw is stored but changes nothing
    late = check_bundle(fhir.bundle_bytes([glucose("patient-a", T0 - dt.timedelta(hours=1),
                                                   mg_dl="40")], hub_id="hub-1"), "patient-a")
    st2, plan2 = decide(st, late, set(), False, TH, now)
    assert plan2 == [] and st2.glucose_at == st.glucose_at


def test_decide_heart_rate_stale_and_hub() -> None:
    th = Thresholds(heart_rate_sustain_samples=2)
    now = T0 + dt.timedelta(hours=1)
    obs = check_bundle(fhir.bundle_bytes(
        [hr("patient-a", T0 + dt.timedelta(seconds=i), b) for i, b in enumerate([150, 150, 80])],
        hub_id="hub-1"), "patient-a")
    st, plan = decide(_state(), obs, {Kind.STALE, Kind.HUB_OFFLINE}, True, th, now)
    assert [(a, k) for _, a, k in plan] == [
        ("open", Kind.HEART_RATE_HIGH), ("resolve", Kind.STALE), ("resolve", Kind.HUB_OFFLINE)]
    assert (st.hr.side, st.hr.run, st.hr.ok_run) == (None, 0, 1)
    assert st.last_reading_at == T0 + dt.timedelta(seconds=2)
    # the alarm is read back from the unresolved alerts: one more good sample clears it
    more = check_bundle(fhir.bundle_bytes([hr("patient-a", T0 + dt.timedelta(seconds=3), 80)],
                                          hub_id="hub-1"), "patient-a")
    _, plan2 = decide(st, more, {Kind.HEART_RATE_HIGH}, False, th, now)
    assert [(a, k) for _, a, k in plan2] == [("resolve", Kind.HEART_RATE_HIGH)]


def test_only_a_recent_reading_resolves_stale() -> None:
    now = T0 + dt.timedelta(days=2)
    old = check_bundle(fhir.bundle_bytes([hr("patient-a", T0, 70)], hub_id="hub-1"),
                       "patient-a")  # a backlog from two days ago
    _, plan = decide(_state(), old, {Kind.STALE}, False, TH, now)
    assert plan == []
    fresh = check_bundle(fhir.bundle_bytes([hr("patient-a", now - dt.timedelta(minutes=5), 70)],
                                           hub_id="hub-1"), "patient-a")
    _, plan = decide(_state(), fresh, {Kind.STALE}, False, TH, now)
    assert plan == [(now, "resolve", Kind.STALE)]


def test_a_reading_from_the_future_counts_as_now() -> None:
    obs = check_bundle(fhir.bundle_bytes([hr("patient-a", T0 + dt.timedelta(days=30), 70)],
                                         hub_id="hub-1"), "patient-a")
    st, _ = decide(_state(), obs, set(), False, TH, T0)
    assert st.last_reading_at == T0


def test_rollup_arithmetic() -> None:
    t = T0 + dt.timedelta(seconds=59, microseconds=999)
    assert minute_of(t) == T0
    assert minute_of(t.astimezone(dt.timezone(dt.timedelta(hours=2)))) == T0
    got = aggregate([("p", T0, D(60)), ("p", T0 + dt.timedelta(seconds=30), D(90)),
                     ("p", T0 + dt.timedelta(seconds=61), D(70)), ("q", T0, D(100))])
    assert got[("p", T0)] == MinuteStats(2, D(60), D(90), D(150))
    assert got[("p", T0)].mean == D(75)
    assert got[("p", T0 + dt.timedelta(minutes=1))] == MinuteStats.of(D(70))
    assert got[("q", T0)].merged(MinuteStats.of(D(50))) == MinuteStats(2, D(50), D(100), D(150))
    s = MinuteStats(3, D(55), D(120), D(250))
    assert MinuteStats.from_json(s.to_json()) == s
    assert purge_cutoff(T0.replace(minute=42, second=7), 1) == T0 - dt.timedelta(days=1)
