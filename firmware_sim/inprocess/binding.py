"""The double bound to a fleet (``SimBleak``), and front ends: ways of serving a fleet to
bleak-shaped code."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from firmware_sim.fleet import Fleet
from firmware_sim.inprocess.agent import AGENT_TIMEOUT_S, SimAgent
from firmware_sim.inprocess.client import SimBleakClient
from firmware_sim.inprocess.scanner import SimBleakScanner


class SimBleak:
    """The in-process double for one fleet: ``Scanner`` and ``Client`` classes bound to it.
    ``agent`` is the pairing agent its clients' ``pair()`` asks (BlueZ's default agent; None:
    no agent, so only just-works devices bond), answering within ``agent_timeout_s``."""

    def __init__(
        self, fleet: Fleet, *, agent: SimAgent | None = None,
        agent_timeout_s: float = AGENT_TIMEOUT_S,
    ) -> None:
        self.fleet = fleet
        self.agent = agent
        self.agent_timeout_s = agent_timeout_s
        self.Scanner: type[SimBleakScanner] = type(
            "SimBleakScanner", (SimBleakScanner,), {"_sim": self}
        )
        self.Client: type[SimBleakClient] = type(
            "SimBleakClient", (SimBleakClient,), {"_sim": self}
        )

    def scanner(self, *args: Any, **kwargs: Any) -> SimBleakScanner:
        """A scanner (same arguments as ``BleakScanner``)."""
        return self.Scanner(*args, **kwargs)

    def client(self, *args: Any, **kwargs: Any) -> SimBleakClient:
        """A client (same arguments as ``BleakClient``)."""
        return self.Client(*args, **kwargs)


def bound_sim(factory: Any) -> SimBleak:
    """The :class:`SimBleak` a ``Scanner`` or ``Client`` class of the double is bound to (to
    set its agent); TypeError for anything else (bleak's own classes)."""
    sim = getattr(factory, "_sim", None)
    if not isinstance(sim, SimBleak):
        raise TypeError("not a class of the in-process double")
    return sim


ScannerFactory = Any
"""``BleakScanner`` or ``SimBleak(f).Scanner``: callable like the constructor, with the
``discover`` / ``find_device_by_address`` classmethods."""
ClientFactory = Any
"""``BleakClient`` or ``SimBleak(f).Client``."""


class Frontend(Protocol):
    """A way of serving a fleet to bleak-shaped code: ``async with frontend(fleet) as
    (scanner_factory, client_factory): ...``. The in-process double is one; the fake BlueZ
    (real ``BleakScanner`` / ``BleakClient`` on a private bus) is the other."""

    def __call__(
        self, fleet: Fleet
    ) -> contextlib.AbstractAsyncContextManager[tuple[ScannerFactory, ClientFactory]]: ...


@contextlib.asynccontextmanager
async def inprocess_frontend(fleet: Fleet) -> AsyncIterator[tuple[ScannerFactory, ClientFactory]]:
    """The in-process front end. Starts the fleet if it is not running (and then stops it)."""
    started = not fleet.running
    if started:
        await fleet.start()
    sim = SimBleak(fleet)
    try:
        yield sim.Scanner, sim.Client
    finally:
        if started:
            await fleet.stop()
