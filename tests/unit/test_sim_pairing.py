"""The pure pairing model and the device's side of a pairing."""

from __future__ import annotations

import pytest

from firmware_sim.fleet import build_fleet
from firmware_sim.model.contract import PeripheralError, SimErrorCode
from firmware_sim.model.pairing import Association, PairingMethod, association

JW, PK, NC = PairingMethod.JUST_WORKS, PairingMethod.PASSKEY, PairingMethod.NUMERIC_COMPARISON


@pytest.mark.parametrize(
    ("method", "capability", "expected"),
    [
        (JW, None, Association.NONE),
        (JW, "KeyboardDisplay", Association.NONE),
        (PK, "KeyboardDisplay", Association.ENTER_PASSKEY),
        (PK, "KeyboardOnly", Association.ENTER_PASSKEY),
        (PK, "DisplayYesNo", Association.IMPOSSIBLE),
        (PK, "NoInputNoOutput", Association.IMPOSSIBLE),
        (PK, None, Association.IMPOSSIBLE),
        (NC, "DisplayYesNo", Association.CONFIRM),
        (NC, "KeyboardDisplay", Association.CONFIRM),
        (NC, "KeyboardOnly", Association.ENTER_PASSKEY),
        (NC, "DisplayOnly", Association.IMPOSSIBLE),
        (NC, None, Association.IMPOSSIBLE),
    ],
)
def test_association_follows_the_io_capabilities(
    method: PairingMethod, capability: str | None, expected: Association
) -> None:
    assert association(method, capability) is expected


async def test_passkey_device_bonds_only_with_its_passkey() -> None:
    meter = build_fleet(devices="glucose:1:passkey=000042", seed=1).devices[0]
    meter.pairing_challenge()
    with pytest.raises(PeripheralError) as info:
        await meter.pair(passkey=43)
    assert info.value.code is SimErrorCode.AUTHENTICATION_FAILED
    assert not meter.paired
    with pytest.raises(PeripheralError):
        await meter.pair()  # no answer at all (no agent)
    await meter.pair(passkey=42)
    assert meter.paired


async def test_numeric_comparison_needs_the_shown_code_confirmed_or_typed() -> None:
    strap = build_fleet(devices="hr:1:pairing=numeric_comparison", seed=1).devices[0]
    with pytest.raises(PeripheralError):
        await strap.pair(confirmed=True)  # nothing was shown: no pairing under way
    challenge = strap.pairing_challenge()
    assert challenge.code is not None and strap.displayed_code == challenge.code
    wrong = (challenge.code + 1) % 1_000_000
    with pytest.raises(PeripheralError):
        await strap.pair(passkey=wrong)
    assert strap.displayed_code is None
    strap.pairing_challenge()
    code = strap.displayed_code
    await strap.pair(passkey=code)
    assert strap.paired


async def test_the_device_can_cancel_and_can_forget_its_bond() -> None:
    strap = build_fleet(devices="hr:1", seed=1).devices[0]
    strap.inject_fault({"pairing_refused": "canceled"})
    assert strap.pairing_challenge().device_cancels
    with pytest.raises(PeripheralError) as info:
        await strap.pair()
    assert info.value.code is SimErrorCode.AUTHENTICATION_CANCELED
    strap.clear_faults()
    await strap.pair()
    assert strap.connected and strap.paired
    assert strap.forget_bond() is True
    assert not strap.paired and not strap.connected
    assert strap.forget_bond() is False
