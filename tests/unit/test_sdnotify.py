"""sd_notify addresses and watchdog interval, the STATUS line, and the health registry."""

from __future__ import annotations

import os

from edge.daemon.health import Health, one_line
from edge.daemon.sdnotify import SdNotifier, notify_socket_address, watchdog_interval_s
from edge.testing import ManualClock


def test_no_socket_is_a_no_op() -> None:
    n = SdNotifier({})
    assert not n.enabled
    assert n.notify("READY=1") is False


def test_address_parsing() -> None:
    assert notify_socket_address("@x") == "\0x"
    assert notify_socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_socket_address("vsock:2:1234") is None
    assert notify_socket_address(None) is None


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    own = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(own) == 5.0


def test_status_is_one_line() -> None:
    assert one_line("a\nb\tc  d") == "a b c d"
    assert len(one_line("x" * 1000)) == 200


def test_health_goes_stale_without_beats() -> None:
    clock = ManualClock()
    h = Health(clock)
    h.register("ble", stale_after_s=10)
    h.register("uplink", stale_after_s=10)
    assert h.healthy()
    clock.step(6)
    h.beat("ble")
    clock.step(6)
    assert h.stale() == ["uplink"]
    h.beat("uplink")
    assert h.healthy()
    h.unregister("uplink")
    clock.step(11)
    assert h.stale() == ["ble"]
    assert h.snapshot()["ble"]["age_s"] == 17.0
