"""A device that lost its bond goes to ``needs_pairing``: no reconnect storm, one audit per
episode (the device hash only), a rare retry, and at once after the allow-list is re-read (as
``edge pair`` does). Against the in-process bleak double on a virtual clock."""

from __future__ import annotations

import pytest
from bleak.exc import BleakDBusError, BleakGATTProtocolError

from edge.ble.errors import BleOperationError, is_bond_lost, reason_of
from edge.ble.manager import NEEDS_PAIRING_ACTION
from edge.ble.state import NEEDS_PAIRING
from edge.log import REDACTOR
from tests.support.ble_rig import FAST, ble_rig

pytestmark = pytest.mark.timeout(60)

KEY_MISSING = BleakDBusError("org.bluez.Error.Failed", ["le-connection-key-missing"])
RETRY_S = 600.0
CONFIG = FAST.model_copy(update={"needs_pairing_retry_s": RETRY_S})


def test_which_errors_mean_the_bond_is_lost() -> None:
    assert reason_of(KEY_MISSING) == "key_missing"
    lost: list[Exception] = [
        KEY_MISSING,
        BleakDBusError("org.bluez.Error.AuthenticationFailed", []),
        BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"]),
        BleakDBusError("org.bluez.Error.Failed", ["Operation failed with ATT error: 0x05"]),
        BleakGATTProtocolError(0x0F),
    ]
    for exc in lost:
        assert is_bond_lost(exc), exc
        wrapped = BleOperationError("read", reason_of(exc))
        wrapped.__cause__ = exc
        assert is_bond_lost(wrapped), exc
    kept: list[Exception] = [
        BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"]),
        BleakDBusError("org.bluez.Error.InProgress", []),
        BleakDBusError("org.bluez.Error.NotPermitted", ["Read not permitted"]),
        BleakDBusError("org.bluez.Error.ConnectionAttemptFailed", []),
        BleakGATTProtocolError(0x80),
        TimeoutError(),
    ]
    for exc in kept:
        assert not is_bond_lost(exc), exc
    assert is_bond_lost(BleOperationError("connect", "key_missing"))


async def test_a_lost_bond_stops_the_reconnects_and_is_audited_once() -> None:
    async with ble_rig("hr:1", config=CONFIG) as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        rig.clients.fail_with = KEY_MISSING
        await rig.start()
        state = await rig.wait_state(strap, lambda s: s.state == NEEDS_PAIRING)
        assert state.last_error == "connect:key_missing"
        first = rig.clients.attempts[0][1]
        # the clock jumps ahead whenever everything waits: the next attempts come only
        # every needs_pairing_retry_s (virtual), never in a storm
        sup = rig.supervisor(strap)
        await rig.wait_state(strap, lambda _s: len(rig.clients.attempts) >= 3)
        times = [t for _a, t in rig.clients.attempts[:3]]
        assert times[1] - first >= RETRY_S and times[2] - times[1] >= RETRY_S
        assert rig.manager.device_states()[strap.address].state == NEEDS_PAIRING
        assert rig.audits == [(NEEDS_PAIRING_ACTION, REDACTOR.device_hash(strap.address))]
        assert strap.address not in repr(rig.audits)
        assert rig.manager.counters[NEEDS_PAIRING] == 1
        assert sup.bond.episodes == 1
        fix = rig.manager.device_states()[strap.address].as_dict()["fix"]
        assert f"edge pair {strap.address} --patient" in str(fix)

        # paired again: the daemon re-reads the allow-list and the device is tried at once
        rig.clients.fail_with = None
        await rig.manager.refresh()
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 2)
        state = await rig.wait_state(strap, lambda s: s.state == "connected")
        assert "fix" not in state.as_dict()
        assert len(rig.audits) == 1


async def test_an_authentication_error_on_an_encrypted_read_is_a_lost_bond_too() -> None:
    async with ble_rig("glucose:1", config=CONFIG) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-1")
        rig.clients.read_fail_with = BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"])
        await rig.start()
        state = await rig.wait_state(meter, lambda s: s.state == NEEDS_PAIRING)
        assert state.last_error == "read_time:dbus:NotPermitted"
        assert len(rig.audits) == 1
        assert not rig.sink.readings


@pytest.mark.parametrize(("error", "lost"), [
    # e.g. a passkey meter placed on an adapter that holds no bond with it: no agent can
    # answer there, so BlueZ fails the bonding; retrying at the backoff would be a storm
    ("org.bluez.Error.AuthenticationFailed", True),
    # radio trouble while bonding: not the bond, so the usual backoff
    ("org.bluez.Error.ConnectionAttemptFailed", False),
])
async def test_a_meter_that_cannot_bond_needs_pairing_only_for_an_authentication_failure(
        error: str, lost: bool) -> None:
    async with ble_rig("glucose:1", config=CONFIG) as rig:
        meter = rig.meter()
        rig.bind(meter, "p-1")
        rig.clients.pair_fail_with = BleakDBusError(error, [])
        await rig.start()
        if lost:
            state = await rig.wait_state(meter, lambda s: s.state == NEEDS_PAIRING)
            assert len(rig.audits) == 1
        else:
            await rig.wait_state(meter, lambda _s: len(rig.clients.attempts) >= 3)
            state = rig.manager.device_states()[meter.address]
            assert state.state != NEEDS_PAIRING
            assert rig.manager.counters[NEEDS_PAIRING] == 0
            assert not rig.audits
        assert state.last_error == "pairing"
        assert not rig.sink.readings


async def test_other_connect_failures_keep_backing_off_as_before() -> None:
    async with ble_rig("hr:1", config=CONFIG) as rig:
        strap = rig.device("heart_rate")
        rig.bind(strap, "p-1")
        rig.clients.fail_next = 3  # le-connection-abort-by-local: radio trouble, not the bond
        await rig.start()
        await rig.sink.wait_for(lambda s: len(s.of_kind("heart_rate")) >= 1)
        assert len(rig.clients.attempts) == 4
        assert not rig.audits
        assert rig.manager.counters[NEEDS_PAIRING] == 0
