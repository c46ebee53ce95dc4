"""The daemon's typed seams: what it needs from the BLE manager, the forwarder and the vault,
and the factories tests use to put fakes in their place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from edge.ble.ports import CursorLike, IntakeSink
from edge.ble.state import DeviceState
from edge.intake.consent import ConsentCheck
from edge.readings import GlucoseReading, HeartRateReading
from edge.uplink.ports import Outbox, StatusProvider
from edge.uplink.stats import ForwarderState, ForwarderStats
from edge.vault import AppendResult, Binding, Consent, PendingReading, VaultStats


class BleLike(Protocol):
    """What the daemon needs from ``edge.ble.BleManager``."""

    async def run(self) -> None: ...

    async def refresh(self) -> None: ...

    def device_states(self) -> Mapping[str, DeviceState]: ...


@runtime_checkable
class ReportsProgress(Protocol):
    """A part with its own ``probe()``: it returns only while the part makes progress (so a
    part that is alive but stuck stops beating). Parts without one are probed by a cheap call
    that proves they answer."""

    async def probe(self) -> None: ...


class ForwarderLike(Protocol):
    """What the daemon needs from ``edge.uplink.forwarder.Forwarder``."""

    async def run(self) -> None: ...

    def wake(self) -> None: ...

    def begin_drain(self) -> None: ...

    @property
    def state(self) -> ForwarderState: ...

    def stats(self) -> ForwarderStats: ...


class DaemonVault(Protocol):
    """The vault surface the daemon and the parts it wires use (``edge.vault.Vault``, or
    ``edge.testing.vault.MemoryVault``)."""

    @property
    def log_hash_key(self) -> bytes: ...

    async def close(self) -> None: ...

    async def stats(self) -> VaultStats: ...

    async def purge_delivered(self) -> int: ...

    # consent (the gate's store)
    async def consents(self) -> Sequence[Consent]: ...

    async def grant_consent(self, patient: str, *, scope: str, actor: str) -> None: ...

    async def revoke_consent(self, patient: str, *, actor: str) -> int: ...

    def use_consent(self, check: ConsentCheck) -> None: ...

    # intake
    async def append(
        self, readings: Sequence[HeartRateReading | GlucoseReading]
    ) -> AppendResult: ...

    async def commit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> AppendResult: ...

    async def count_refusal(self, reason: str, n: int = 1) -> None: ...

    # the BLE manager's registry
    async def bindings(self) -> Sequence[Binding]: ...

    async def cursor(self, address: str) -> CursorLike | None: ...

    async def touch_device(self, address: str, seen_at: datetime) -> None: ...

    # the forwarder's outbox
    async def next_batch(
        self, limit: int, *, after_seq: int = 0
    ) -> Sequence[PendingReading]: ...

    async def mark_delivered(self, ids: Sequence[str]) -> int: ...

    async def audit(self, actor: str, action: str, subject: str = "") -> None: ...


#: makes the BLE manager from the vault (its registry) and the intake (its sink)
BleFactory = Callable[[DaemonVault, IntakeSink], BleLike]
#: makes the forwarder from the outbox, the consent gate and the status provider
ForwarderFactory = Callable[[Outbox, ConsentCheck, StatusProvider], ForwarderLike]
#: opens the vault (tests hand in their own)
VaultFactory = Callable[[], Awaitable[DaemonVault]]

__all__ = [
    "BleFactory",
    "BleLike",
    "DaemonVault",
    "ForwarderFactory",
    "ForwarderLike",
    "ReportsProgress",
    "VaultFactory",
]
