"""``edge pair --adapter``: which adapter bonds, and the one-line refusal of an unconfigured
one."""

from __future__ import annotations

import pytest

from edge.cli.ble_cmd import pairing_adapter
from edge.config import BleConfig
from edge.errors import UsageError

BLE = BleConfig(adapters=("hci0", "hci1"))


def test_the_first_configured_adapter_without_adapter() -> None:
    assert pairing_adapter(BLE, None) == "hci0"
    assert pairing_adapter(BleConfig(adapters=("hci1", "hci0")), None) == "hci1"


def test_a_configured_adapter_is_used() -> None:
    assert pairing_adapter(BLE, "hci1") == "hci1"


def test_an_unconfigured_adapter_is_a_usage_error_naming_the_configured_ones() -> None:
    with pytest.raises(UsageError) as info:
        pairing_adapter(BLE, "hci2")
    assert info.value.exit_code == 2
    text = str(info.value)
    assert "\n" not in text and "hci2" in text and "hci0, hci1" in text
