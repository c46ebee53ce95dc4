"""A fleet of simulated devices: building it (from a scenario or a ``--devices`` spec), adding
and removing devices at run time, and running their periodic behaviour on one clock.

Transports watch a fleet through ``on_added`` / ``on_removed`` (lists of callables taking the
device) to export and unexport devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.clock import Clock, SystemClock
from firmware_sim.devices.base import SimDevice
from firmware_sim.devices.bonding import seeded_passkey
from firmware_sim.devices.glucose import GlucoseMeter
from firmware_sim.devices.heart_rate import HeartRateStrap
from firmware_sim.faults import FaultPlan
from firmware_sim.model.pairing import PairingMethod, PairingSpec, parse_pairing

__all__ = [
    "KINDS",
    "Fleet",
    "SimDevice",
    "build_fleet",
    "normalize_kind",
    "parse_devices_spec",
]

_log = logging.getLogger("firmware_sim.fleet")

#: kind -> (device class, name prefix, address type)
KINDS: dict[str, tuple[type[SimDevice], str, str]] = {
    "heart_rate": (HeartRateStrap, "SIM-HR", "random"),
    "glucose": (GlucoseMeter, "SIM-GLU", "public"),
}
_ALIASES = {"hr": "heart_rate", "heart_rate": "heart_rate", "heart-rate": "heart_rate",
            "glucose": "glucose", "glu": "glucose"}  # fmt: skip


def normalize_kind(kind: str) -> str:
    """``hr`` / ``heart_rate`` -> ``heart_rate``; ``glucose`` / ``glu`` -> ``glucose``."""
    try:
        return _ALIASES[kind.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown device kind {kind!r}; use hr or glucose") from None


#: keys a ``--devices`` entry may carry after its count (``glucose:1:pairing=passkey``)
SPEC_KEYS = ("pairing", "passkey")


def parse_devices_spec(spec: str) -> list[tuple[str, int, dict[str, Any]]]:
    """``"hr:2,glucose:1:pairing=passkey:passkey=123456"`` ->
    ``[("heart_rate", 2, {}), ("glucose", 1, {"pairing": "passkey", "passkey": "123456"})]``.

    Each entry is ``KIND[:COUNT][:KEY=VALUE]...`` with keys from :data:`SPEC_KEYS`."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, *rest = part.split(":")
        n = 1
        if rest and "=" not in rest[0]:
            count = rest.pop(0)
            try:
                n = int(count) if count else 1
            except ValueError:
                raise ValueError(f"bad device count in {part!r}; expected e.g. hr:2") from None
        if n < 0:
            raise ValueError(f"negative device count in {part!r}")
        options: dict[str, Any] = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep or key not in SPEC_KEYS:
                raise ValueError(
                    f"bad option {item!r} in {part!r}; expected KEY=VALUE with KEY one of "
                    f"{', '.join(SPEC_KEYS)} (e.g. glucose:1:pairing=passkey:passkey=123456)"
                )
            options[key] = value
        out.append((normalize_kind(kind), n, options))
    return out


def make_address(rng: random.Random, address_type: str) -> str:
    """A random static address (top two bits 11) or a public-looking one (top bits 00)."""
    octets = [rng.randrange(256) for _ in range(6)]
    if address_type == "random":
        octets[0] |= 0xC0
    else:
        octets[0] &= 0x3F & ~0x03  # universally administered, unicast
    return ":".join(f"{o:02X}" for o in octets)


def pairing_options(options: dict[str, Any], *, where: str) -> tuple[PairingMethod, int | None]:
    """Take ``pairing`` and ``passkey`` out of device ``options`` (a passkey alone implies
    ``pairing = "passkey"``); ValueError naming ``where`` when they are bad."""
    passkey = options.pop("passkey", None)
    method = options.pop("pairing", "passkey" if passkey is not None else "just_works")
    return parse_pairing(method, passkey, where=where)


DeviceCallback = Callable[[SimDevice], None]


