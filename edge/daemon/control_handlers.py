"""The daemon's control requests: ``status``, ``consent.grant|revoke|list``,
``devices.refresh``. Each handler takes only its own fields, each field within its limits
(:mod:`edge.daemon.control_protocol`); a refusal is a ControlError whose message never echoes
what was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from edge.daemon.control_protocol import (
    DEFAULT_SCOPE,
    BadRequest,
    Handler,
    check_scope,
    only_fields,
)
from edge.daemon.status import StatusDocument, apply_consent_gaps, consent_gaps, consent_json
from edge.errors import ControlError, UsageError
from edge.intake.consent import ConsentGate
from edge.log import REDACTOR
from edge.readings import check_pseudonym
from edge.vault import Binding, Consent


class ControlRecords(Protocol):
    """What the handlers read from the vault: consent records and bindings."""

    async def consents(self) -> Sequence[Consent]: ...

    async def bindings(self) -> Sequence[Binding]: ...


#: kept for callers of the old name
ConsentList = ControlRecords


class ControlHandlers:
    """The daemon's requests: ``status``, ``consent.grant|revoke|list``, ``devices.refresh``.

    Every request waits for ``ready`` (the daemon's set-up), so the socket can listen first:
    once it is bound a CLI no longer writes consent straight into the vault."""

    def __init__(
        self,
        *,
        ready: asyncio.Event,
        gate: ConsentGate,
        records: ControlRecords,
        status: Callable[[], Awaitable[StatusDocument]],
        refresh: Callable[[], Awaitable[bool]],
    ) -> None:
        self._ready = ready
        self._gate = gate
        self._records = records
        self._status = status
        self._refresh = refresh

    def table(self) -> dict[str, Handler]:
        """Handlers by op, for :class:`ControlServer`."""
        handlers: dict[str, Handler] = {
            "status": self.status,
            "consent.grant": self.grant,
            "consent.revoke": self.revoke,
            "consent.list": self.consents,
            "devices.refresh": self.refresh,
        }
        return {op: self._after_set_up(h) for op, h in handlers.items()}

    def _after_set_up(self, handler: Handler) -> Handler:
        async def gated(request: Mapping[str, object], actor: str) -> object:
            await self._ready.wait()
            return await handler(request, actor)

        return gated

    async def status(self, request: Mapping[str, object], actor: str) -> object:
        """The daemon's status; not healthy while a bound device's patient has no consent
        (its readings are refused)."""
        only_fields(request, ())
        doc = await self._status()
        gaps = consent_gaps(await self._records.bindings(), self._gate.allows)
        return apply_consent_gaps(doc, gaps)

    async def grant(self, request: Mapping[str, object], actor: str) -> object:
        only_fields(request, ("patient", "scope"))
        patient = patient_param(request)
        scope = scope_param(request)
        REDACTOR.register([patient])
        await self._gate.grant(patient, scope=scope, actor=f"control:{actor}")
        return {"patient": patient, "consent": "granted", "scope": scope}

    async def revoke(self, request: Mapping[str, object], actor: str) -> object:
        only_fields(request, ("patient",))
        patient = patient_param(request)
        if not ever_granted(await self._records.consents(), patient):
            raise ControlError(NEVER_GRANTED, "not_granted")
        REDACTOR.register([patient])
        purged = await self._gate.revoke(patient, actor=f"control:{actor}")
        return {"patient": patient, "consent": "revoked", "purged": purged}

    async def consents(self, request: Mapping[str, object], actor: str) -> object:
        only_fields(request, ())
        return [consent_json(c) for c in await self._records.consents()]

    async def refresh(self, request: Mapping[str, object], actor: str) -> object:
        only_fields(request, ())
        return {"refreshed": await self._refresh()}


#: the answer to revoking consent that was never granted (no pseudonym in it)
NEVER_GRANTED = ("consent was never granted to this pseudonym, so there is nothing to revoke "
                 "— check the spelling against `edge consent list`")


def ever_granted(records: Sequence[Consent], patient: str) -> bool:
    """Whether ``patient`` was granted consent at some time (active or revoked since)."""
    return any(c.patient == patient and c.granted_at is not None for c in records)


def patient_param(request: Mapping[str, object]) -> str:
    """The request's ``patient``, checked to be a pseudonym (``bad_request`` otherwise)."""
    patient = request.get("patient")
    if not isinstance(patient, str):
        raise BadRequest("a patient pseudonym is required")
    try:
        return check_pseudonym(patient)
    except UsageError as exc:
        raise BadRequest(str(exc)) from exc


def scope_param(request: Mapping[str, object]) -> str:
    """The request's ``scope`` (``vitals`` when absent), checked (``bad_request`` otherwise)."""
    if "scope" not in request:
        return DEFAULT_SCOPE
    try:
        return check_scope(request["scope"])
    except UsageError as exc:
        raise BadRequest(str(exc)) from exc


