"""The fuzz targets, by name. Nothing is imported until a target is loaded, so the atheris
worker can instrument the code under test as it is first imported."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``module.func(data: bytes) -> None``."""

    name: str
    module: str
    func: str
    #: what it exercises and which exceptions it lets through (for ``--list``)
    doc: str
    #: the longest input libFuzzer generates
    max_len: int = 256
    #: share of the run's time (decoders with a one-octet input need little)
    weight: float = 1.0
    #: module prefixes atheris instruments for coverage
    instrument: tuple[str, ...] = ("edge",)

    def load(self) -> Callable[[bytes], None]:
        fn: Callable[[bytes], None] = getattr(importlib.import_module(self.module), self.func)
        return fn


_G = "fuzz.targets.gatt"
_MALFORMED = "MalformedPayload only"

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("sfloat", _G, "sfloat",
           "decode_sfloat of any word, encode_sfloat of any Decimal (ValueError only); "
           "value round trips", 64, 0.5),
    Target("heart_rate_measurement", _G, "heart_rate_measurement",
           f"decode_heart_rate_measurement, {_MALFORMED}; decode(encode(m)) == m"),
    Target("body_sensor_location", _G, "body_sensor_location",
           f"decode_body_sensor_location, {_MALFORMED}", 16, 0.25),
    Target("heart_rate_control_point", _G, "heart_rate_control_point",
           f"decode_heart_rate_control_point, {_MALFORMED}", 16, 0.25),
    Target("glucose_measurement", _G, "glucose_measurement",
           f"decode_glucose_measurement and its derived values, {_MALFORMED}; round trip"),
    Target("glucose_context", _G, "glucose_context",
           f"decode_glucose_context, {_MALFORMED}; round trip"),
    Target("glucose_feature", _G, "glucose_feature",
           f"decode_glucose_feature, {_MALFORMED}; round trip", 16, 0.25),
    Target("current_time", _G, "current_time",
           f"decode_current_time and exact_time, {_MALFORMED}; round trip", 64, 0.5),
    Target("racp", _G, "racp", f"decode_racp (every message), {_MALFORMED}; round trip"),
    Target("battery_level", _G, "battery_level",
           f"decode_battery_level, {_MALFORMED}", 16, 0.25),
    Target("device_information", _G, "device_information",
           f"decode_utf8_string, {_MALFORMED}", 256, 0.25),
    Target("racp_client", "fuzz.targets.racp_client", "racp_client",
           "RacpSync driven by any event sequence: never raises, always finishes, "
           "result consistent", 4096, 2.0),
    Target("to_reading", "fuzz.targets.pipeline", "to_reading",
           "decode -> to_reading -> plausibility -> FHIR Bundle: MalformedPayload / "
           "Implausible only; valid JSON; reading JSON round trip", 512, 1.5),
    Target("control_protocol", "fuzz.targets.control", "control_protocol",
           "parse_request and ControlServer.dispatch with the real handlers (no socket): "
           "BadRequest only, never an 'internal' answer", 5000, 2.0),
    Target("envelope", "fuzz.targets.envelope", "envelope",
           "open_envelope (+ verify_signer) of arbitrary and half-valid tokens: EnvelopeError "
           "only; a sealed payload opens to itself", 8192, 2.0, ("edge", "joserfc")),
)}
