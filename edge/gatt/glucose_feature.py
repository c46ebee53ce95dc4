"""Glucose Feature 0x2A51: which annunciations a meter supports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edge.gatt._reader import Reader

GF = "glucose_feature"


class GlucoseFeatureBit(StrEnum):
    """Glucose Feature bits 0-10, in bit order."""

    LOW_BATTERY_DETECTION = "low_battery_detection"
    SENSOR_MALFUNCTION_DETECTION = "sensor_malfunction_detection"
    SENSOR_SAMPLE_SIZE = "sensor_sample_size"
    SENSOR_STRIP_INSERTION_ERROR_DETECTION = "sensor_strip_insertion_error_detection"
    SENSOR_STRIP_TYPE_ERROR_DETECTION = "sensor_strip_type_error_detection"
    SENSOR_RESULT_HIGH_LOW_DETECTION = "sensor_result_high_low_detection"
    SENSOR_TEMPERATURE_HIGH_LOW_DETECTION = "sensor_temperature_high_low_detection"
    SENSOR_READ_INTERRUPT_DETECTION = "sensor_read_interrupt_detection"
    GENERAL_DEVICE_FAULT = "general_device_fault"
    TIME_FAULT = "time_fault"
    MULTIPLE_BOND_SUPPORTED = "multiple_bond_supported"


@dataclass(frozen=True, slots=True)
class GlucoseFeature:
    """A decoded Glucose Feature value."""

    bits: int

    @property
    def features(self) -> tuple[GlucoseFeatureBit, ...]:
        """Supported features in bit order (reserved bits 11-15 ignored)."""
        return tuple(f for i, f in enumerate(GlucoseFeatureBit) if self.bits >> i & 1)

    def supports(self, feature: GlucoseFeatureBit) -> bool:
        """Whether ``feature`` is flagged."""
        return feature in self.features


def decode_glucose_feature(data: bytes | bytearray | memoryview) -> GlucoseFeature:
    """Decode 0x2A51 (uint16)."""
    r = Reader(GF, data)
    bits = r.u16("features")
    r.finish()
    return GlucoseFeature(bits)


def encode_glucose_feature(features: tuple[GlucoseFeatureBit, ...]) -> bytes:
    """The 0x2A51 value with ``features`` set."""
    order = list(GlucoseFeatureBit)
    return sum(1 << order.index(f) for f in set(features)).to_bytes(2, "little")