class Fleet:
    """The simulated devices of one simulator run, on one clock, from one seed."""

    def __init__(self, *, seed: int = 0, clock: Clock | None = None) -> None:
        self.seed = seed
        self.clock: Clock = clock or SystemClock()
        self.devices: list[SimDevice] = []
        self.on_added: list[DeviceCallback] = []
        self.on_removed: list[DeviceCallback] = []
        #: adapters a scenario asks of the fake BlueZ: dicts with name, address, wedged
        self.adapters: list[dict[str, Any]] = []
        self._counters: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    # ------------------------------------------------------------------ lookup

    def get(self, address_or_name: str) -> SimDevice:
        """The device with this address (any case) or name; KeyError if none."""
        key = address_or_name.strip().upper()
        for d in self.devices:
            if d.address.upper() == key or d.name.upper() == key:
                return d
        raise KeyError(f"no simulated device {address_or_name!r}")

    def find(self, address_or_name: str) -> SimDevice | None:
        """Like :meth:`get`, None when absent."""
        try:
            return self.get(address_or_name)
        except KeyError:
            return None

    def __iter__(self) -> Any:
        return iter(list(self.devices))

    def __len__(self) -> int:
        return len(self.devices)

    def describe(self) -> list[dict[str, Any]]:
        """JSON-friendly summaries of every device."""
        return [d.describe() for d in self.devices]

    # ------------------------------------------------------------------ membership

    def add(
        self,
        kind: str,
        *,
        name: str | None = None,
        address: str | None = None,
        faults: FaultPlan | dict[str, Any] | None = None,
        **options: Any,
    ) -> SimDevice:
        """Create and add a device. ``kind`` is ``hr``/``heart_rate`` or ``glucose``; name and
        address default to ``SIM-HR-<n>`` / a seed-stable address; other options go to the
        device class (see :mod:`firmware_sim.scenario` for the list)."""
        from firmware_sim.scenario import check_options  # scenario imports this module

        kind = normalize_kind(kind)
        check_options(kind, options, where=f"{kind} device")
        cls, prefix, default_type = KINDS[kind]
        address_type = str(options.get("address_type", default_type))
        n = self._counters.get(kind, 0) + 1
        if name is None:
            # skip names a scenario already gave out explicitly
            while self.find(f"{prefix}-{n}") is not None:
                n += 1
            name = f"{prefix}-{n}"
        elif self.find(name) is not None:
            raise ValueError(f"name {name} already in the fleet")
        rng = random.Random(f"{self.seed}:{kind}:{n}")  # noqa: S311 (simulation, not crypto)
        addr_rng = random.Random(f"{self.seed}:{kind}:{n}:address")  # noqa: S311
        if address is None:
            address = make_address(addr_rng, address_type)
            taken = {d.address for d in self.devices}
            while address in taken:
                address = make_address(addr_rng, address_type)
        else:
            address = address.upper()
            if self.find(address) is not None:
                raise ValueError(f"address {address} already in the fleet")
        plan = faults if isinstance(faults, FaultPlan) else FaultPlan.from_dict(faults or {})
        options["address_type"] = address_type
        method, passkey = pairing_options(options, where=f"{kind} device")
        device = cls(name=name, address=address, clock=self.clock, rng=rng, faults=plan, **options)
        if method is PairingMethod.PASSKEY and passkey is None:
            passkey = seeded_passkey(random.Random(f"{self.seed}:{kind}:{n}:passkey"))  # noqa: S311
        device.pairing = PairingSpec(method, passkey)
        self._counters[kind] = n
        self.devices.append(device)
        if self._running:
            self._start_device(device)
        for cb in list(self.on_added):
            cb(device)
        return device

    def remove(self, address_or_name: str) -> SimDevice:
        """Remove a device (its link drops first)."""
        device = self.get(address_or_name)
        device.drop_link("device-removed")
        self.devices.remove(device)
        task = self._tasks.pop(device.address, None)
        if task is not None:
            task.cancel()
        for cb in list(self.on_removed):
            cb(device)
        return device

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        """Start every device's periodic behaviour (idempotent)."""
        if self._running:
            return
        self._running = True
        for d in self.devices:
            self._start_device(d)

    async def stop(self) -> None:
        """Stop periodic behaviour and drop every link."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for d in self.devices:
            d.drop_link("simulator-stopped")

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _start_device(self, device: SimDevice) -> None:
        task = asyncio.get_running_loop().create_task(self._run(device))
        self._tasks[device.address] = task

    async def _run(self, device: SimDevice) -> None:
        while True:
            await self.clock.sleep(device.tick_seconds)
            try:
                await device.tick()
            except Exception:
                # one misbehaving device must not stop the simulator
                _log.exception("sim.device_tick_failed name=%s", device.name)


def build_fleet(
    *,
    scenario: Path | None = None,
    devices: str | None = None,
    seed: int = 0,
    clock: Clock | None = None,
) -> Fleet:
    """A fleet from a scenario file and/or a ``--devices`` spec (``"hr:2,glucose:1"``).

    With neither, the packaged ``default`` scenario. ``--devices`` entries are added after the
    scenario's devices. The scenario's seed is used unless ``seed`` is non-zero.
    """
    from firmware_sim.scenario import load_scenario  # scenario imports fleet's helpers

    fleet_seed = seed
    spec = None
    if scenario is not None:
        spec = load_scenario(scenario)
        if not seed:
            fleet_seed = spec.seed
    elif devices is None:
        spec = load_scenario("default")
        if not seed:
            fleet_seed = spec.seed
    fleet = Fleet(seed=fleet_seed, clock=clock)
    if spec is not None:
        spec.populate(fleet)
    if devices:
        for kind, count, options in parse_devices_spec(devices):
            for _ in range(count):
                fleet.add(kind, **options)
    return fleet
