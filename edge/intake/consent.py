"""The one consent gate. Intake consults it before anything is stored, the forwarder before a
Bundle is read out of the vault and again before it goes on the wire.

Grant and revoke go through the gate, under the gate's lock, which intake also holds while it
appends: a revoke therefore never races an append of that patient. A revoke closes the gate
first (nothing new is stored or sent), then the store revokes, purges and audits in one
transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from edge.log import get_logger

log = get_logger("edge.intake.consent")


class ConsentRecord(Protocol):
    """One patient's consent as the store reports it."""

    @property
    def patient(self) -> str: ...

    @property
    def active(self) -> bool: ...


class ConsentStore(Protocol):
    """Where consent is kept (the vault, or ``edge.testing`` 's in-memory vault)."""

    async def consents(self) -> Sequence[ConsentRecord]: ...

    async def grant_consent(self, patient: str, *, scope: str, actor: str) -> None: ...

    async def revoke_consent(self, patient: str, *, actor: str) -> int: ...


class ConsentCheck(Protocol):
    """The read side of the gate, which is all the forwarder needs."""

    def allows(self, patient: str) -> bool: ...


class ConsentGate:
    """Active consent per patient, cached in memory and changed only through the gate."""

    def __init__(self, store: ConsentStore) -> None:
        self._store = store
        self._active: dict[str, bool] = {}
        #: held by grant/revoke and by intake while it appends
        self.lock = asyncio.Lock()

    async def load(self) -> None:
        """Fill the cache from the store (at start-up)."""
        self._active = {c.patient: c.active for c in await self._store.consents()}

    def allows(self, patient: str) -> bool:
        """Whether ``patient`` has active consent."""
        return self._active.get(patient, False)

    def patients(self) -> list[str]:
        """Patients with active consent, sorted."""
        return sorted(p for p, ok in self._active.items() if ok)

    async def grant(self, patient: str, *, scope: str, actor: str) -> None:
        """Grant in the store (audited there), then open the gate."""
        async with self.lock:
            await self._store.grant_consent(patient, scope=scope, actor=actor)
            self._active[patient] = True
        log.info("consent.granted")

    async def revoke(self, patient: str, *, actor: str) -> int:
        """Close the gate, then revoke, purge and audit in the store; the readings purged."""
        async with self.lock:
            self._active[patient] = False
            purged = await self._store.revoke_consent(patient, actor=actor)
        log.info("consent.revoked", purged=purged)
        return purged
