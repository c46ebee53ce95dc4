"""Scenarios: a fleet written down as TOML. Packaged ones live in ``firmware_sim/scenarios/``
(``default``, ``faults``, ``fleet50``); ``load_scenario("faults")`` finds them by name.

Schema (every key is checked; an unknown key is an error naming where it is)::

    seed = 7                      # optional int: the fleet's seed (addresses, values, faults)
    description = "…"             # optional text

    [[devices]]                   # one table per device, or per group with ``count``
    kind = "hr"                   # required: "hr" | "heart_rate" | "glucose"
    count = 2                     # optional, default 1: that many identical devices
    name = "SIM-HR-1"             # optional (only with count = 1); default SIM-HR-<n> / SIM-GLU-<n>
    address = "C4:11:22:33:44:55" # optional (only with count = 1); default seed-stable
    address_type = "random"       # optional: "public" | "random" (default per kind)
    # ...device options, see below...
    [devices.faults]              # optional fault plan, keys as in firmware_sim.faults
    connect_failures = 2

    [[adapters]]                  # optional: the fake BlueZ's adapters (default: hci0 only)
    name = "hci1"                 # required: hciN; hci0 always exists, list it to change it
    address = "00:1A:7D:DA:71:14" # optional (only for adapters not yet on the bus)
    wedged = "in_progress"        # optional: "in_progress" | "silent" until power-cycled

Heart-rate strap options: ``resting_bpm`` (int), ``hr_format`` ("uint8" | "uint16" |
"varying"), ``energy`` (bool), ``contact`` ("comes_and_goes" | "always" | "unsupported"),
``body_location`` (int 0-6), ``battery`` (int %), ``mtu`` (int >= 23), ``rssi`` (int dBm),
``serial`` (text).

Every device: ``pairing`` ("just_works" (default) | "passkey" | "numeric_comparison": what the
device demands of the host's pairing agent, see :mod:`firmware_sim.model.pairing`) and
``passkey`` (6 digits, for ``pairing = "passkey"``: the passkey printed on / shown by the device;
drawn from the seed when omitted; a passkey alone implies ``pairing = "passkey"``).

Glucose meter options: ``history`` (int records, default 24), ``first_sequence`` (int 0-65535;
put it near 65535 to make the store wrap), ``unit`` ("mg/dL" | "mmol/L"), ``context`` (bool:
serve 0x2A34 context records), ``hi_lo`` (bool: a HI and a LO record in the history),
``control_solution`` (bool: a control-solution record), ``clock_skew_minutes`` (int: how far the
meter clock is off; default a seeded few minutes), ``utc_offset_minutes`` (int: the meter's
zone), ``time_offset`` (int minutes written in each record, or omit), ``new_record_every``
(seconds, 0 = never), ``record_interval`` (seconds between RACP notifications),
``delete_supported`` (bool), ``features`` (int, Glucose Feature bits), ``battery``, ``rssi``,
``serial``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from firmware_sim.errors import SimError
from firmware_sim.faults import FaultPlan, FaultSpecError
from firmware_sim.fleet import Fleet, normalize_kind, pairing_options


class ScenarioError(SimError, ValueError):
    """A scenario file is missing, not TOML, or does not match the schema."""


_NUM = (int, float)
OPTION_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "heart_rate": {
        "resting_bpm": (int,),
        "hr_format": (str,),
        "energy": (bool,),
        "contact": (str,),
        "body_location": (int,),
        "battery": (int,),
        "mtu": (int,),
        "rssi": (int,),
        "serial": (str,),
        "address_type": (str,),
        "pairing": (str,),
        "passkey": (int, str),
    },
    "glucose": {
        "history": (int,),
        "first_sequence": (int,),
        "unit": (str,),
        "context": (bool,),
        "hi_lo": (bool,),
        "control_solution": (bool,),
        "clock_skew_minutes": (int,),
        "utc_offset_minutes": (int,),
        "time_offset": (int,),
        "new_record_every": _NUM,
        "record_interval": _NUM,
        "delete_supported": (bool,),
        "features": (int,),
        "battery": (int,),
        "rssi": (int,),
        "serial": (str,),
        "address_type": (str,),
        "pairing": (str,),
        "passkey": (int, str),
    },
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "hr_format": ("uint8", "uint16", "varying"),
    "contact": ("comes_and_goes", "always", "unsupported"),
    "unit": ("mg/dL", "mmol/L"),
    "address_type": ("public", "random"),
}
_RANGES: dict[str, tuple[float, float]] = {
    "resting_bpm": (30, 220),
    "body_location": (0, 6),
    "battery": (0, 100),
    "mtu": (23, 517),
    "rssi": (-127, 20),
    "history": (0, 5000),
    "first_sequence": (0, 0xFFFF),
    "new_record_every": (0, 86400),
    "record_interval": (0, 60),
    "features": (0, 0xFFFF),
}
_ENTRY_KEYS = {"kind", "count", "name", "address", "faults"}
_TOP_KEYS = {"seed", "description", "devices", "adapters"}
_ADAPTER_KEYS = {"name", "address", "wedged"}


@dataclass(frozen=True)
class AdapterEntry:
    """An adapter of the fake BlueZ: ``hciN``, its address (derived when omitted) and
    whether its discovery starts wedged (``in_progress`` | ``silent``)."""

    name: str
    address: str | None = None
    wedged: str | None = None


@dataclass(frozen=True)
class DeviceEntry:
    kind: str
    count: int = 1
    name: str | None = None
    address: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    faults: FaultPlan = field(default_factory=FaultPlan)


@dataclass(frozen=True)
class Scenario:
    seed: int = 0
    description: str = ""
    devices: tuple[DeviceEntry, ...] = ()
    source: str = ""
    adapters: tuple[AdapterEntry, ...] = ()

    def populate(self, fleet: Fleet) -> None:
        """Add this scenario's devices (and adapters, for the fake BlueZ) to ``fleet``."""
        fleet.adapters.extend(
            {"name": a.name, "address": a.address, "wedged": a.wedged} for a in self.adapters
        )
        for i, entry in enumerate(self.devices):
            for _ in range(entry.count):
                try:
                    fleet.add(
                        entry.kind,
                        name=entry.name,
                        address=entry.address,
                        faults=entry.faults,
                        **entry.options,
                    )
                except ValueError as e:
                    raise ScenarioError(f"{self.source}: devices[{i}]: {e}") from e

    def device_count(self) -> int:
        return sum(e.count for e in self.devices)


