"""The pure adapter policy (wedge decisions with injected time, placement), the snapshot of
BlueZ's objects, and the ``[ble] adapters`` / ``adapter`` keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.ble.adapter_health import AdapterHealth, PowerCycle, WedgePolicy, place
from edge.ble.adapters import snapshot_of
from edge.config import BleConfig

POLICY = WedgePolicy(scan_failures=3, silent_windows=2, min_interval_s=600.0)


def test_repeated_in_progress_leads_to_one_power_cycle_per_interval() -> None:
    h = AdapterHealth("hci0", POLICY)
    assert h.scan_failed("dbus:InProgress", 0.0) is None
    assert h.scan_failed("dbus:NotReady", 1.0) is None
    decision = h.scan_failed("dbus:InProgress", 2.0)
    assert decision == PowerCycle("hci0", "scan_failures")
    h.started(decision, 2.0)
    h.finished(ok=True)
    for t in (3.0, 4.0, 5.0, 6.0):  # still failing: not again within the interval
        assert h.scan_failed("dbus:InProgress", t) is None
    assert h.suspected == "scan_failures"
    assert h.scan_failed("dbus:InProgress", 602.0) == PowerCycle("hci0", "scan_failures")
    assert h.as_dict()["power_cycles"] == 1


def test_other_scan_errors_and_a_good_window_reset_the_count() -> None:
    h = AdapterHealth("hci0", POLICY)
    h.scan_failed("dbus:InProgress", 0.0)
    h.scan_failed("dbus:InProgress", 1.0)
    assert h.scan_failed("dbus:AccessDenied", 2.0) is None
    assert h.scan_failed("dbus:InProgress", 3.0) is None
    assert h.window_ended(heard=0, wanted=False, now=4.0) is None
    assert h.suspected is None


def test_silent_windows_count_only_while_devices_are_missing() -> None:
    h = AdapterHealth("hci0", POLICY)
    assert h.window_ended(0, wanted=False, now=0.0) is None
    assert h.window_ended(0, wanted=False, now=1.0) is None
    assert h.window_ended(0, wanted=True, now=2.0) is None
    assert h.window_ended(5, wanted=True, now=3.0) is None  # heard something: not wedged
    assert h.window_ended(0, wanted=True, now=4.0) is None
    assert h.window_ended(0, wanted=True, now=5.0) == PowerCycle("hci0", "silent")


def test_placement_is_sticky_prefers_bonds_then_the_least_loaded() -> None:
    present = ["hci0", "hci1"]
    assert place(None, present, {}) == "hci0"
    assert place(None, present, {"hci0": 1}) == "hci1"
    assert place("hci0", present, {"hci0": 5}) == "hci0"  # a live placement stays
    assert place("hci2", present, {"hci0": 1, "hci1": 1}) == "hci0"  # its adapter went
    assert place(None, present, {"hci1": 3}, bonded={"hci1"}) == "hci1"
    assert place(None, present, {"hci0": 3}, bonded={"hci7"}) == "hci1"
    assert place(None, [], {}) is None


def test_snapshot_of_managed_objects() -> None:
    snap = snapshot_of({
        "/org/bluez": {"org.bluez.AgentManager1": {}},
        "/org/bluez/hci0": {"org.bluez.Adapter1": {"Powered": True}},
        "/org/bluez/hci1": {"org.bluez.Adapter1": {"Powered": True}},
        "/org/bluez/hci1/dev_AA_BB_CC_DD_EE_01": {"org.bluez.Device1": {"Paired": True}},
        "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_02": {"org.bluez.Device1": {"Paired": False}},
        "/org/bluez/hci1/dev_AA_BB_CC_DD_EE_01/service0001": {"org.bluez.GattService1": {}},
    })
    assert snap.present == {"hci0", "hci1"}
    assert snap.bonded_on("aa:bb:cc:dd:ee:01") == {"hci1"}
    assert snap.bonded_on("AA:BB:CC:DD:EE:02") == frozenset()


def test_adapters_key_and_the_older_adapter_key() -> None:
    assert BleConfig().adapters == ("hci0",)
    assert BleConfig.model_validate({"adapter": "hci1"}).adapters == ("hci1",)
    both = BleConfig.model_validate({"adapters": ["hci1", "hci0"]})
    assert (both.adapters, both.adapter) == (("hci1", "hci0"), "hci1")
    assert "adapter" not in both.model_dump()
    bads: list[dict[str, object]] = [{"adapter": "hci0", "adapters": ["hci0"]}, {"adapters": []},
                                      {"adapters": ["usb0"]}, {"adapters": ["hci0", "hci0"]}]
    for bad in bads:
        with pytest.raises(ValidationError):
            BleConfig.model_validate(bad)
