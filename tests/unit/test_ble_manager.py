"""BleManager and its supervisors against the simulator's in-process bleak double, on a virtual
clock: heart-rate streaming, the allow-list, the connection limit, backoff, stalls, malformed
notifications, refresh, and what reaches the logs."""

from __future__ import annotations

import io
import itertools
import json
import logging

import pytest

from edge.ble.profiles import HEART_RATE_MEASUREMENT
from edge.log import configure_logging
from edge.readings import HeartRateReading
from edge.testing.ble import FakeSink
from tests.support.ble_rig import FAST, ble_rig

pytestmark = pytest.mark.timeout(60)


def _hr(sink: FakeSink) -> list[HeartRateReading]:
    return [r for r in sink.readings.values() if isinstance(r, HeartRateReading)]


async def test_hr_notifications_become_readings_with_rr_intervals() -> None:
    async with ble_rig("hr:1") as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 8)
        readings = _hr(rig.sink)
        assert all(r.patient == "p-1" and r.device_id == strap.address for r in readings)
        assert all(20 <= r.bpm <= 250 for r in readings)
        assert any(r.rr_intervals_s for r in readings), "RR intervals must be kept"
        assert len({r.id for r in readings}) == len(readings)
        state = rig.manager.device_states()[strap.address]
        assert state.state == "connected" and state.connects == 1
        assert state.last_seen is not None and state.readings >= 8
        assert rig.registry.touched and rig.registry.touched[0][0] == strap.address


async def test_unknown_device_is_never_connected_and_only_counted() -> None:
    async with ble_rig("hr:2,glucose:1") as rig:
        bound, stranger = rig.device("heart_rate", 1), rig.device("heart_rate", 2)
        meter = rig.device("glucose")
        rig.bind(bound, "p-1")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 3)
        await rig.manager.flush_unknown()
        assert rig.clients.addresses() == {bound.address}
        assert not stranger.connected and not meter.connected
        assert {r.device_id for r in rig.sink.readings.values()} == {bound.address}
        assert rig.sink.refused["unknown_device"] >= 1
        assert set(rig.manager.device_states()) == {bound.address}


async def test_concurrent_connection_attempts_are_limited() -> None:
    config = FAST.model_copy(update={"max_concurrent_connects": 2})
    async with ble_rig("hr:6", config=config) as rig:
        for i, dev in enumerate(rig.fleet):
            # every connect takes 2 s (virtual), so attempts overlap unless limited
            dev.inject_fault({"slow_response_seconds": 2.0})
            rig.bind(dev, f"p-{i}")
        await rig.start()
        await rig.sink.wait_for(lambda s: len({r.device_id for r in s.readings.values()}) == 6)
        assert len(rig.clients.addresses()) == 6
        assert rig.clients.max_active == 2


async def test_reconnect_backs_off_with_capped_jittered_delays() -> None:
    async with ble_rig("hr:1") as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        rig.clients.fail_next = 6
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 1)
        times = [t for _, t in rig.clients.attempts]
        assert len(times) >= 7
        delays = [b - a for a, b in itertools.pairwise(times[:7])]
        # base 1 s, factor 2, cap 8 s, jitter up to 50 % downwards
        for attempt, d in enumerate(delays):
            ceiling = min(8.0, 1.0 * 2**attempt)
            assert ceiling * 0.5 - 1e-6 <= d <= ceiling + 1e-6, (attempt, d)
        assert max(delays) <= 8.0 + 1e-6
        assert delays[-1] > delays[0]
        assert rig.manager.counters["error:connect:dbus:Failed"] == 6


