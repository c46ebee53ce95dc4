"""The soak's pure parts: the fault schedule (soak.schedule) and the accounting of readings,
RSS and file descriptors (soak.accounting)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from soak.accounting import account, intake_accepted, resources, slope, verdict
from soak.schedule import FAULT_KINDS, MALFORMED_FOR, Action, Rates, build_schedule, fault_counts

FLEET = {**{f"SIM-HR-{i}": "heart_rate" for i in range(1, 36)},
         **{f"SIM-GLU-{i}": "glucose" for i in range(1, 16)}}
SMALL = {"SIM-HR-1": "heart_rate", "SIM-HR-2": "heart_rate", "SIM-GLU-1": "glucose"}


# --- the schedule -----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a = build_schedule(3, 1800, FLEET)
    assert a == build_schedule(3, 1800, dict(reversed(list(FLEET.items()))))
    assert a != build_schedule(4, 1800, FLEET)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("duration", [30.0, 90.0, 1800.0])
def test_actions_are_sorted_and_inside_the_quiet_bounds(seed: int, duration: float) -> None:
    rates = Rates()
    actions = build_schedule(seed, duration, FLEET, rates)
    times = [a.at_s for a in actions]
    assert times == sorted(times)
    assert all(rates.quiet_start_s <= t <= duration - rates.quiet_end_s for t in times)
    assert all(a.device in FLEET for a in actions if a.op != "restart_broker")


@pytest.mark.parametrize("seed", range(30))
def test_a_short_soak_still_gets_one_fault_of_each_kind(seed: int) -> None:
    counts = fault_counts(build_schedule(seed, 75, SMALL))
    assert set(counts) == set(FAULT_KINDS)
    assert all(n >= 1 for n in counts.values()), counts


def test_the_rates_set_how_many_faults_a_long_soak_gets() -> None:
    counts = fault_counts(build_schedule(1, 1800, FLEET, Rates()))
    # Poisson arrivals: means 90 drops, 6 restarts (fewer with the minimum gap), 30 windows
    assert 60 <= counts["link_drop"] <= 130
    assert 2 <= counts["broker_restart"] <= 12
    assert 15 <= counts["malformed"] <= 45
    busier = fault_counts(build_schedule(1, 1800, FLEET, Rates(link_drop_every_s=5)))
    assert busier["link_drop"] > 2 * counts["link_drop"]


@pytest.mark.parametrize("seed", range(20))
def test_broker_restarts_keep_their_minimum_gap(seed: int) -> None:
    rates = Rates(broker_restart_every_s=30, broker_min_gap_s=45)
    restarts = [a.at_s for a in build_schedule(seed, 1800, FLEET, rates)
                if a.op == "restart_broker"]
    assert len(restarts) >= 2
    assert all(b - a >= 45 for a, b in itertools.pairwise(restarts))


@pytest.mark.parametrize("seed", range(20))
def test_malformed_windows_close_never_overlap_and_go_to_straps(seed: int) -> None:
    rates = Rates(malformed_every_s=5, malformed_window_s=(5, 40))
    actions = build_schedule(seed, 600, FLEET, rates)
    open_: dict[str, Action] = {}
    windows = 0
    for a in actions:
        if a.op == "malformed_on":
            assert a.device not in open_, f"two windows at once on {a.device}"
            assert FLEET[a.device or ""] == "heart_rate"
            assert a.malformed in MALFORMED_FOR["heart_rate"]
            assert rates.malformed_nth[0] <= a.nth <= rates.malformed_nth[1]
            open_[a.device or ""] = a
            windows += 1
        elif a.op == "malformed_off":
            on = open_.pop(a.device or "")
            assert on.at_s <= a.at_s
    assert not open_, "a window was left open at the end"
    assert windows >= 10


def test_a_fleet_of_meters_gets_meter_malformations() -> None:
    meters = {"SIM-GLU-1": "glucose", "SIM-GLU-2": "glucose"}
    ons = [a for a in build_schedule(2, 600, meters) if a.op == "malformed_on"]
    assert ons
    assert {a.malformed for a in ons} <= set(MALFORMED_FOR["glucose"])


def test_too_short_for_a_window_means_no_faults() -> None:
    assert build_schedule(1, 10, SMALL, Rates(quiet_start_s=5, quiet_end_s=10)) == ()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="duration"):
        build_schedule(1, 0, SMALL)
    with pytest.raises(ValueError, match="device"):
        build_schedule(1, 60, {})
    with pytest.raises(ValueError, match="kinds"):
        build_schedule(1, 60, {"X": "thermometer"})
    with pytest.raises(ValueError):
        Rates(link_drop_every_s=0)
    with pytest.raises(ValueError):
        Rates(malformed_window_s=(10, 5))
    with pytest.raises(ValueError):
        Rates(malformed_nth=(0, 2))


def test_actions_describe_themselves_and_count_by_kind() -> None:
    acts = [Action(1, "drop", "SIM-HR-1"), Action(2, "restart_broker"),
            Action(3, "malformed_on", "SIM-HR-1", "truncated", 2),
            Action(9, "malformed_off", "SIM-HR-1")]
    assert [a.describe() for a in acts] == [
        "link drop SIM-HR-1", "broker restart", "malformed on SIM-HR-1 (truncated, every 2)",
        "malformed off SIM-HR-1"]
    assert fault_counts(acts) == {"link_drop": 1, "broker_restart": 1, "malformed": 1}


# --- the accounting ---------------------------------------------------------------------------


def test_everything_accepted_and_received_is_nothing_lost() -> None:
    acc = account([("a", True), ("b", True)], Counter({"a": 1, "b": 2}), 2)
    assert (acc.accepted, acc.seen, acc.repeats, acc.lost, acc.pending) == (2, 2, 1, 0, 0)


def test_a_reading_received_though_its_puback_was_lost_is_delivered() -> None:
    acc = account([("a", False)], Counter({"a": 1}), 1)
    assert acc.lost == 0
    assert acc.pending == 1


def test_unreceived_readings_are_lost_whether_pending_or_acknowledged() -> None:
    acc = account([("a", False), ("b", True), ("c", True)], Counter({"c": 1}), 3)
    assert (acc.unseen_pending, acc.unseen_acked, acc.lost) == (1, 1, 2)


def test_readings_intake_committed_but_missing_from_the_vault_are_lost() -> None:
    acc = account([("a", True)], Counter({"a": 1}), 3)
    assert acc.missing_from_vault == 2
    assert acc.lost == 2


def test_identifiers_the_vault_never_held_are_reported() -> None:
    acc = account([("a", True)], Counter({"a": 1, "zzz": 1}), 1)
    assert acc.unknown_seen == 1
    assert acc.lost == 0
    res = resources([(0, 50, 20)])
    assert any("vault does not hold" in p for p in verdict(acc, res, fd_growth_limit=8))


def test_intake_accepted_is_received_minus_duplicates() -> None:
    assert intake_accepted({"received": {"heart_rate": 10, "glucose": 5}, "duplicates": 3}) == 12
    assert intake_accepted({}) == 0


def test_slope_and_resources() -> None:
    assert slope([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2)
    assert slope([5], [1]) == 0
    assert slope([1, 1], [1, 3]) == 0
    with pytest.raises(ValueError):
        slope([1, 2], [1])
    res = resources([(0, 50.0, 20), (1800, 51.0, 30), (3600, 52.0, 24)])
    assert (res.rss_start, res.rss_max, res.rss_end) == (50.0, 52.0, 52.0)
    assert res.rss_slope_mb_h == pytest.approx(2.0)
    assert res.rss_late_slope_mb_h == pytest.approx(2.0)
    # caches filling early, flat later: the late slope says no leak, the whole one would not
    filling = resources([(0, 70.0, 1), (600, 74.0, 1), (1200, 75.0, 1), (1800, 75.0, 1),
                         (2400, 75.0, 1)])
    assert filling.rss_late_slope_mb_h == pytest.approx(0.0)
    assert filling.rss_slope_mb_h > 4
    assert (res.fds_start, res.fds_max, res.fds_end, res.fd_growth) == (20, 30, 24, 4)
    with pytest.raises(ValueError):
        resources([])


def test_the_verdict_names_each_failure() -> None:
    good = account([("a", True)], Counter({"a": 1}), 1)
    calm = resources([(0, 50, 20), (60, 50, 21)])
    assert verdict(good, calm, fd_growth_limit=4) == []
    leaky = resources([(0, 50, 20), (60, 50, 40)])
    assert any("file descriptors grew by 20" in p for p in verdict(good, leaky, fd_growth_limit=4))
    lossy = account([("a", True), ("b", False)], Counter({"a": 1}), 2)
    assert any("1 readings lost" in p for p in verdict(lossy, calm, fd_growth_limit=4))
    empty = account([], Counter(), 0)
    assert any("no reading" in p for p in verdict(empty, calm, fd_growth_limit=4))
    died = verdict(good, calm, fd_growth_limit=4, daemon_problem="the daemon died")
    assert died == ["the daemon died"]