def packaged_scenarios() -> list[str]:
    """Names of the scenarios shipped in the package."""
    root = resources.files("firmware_sim") / "scenarios"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_scenario(path_or_name: Path | str) -> Scenario:
    """Load and check a scenario from a file, or a packaged one by name (``"default"``)."""
    if (
        isinstance(path_or_name, str)
        and "/" not in path_or_name
        and not path_or_name.endswith(".toml")
    ):
        res = resources.files("firmware_sim") / "scenarios" / f"{path_or_name}.toml"
        if not res.is_file():
            raise ScenarioError(
                f"no packaged scenario {path_or_name!r}; have: {', '.join(packaged_scenarios())}"
            )
        return parse_scenario(res.read_text(encoding="utf-8"), source=f"{path_or_name}.toml")
    path = Path(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"cannot read scenario {path}: {e.strerror}") from e
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    """Parse and check scenario TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from e
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ScenarioError(
            f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScenarioError(f"{source}: seed must be an integer")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{source}: description must be text")
    raw_devices = data.get("devices", [])
    if not isinstance(raw_devices, list):
        raise ScenarioError(f"{source}: devices must be an array of tables ([[devices]])")
    entries = tuple(_entry(raw, f"{source}: devices[{i}]") for i, raw in enumerate(raw_devices))
    raw_adapters = data.get("adapters", [])
    if not isinstance(raw_adapters, list):
        raise ScenarioError(f"{source}: adapters must be an array of tables ([[adapters]])")
    adapters = tuple(
        _adapter(raw, f"{source}: adapters[{i}]") for i, raw in enumerate(raw_adapters)
    )
    if len({a.name for a in adapters}) != len(adapters):
        raise ScenarioError(f"{source}: adapters: each name only once")
    return Scenario(
        seed=seed, description=description, devices=entries, source=source, adapters=adapters
    )


def _adapter(raw: Any, where: str) -> AdapterEntry:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a table")
    unknown = set(raw) - _ADAPTER_KEYS
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ADAPTER_KEYS)}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"hci\d{1,3}", name):
        raise ScenarioError(f"{where}.name: expected hciN, got {name!r}")
    address = raw.get("address")
    if address is not None and (not isinstance(address, str) or not _is_address(address)):
        raise ScenarioError(f"{where}.address: expected XX:XX:XX:XX:XX:XX, got {address!r}")
    wedged = raw.get("wedged")
    if wedged is not None and wedged not in ("in_progress", "silent"):
        raise ScenarioError(f"{where}.wedged: expected in_progress or silent, got {wedged!r}")
    return AdapterEntry(name, address, wedged)


def check_options(
    kind: str, options: dict[str, Any], *, where: str, extra: set[str] | None = None
) -> dict[str, Any]:
    """Check device options for ``kind`` (normalised) against the schema; returns them."""
    allowed = OPTION_TYPES[kind]
    value: Any
    if "pairing" in options or "passkey" in options:
        try:
            pairing_options(dict(options), where=where)
        except ValueError as e:
            raise ScenarioError(str(e)) from e
    for key, value in options.items():
        if key not in allowed:
            raise ScenarioError(
                f"{where}: unknown key {key!r} for a {kind} device; allowed: "
                f"{', '.join(sorted((extra or set()) | set(allowed)))}"
            )
        types = allowed[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ScenarioError(f"{where}.{key}: expected {names}, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ScenarioError(f"{where}.{key}: expected one of {list(_CHOICES[key])}")
        if key in _RANGES:
            lo, hi = _RANGES[key]
            if not lo <= cast(float, value) <= hi:
                raise ScenarioError(f"{where}.{key}: {value} outside {lo:g}..{hi:g}")
    return dict(options)


def _entry(raw: Any, where: str) -> DeviceEntry:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a table")
    if "kind" not in raw:
        raise ScenarioError(f"{where}: missing key 'kind' (hr or glucose)")
    try:
        kind = normalize_kind(str(raw["kind"]))
    except ValueError as e:
        raise ScenarioError(f"{where}.kind: {e}") from e
    options = check_options(
        kind, {k: v for k, v in raw.items() if k not in _ENTRY_KEYS}, where=where, extra=_ENTRY_KEYS
    )
    count = raw.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ScenarioError(f"{where}.count: expected an integer >= 0")
    name = raw.get("name")
    address = raw.get("address")
    for key, val in (("name", name), ("address", address)):
        if val is not None:
            if not isinstance(val, str):
                raise ScenarioError(f"{where}.{key}: expected text")
            if count != 1:
                raise ScenarioError(f"{where}.{key}: only allowed with count = 1")
    if address is not None and not _is_address(address):
        raise ScenarioError(f"{where}.address: expected XX:XX:XX:XX:XX:XX, got {address!r}")
    faults_raw = raw.get("faults", {})
    if not isinstance(faults_raw, dict):
        raise ScenarioError(f"{where}.faults: must be a table")
    try:
        faults = FaultPlan.from_dict(faults_raw, where=f"{where}.faults")
    except FaultSpecError as e:
        raise ScenarioError(str(e)) from e
    return DeviceEntry(kind, count, name, address, options, faults)


def _is_address(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    )