async def test_link_drop_reconnects_after_backoff_on_manual_clock() -> None:
    async with ble_rig("hr:1", autojump=False) as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        await rig.start()
        await rig.wait_state(strap, lambda s: s.state == "connected")
        # the strap's 1 Hz measurements only come when the clock moves
        while not strap.notifying(HEART_RATE_MEASUREMENT):
            await rig.clock.advance(0)
        await rig.clock.advance(3)
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 2)
        assert strap.drop_link()
        state = await rig.wait_state(strap, lambda s: s.disconnects == 1)
        assert state.last_error == "stream:link_lost"
        assert len(rig.clients.attempts) == 1
        # a healthy session resets the backoff: the delay is in [0.5, 1.0] s
        await rig.clock.advance(0.49)
        assert len(rig.clients.attempts) == 1, "reconnected before the backoff delay"
        await rig.clock.advance(0.52)
        state = await rig.wait_state(strap, lambda s: s.connects == 2)
        assert state.state == "connected"
        assert len(rig.clients.attempts) == 2


async def test_stalled_session_is_detected_and_restarted() -> None:
    # The fleet is not started, so the strap never sends: a connected, silent session.
    async with ble_rig("hr:1", start_fleet=False) as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        await rig.start()
        state = await rig.wait_state(strap, lambda s: s.last_error == "stream:stalled")
        connected_at = rig.clients.attempts[0][1]
        assert rig.clock.monotonic() - connected_at >= FAST.stall_timeout_s
        state = await rig.wait_state(strap, lambda s: s.connects >= 2)
        assert state.disconnects >= 1
        assert rig.sink.readings == {}


async def test_malformed_notifications_are_counted_and_the_session_continues() -> None:
    async with ble_rig("hr:1") as rig:
        strap = rig.device("heart_rate")
        strap.inject_fault({"malformed": "truncated", "malformed_every": 3})
        rig.bind(strap, "p-1")
        await rig.start()
        await rig.sink.wait_for(
            lambda s: len(s.of_kind("heart_rate")) >= 6 and s.refused["malformed"] >= 3
        )
        state = rig.manager.device_states()[strap.address]
        assert state.connects == 1 and state.state == "connected"
        assert rig.manager.counters["malformed"] == rig.sink.refused["malformed"]


async def test_refresh_starts_and_stops_supervisors() -> None:
    async with ble_rig("hr:2") as rig:
        a, b = rig.device("heart_rate", 1), rig.device("heart_rate", 2)
        rig.bind(a, "p-a")
        await rig.start()
        await rig.sink.wait_for(lambda s: a.address in {r.device_id for r in s.readings.values()})
        rig.bind(b, "p-b")
        await rig.manager.refresh()
        await rig.sink.wait_for(lambda s: b.address in {r.device_id for r in s.readings.values()})
        rig.registry.unbind(a.address)
        await rig.manager.refresh()
        assert set(rig.manager.device_states()) == {b.address}
        assert not a.connected


async def test_info_logs_carry_no_address_patient_or_value() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        async with ble_rig("hr:1") as rig:
            strap = rig.device("heart_rate")
            strap.inject_fault({"malformed": "truncated", "malformed_every": 4})
            rig.bind(strap, "patient-xyz-42")
            await rig.start()
            await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 5)
            strap.drop_link()
            await rig.wait_state(strap, lambda s: s.connects >= 2)
    finally:
        logging.getLogger().handlers.clear()
    text = out.getvalue()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(e.get("event") == "ble.connected" for e in events)
    assert strap.address not in text
    assert strap.address.replace(":", "_") not in text
    assert "patient-xyz-42" not in text
    for e in events:
        for key in ("bpm", "value", "patient"):
            assert key not in e or e[key] == "[redacted]"


async def test_stale_sighting_is_forgotten_and_the_next_advertisement_awaited() -> None:
    async with ble_rig("hr:1") as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 2)
        strap.set_visible(False)  # drops the link and stops advertising
        state = await rig.wait_state(strap, lambda s: (s.last_error or "").startswith("connect:"))
        attempts = len(rig.clients.attempts)
        # no advertisement, no further connection attempts however long we wait
        await rig.clock.advance(120)
        assert len(rig.clients.attempts) == attempts
        assert rig.supervisor(strap).state.state in ("idle", state.state)
        strap.set_visible(True)
        state = await rig.wait_state(strap, lambda s: s.state == "connected" and s.connects == 2)
        n = len(rig.sink.of_kind("heart_rate"))
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) > n)
