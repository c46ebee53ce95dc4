"""``MemoryVault``: the vault's async API in memory, for tests of intake, the forwarder and the
daemon that need no files.

Same semantics as :class:`edge.vault.Vault` on that surface: readings deduplicated on their
id (delivered ones too, until retention purges them), oldest first by a growing ``seq``, the
same bounds and refusal reasons, the consent hook, revoke purging the patient, the same
hash-chained audit, held readings (not handed out until released with corrected times). Not
modelled: disk full, files, keys, re-key, backup.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from edge.clock import Clock, SystemClock
from edge.config import VaultConfig
from edge.errors import VaultError, VaultFull
from edge.log import Redactor
from edge.readings import GlucoseReading, reading_from_json
from edge.vault import audit as chain
from edge.vault.engine import check_reason, vault_full
from edge.vault.models import (
    AnyReading,
    AppendResult,
    AuditEntry,
    Binding,
    Consent,
    GlucoseCursor,
    PendingReading,
    VaultStats,
)
from edge.vault.outbox import NO_CONSENT, UNKNOWN_TIME, Fix, Released

if TYPE_CHECKING:
    from edge.intake.consent import ConsentCheck


@dataclass
class _Row:
    pending: PendingReading
    stored_at: float
    delivered_at: float | None = None
    held: bool = False


class MemoryVault:
    """An in-memory :class:`edge.vault.Vault` (the parts the daemon wires)."""

    def __init__(self, config: VaultConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config or VaultConfig()
        self._clock = clock or SystemClock()
        self._rows: dict[str, _Row] = {}
        self._seq = 0
        self._refusals: dict[str, int] = {}
        self._bindings: dict[str, Binding] = {}
        self._consents: dict[str, Consent] = {}
        self._cursors: dict[str, GlucoseCursor] = {}
        self._audit: list[chain.AuditRow] = []
        self._consent: ConsentCheck | None = None
        self._closed = False
        self.log_hash_key = os.urandom(32)
        self._hasher = Redactor(self.log_hash_key)

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True

    async def __aenter__(self) -> MemoryVault:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> None:
        if self._closed:
            raise VaultError("the vault is closed")

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def device_hash(self, address: str) -> str:
        return self._hasher.device_hash(address)

    def use_consent(self, check: ConsentCheck) -> None:
        self._consent = check

    # -- readings ------------------------------------------------------------------------------

    def _pending(self) -> list[_Row]:
        return [r for r in self._rows.values() if r.delivered_at is None]

    def _store(self, readings: Sequence[AnyReading]) -> AppendResult:
        """All of ``readings`` or none; the refusal counted as the real vault counts it."""
        check = self._consent
        kept = [r for r in readings if check is None or check.allows(r.patient)]
        self._count(NO_CONSENT, len(readings) - len(kept))
        n = len(kept)
        pending = self._pending()
        if n and len(pending) >= self.config.max_pending:
            raise self._refuse("vault_full_count", n)
        fresh: dict[str, tuple[AnyReading, bytes]] = {}
        for r in kept:
            if r.id not in self._rows and r.id not in fresh:
                fresh[r.id] = (r, r.model_dump_json().encode())
        if len(pending) + len(fresh) > self.config.max_pending:
            raise self._refuse("vault_full_count", n)
        held = sum(len(r.pending.payload) for r in pending)
        if held + sum(len(p) for _, p in fresh.values()) > self.config.max_pending_bytes:
            raise self._refuse("vault_full_bytes", n)
        now = self._now()
        for r, payload in fresh.values():
            self._seq += 1
            self._rows[r.id] = _Row(PendingReading(self._seq, r.id, r.patient, r.kind, payload),
                                    now, held=r.clock_hold is not None)
        return AppendResult(len(fresh), n - len(fresh))

    def _refuse(self, reason: str, n: int) -> VaultFull:
        self._count(reason, n)
        return vault_full(reason)

    def _count(self, reason: str, n: int) -> None:
        if n > 0:
            self._refusals[check_reason(reason)] = self._refusals.get(reason, 0) + n

    async def append(self, readings: Sequence[AnyReading]) -> AppendResult:
        self._open()
        return self._store(list(readings))

    async def commit_glucose(
        self,
        address: str,
        readings: Sequence[GlucoseReading],
        *,
        last_sequence: int,
        last_device_time: datetime | None,
        clock_offset_s: int,
    ) -> AppendResult:
        self._open()
        result = self._store(list(readings))
        self._cursors[address.upper()] = GlucoseCursor(
            int(last_sequence), last_device_time, int(clock_offset_s),
            self._clock.now(),
        )
        return result

    async def next_batch(self, limit: int, *, after_seq: int = 0) -> list[PendingReading]:
        self._open()
        rows = sorted((r.pending for r in self._pending()
                       if r.pending.seq > after_seq and not r.held),
                      key=lambda p: p.seq)
        return rows[: max(0, limit)]

    async def mark_delivered(self, ids: Sequence[str]) -> int:
        self._open()
        now, done = self._now(), 0
        for rid in ids:
            row = self._rows.get(rid)
            if row is not None and row.delivered_at is None:
                row.delivered_at = now
                done += 1
        return done

    async def release_held(self, fix: Fix, *, actor: str = "system:clock") -> Released:
        """As :func:`edge.vault.outbox.release_held`: corrected rows get a new seq."""
        self._open()
        held = sorted((r for r in self._pending() if r.held), key=lambda r: r.pending.seq)
        unknown = 0
        for row in held:
            p = row.pending
            fixed = fix(reading_from_json(p.payload))
            if fixed is None:
                del self._rows[p.id]
                unknown += 1
                continue
            self._seq += 1
            self._rows[p.id] = _Row(PendingReading(self._seq, p.id, p.patient, p.kind,
                                                   fixed.model_dump_json().encode()),
                                    row.stored_at)
        self._count(UNKNOWN_TIME, unknown)
        if unknown:
            self._record(actor, "clock.unknown_time", f"{unknown} reading(s)")
        return Released(len(held) - unknown, unknown)

    async def flush(self) -> None:
        """Nothing to merge in memory (the real vault merges its side log)."""
        self._open()

    async def tick(self) -> None:
        """One round of the real vault's flusher: nothing to do in memory."""
        self._open()

    async def count_refusal(self, reason: str, n: int = 1) -> None:
        self._open()
        self._count(reason, n)

    async def stats(self) -> VaultStats:
        self._open()
        pending = self._pending()
        oldest = min((r.stored_at for r in pending), default=None)
        pending_bytes = sum(len(r.pending.payload) for r in pending)
        return VaultStats(
            pending=len(pending),
            oldest_pending_age_s=None if oldest is None else max(0.0, self._now() - oldest),
            db_bytes=sum(len(r.pending.payload) for r in self._rows.values()),
            pending_bytes=pending_bytes,
            delivered_retained=len(self._rows) - len(pending),
            refusals=dict(sorted(self._refusals.items())),
            held=sum(1 for r in pending if r.held),
        )

    def _purge(self, patient: str) -> int:
        gone = [rid for rid, r in self._rows.items() if r.pending.patient == patient]
        for rid in gone:
            del self._rows[rid]
        return len(gone)

    async def purge_patient(self, patient: str, *, actor: str) -> int:
        self._open()
        n = self._purge(patient)
        self._record(actor, "vault.patient_purged", patient)
        return n

    async def purge_delivered(self) -> int:
        self._open()
        cutoff = self._now() - self.config.retention_days * 86400.0
        old = [rid for rid, r in self._rows.items()
               if r.delivered_at is not None and r.delivered_at <= cutoff]
        for rid in old:
            del self._rows[rid]
        if old:
            self._record("system:retention", "vault.retention_purged", f"{len(old)} readings")
        return len(old)

    # -- bindings, consent, cursors --------------------------------------------------------------

    async def bind_device(self, address: str, kind: str, patient: str, *, bonded: bool,
                          actor: str) -> None:
        self._open()
        address = address.upper()
        old = self._bindings.get(address)
        self._bindings[address] = Binding(address, kind, patient, bonded, self._clock.now(),
                                          actor, old.last_seen if old else None)
        self._record(actor, "device.bound", self.device_hash(address))

    async def unbind_device(self, address: str, *, actor: str) -> bool:
        self._open()
        address = address.upper()
        self._cursors.pop(address, None)
        if self._bindings.pop(address, None) is None:
            return False
        self._record(actor, "device.unbound", self.device_hash(address))
        return True

    async def bindings(self) -> list[Binding]:
        self._open()
        return sorted(self._bindings.values(), key=lambda b: (b.bound_at, b.address))

    async def touch_device(self, address: str, seen_at: datetime) -> None:
        self._open()
        b = self._bindings.get(address.upper())
        if b is not None:
            self._bindings[b.address] = Binding(b.address, b.kind, b.patient, b.bonded,
                                                b.bound_at, b.bound_by, seen_at)

    async def grant_consent(self, patient: str, *, scope: str = "vitals", actor: str) -> None:
        self._open()
        self._consents[patient] = Consent(patient, scope, self._clock.now(), actor, None, None)
        self._record(actor, "consent.granted", patient)

    async def revoke_consent(self, patient: str, *, actor: str) -> int:
        self._open()
        old = self._consents.get(patient)
        self._consents[patient] = Consent(
            patient, old.scope if old else "vitals", old.granted_at if old else None,
            old.granted_by if old else None, self._clock.now(), actor,
        )
        n = self._purge(patient)
        self._record(actor, "consent.revoked", patient)
        return n

    async def consents(self) -> list[Consent]:
        self._open()
        return [self._consents[p] for p in sorted(self._consents)]

    async def has_consent(self, patient: str) -> bool:
        self._open()
        c = self._consents.get(patient)
        return c is not None and c.active

    async def cursor(self, address: str) -> GlucoseCursor | None:
        self._open()
        return self._cursors.get(address.upper())

    async def reset_cursor(self, address: str, *, actor: str) -> None:
        self._open()
        address = address.upper()
        self._cursors.pop(address, None)
        self._record(actor, "cursor.reset", self.device_hash(address))

    # -- audit -----------------------------------------------------------------------------------

    def _record(self, actor: str, action: str, subject: str) -> None:
        last = (self._audit[-1][0], self._audit[-1][6]) if self._audit else None
        self._audit.append(chain.next_row(last, self._clock.now(), actor, action, subject))

    async def audit(self, actor: str, action: str, subject: str = "") -> None:
        self._open()
        self._record(actor, action, subject)

    async def audit_tail(self, n: int = 20) -> list[AuditEntry]:
        self._open()
        return [chain.entry(r) for r in self._audit[-n:]] if n > 0 else []

    async def verify_audit(self) -> int:
        self._open()
        return chain.verify_chain(self._audit)
