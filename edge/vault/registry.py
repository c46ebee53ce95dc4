"""The registry: device bindings (the allow-list), consent, and glucose meters' sync cursors.

Every change is audited in the transaction that makes it; devices are named in the audit log
by their keyed hash, never their address.
"""

from __future__ import annotations

from datetime import datetime

from edge.vault import audit
from edge.vault.engine import Engine
from edge.vault.models import Binding, Consent, GlucoseCursor, from_ts, from_ts_req, to_ts
from edge.vault.outbox import forget_inflight, purge_patient_in_tx

# -- bindings ---------------------------------------------------------------------------------


def bind_device(db: Engine, address: str, kind: str, patient: str, *, bonded: bool,
                actor: str) -> None:
    """Add or replace a device on the allow-list; audited."""
    address = address.upper()
    with db.write() as c:
        c.execute(
            "INSERT INTO bindings(address, kind, patient, bonded, bound_at, bound_by) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(address) DO UPDATE SET "
            "kind = excluded.kind, patient = excluded.patient, bonded = excluded.bonded, "
            "bound_at = excluded.bound_at, bound_by = excluded.bound_by",
            (address, kind, patient, int(bonded), db.now(), actor),
        )
        audit.record(db, actor, "device.bound", db.hasher.device_hash(address))


def unbind_device(db: Engine, address: str, *, actor: str) -> bool:
    """Remove a device (and its sync cursor); audited. False if it was not bound."""
    address = address.upper()
    with db.write() as c:
        gone = c.execute("DELETE FROM bindings WHERE address = ?", (address,)).rowcount
        c.execute("DELETE FROM cursors WHERE address = ?", (address,))
        if gone:
            audit.record(db, actor, "device.unbound", db.hasher.device_hash(address))
    return bool(gone)


def bindings(db: Engine) -> list[Binding]:
    """The allow-list."""
    with db.errors():
        rows = db.conn.execute(
            "SELECT address, kind, patient, bonded, bound_at, bound_by, last_seen "
            "FROM bindings ORDER BY bound_at, address"
        ).fetchall()
    touched = db.staging.touches if db.staging is not None else {}
    return [
        Binding(a, k, p, bool(b), from_ts_req(at), by, from_ts(touched.get(a, seen)))
        for a, k, p, b, at, by, seen in rows
    ]


def touch_device(db: Engine, address: str, seen_at: datetime) -> None:
    """Record when a bound device was last seen (with a side log: at the next merge)."""
    if db.staging is not None:
        db.staging.touches[address.upper()] = to_ts(seen_at)
        return
    with db.write() as c:
        c.execute(
            "UPDATE bindings SET last_seen = ? WHERE address = ?",
            (to_ts(seen_at), address.upper()),
        )


# -- consent ----------------------------------------------------------------------------------


def grant_consent(db: Engine, patient: str, *, scope: str = "vitals", actor: str) -> None:
    """Grant (or re-grant) consent; audited."""
    with db.write() as c:
        c.execute(
            "INSERT INTO consents(patient, scope, granted_at, granted_by) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(patient) DO UPDATE SET scope = excluded.scope,"
            " granted_at = excluded.granted_at, granted_by = excluded.granted_by, "
            "revoked_at = NULL, revoked_by = NULL",
            (patient, scope, db.now(), actor),
        )
        audit.record(db, actor, "consent.granted", patient)


def revoke_consent(db: Engine, patient: str, *, actor: str) -> int:
    """Revoke consent, purge the patient's readings and audit, in one transaction;
    returns how many readings were purged."""
    db.settle()
    with db.write() as c:
        c.execute(
            "INSERT INTO consents(patient, scope, revoked_at, revoked_by) "
            "VALUES (?, 'vitals', ?, ?) ON CONFLICT(patient) DO UPDATE SET "
            "revoked_at = excluded.revoked_at, revoked_by = excluded.revoked_by",
            (patient, db.now(), actor),
        )
        pend, pbytes, delivered = purge_patient_in_tx(db, c, patient)
        audit.record(db, actor, "consent.revoked", patient)
    db.apply(pending=-pend, pending_bytes=-pbytes, delivered=-delivered)
    forget_inflight(db, patient)
    return int(pend + delivered)


def consents(db: Engine) -> list[Consent]:
    """Every consent record, active or revoked."""
    with db.errors():
        rows = db.conn.execute(
            "SELECT patient, scope, granted_at, granted_by, revoked_at, revoked_by "
            "FROM consents ORDER BY patient"
        ).fetchall()
    return [Consent(p, s, from_ts(g), gb, from_ts(r), rb) for p, s, g, gb, r, rb in rows]


def has_consent(db: Engine, patient: str) -> bool:
    """Whether ``patient`` has active consent."""
    with db.errors():
        row = db.conn.execute(
            "SELECT 1 FROM consents WHERE patient = ? AND granted_at IS NOT NULL "
            "AND revoked_at IS NULL",
            (patient,),
        ).fetchone()
    return row is not None


# -- glucose cursors --------------------------------------------------------------------------


def cursor(db: Engine, address: str) -> GlucoseCursor | None:
    """A glucose meter's sync cursor, None before its first sync."""
    with db.errors():
        row = db.conn.execute(
            "SELECT last_sequence, last_device_time, clock_offset_s, updated_at "
            "FROM cursors WHERE address = ?",
            (address.upper(),),
        ).fetchone()
    if row is None:
        return None
    seq, dev_time, offset, updated = row
    return GlucoseCursor(
        int(seq),
        None if dev_time is None else datetime.fromisoformat(dev_time),
        int(offset),
        from_ts_req(updated),
    )


def reset_cursor(db: Engine, address: str, *, actor: str) -> None:
    """Forget a meter's cursor (its records are fetched again); audited."""
    address = address.upper()
    with db.write() as c:
        c.execute("DELETE FROM cursors WHERE address = ?", (address,))
        audit.record(db, actor, "cursor.reset", db.hasher.device_hash(address))
