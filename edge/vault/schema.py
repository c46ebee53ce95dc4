"""The vault's schema and its forward migrations.

``MIGRATIONS[n]`` takes a database at version ``n`` to ``n + 1``; version 1 is the initial
schema. A migration is never edited once released: a change is a new step, and every step
is tested from every earlier version (tests/integration/test_vault_migrations.py).

Readings are deduplicated on ``(ident, id)``: ``ident`` is the reading's *identity time*
(see :func:`edge.vault.models.identity_time_us`), which is part of what its stable id is
derived from, so the same reading always has the same ``ident``. Keying the unique index on
time first keeps inserts at the right edge of the index: a random-UUID unique index costs
one dirty, re-encrypted page per stored reading once the vault is large.
"""

from __future__ import annotations

import sqlcipher3

from edge.vault.cipher import Connection

V1 = """
CREATE TABLE schema_version (
    version INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ident INTEGER NOT NULL,
    id TEXT NOT NULL,
    patient TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    stored_at REAL NOT NULL,
    delivered_at REAL
);
CREATE UNIQUE INDEX readings_identity ON readings(ident, id);
CREATE INDEX readings_pending ON readings(seq) WHERE delivered_at IS NULL;
CREATE INDEX readings_delivered ON readings(delivered_at) WHERE delivered_at IS NOT NULL;
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters(name, value) VALUES ('pending', 0), ('pending_bytes', 0), ('delivered', 0);
CREATE TABLE refusals (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE bindings (
    address TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    patient TEXT NOT NULL,
    bonded INTEGER NOT NULL,
    bound_at REAL NOT NULL,
    bound_by TEXT NOT NULL
);
CREATE TABLE consents (
    patient TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    granted_at REAL,
    granted_by TEXT,
    revoked_at REAL,
    revoked_by TEXT
);
CREATE TABLE cursors (
    address TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    last_device_time TEXT,
    clock_offset_s INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

#: v1 -> v2: devices remember when they were last seen; bindings are looked up by patient.
#: (Readings deliberately have no patient index: it costs ~12% of append throughput, and
#: purging a patient is rare enough to scan.)
V1_TO_V2 = """
ALTER TABLE bindings ADD COLUMN last_seen REAL;
CREATE INDEX bindings_patient ON bindings(patient);
"""

#: v2 -> v3: readings received while the hub clock was not synchronised are held (stored,
#: not handed to the forwarder) until their times are corrected (edge.intake.timing).
V2_TO_V3 = """
ALTER TABLE readings ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
CREATE INDEX readings_held ON readings(seq) WHERE held = 1 AND delivered_at IS NULL;
"""

MIGRATIONS: tuple[str, ...] = (V1_TO_V2, V2_TO_V3)

#: the version this code writes
CURRENT_VERSION = 1 + len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    """The schema version of an open database; 0 for an empty one."""
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not row[0]:
        return 0
    got = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(got[0] or 0)


def migrate(conn: Connection, now: float, *, target: int = CURRENT_VERSION) -> tuple[int, int]:
    """Bring the database to ``target``, each step in its own transaction.

    Returns ``(from_version, to_version)``. A database newer than this code is refused by
    the caller (it cannot be read safely).
    """
    start = current_version(conn)
    version = start
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while this one waited for the write lock.
            version = current_version(conn)
            if version >= target:
                conn.execute("COMMIT")
                break
            script = V1 if version == 0 else MIGRATIONS[version - 1]
            for statement in _statements(script):
                conn.execute(statement)
            version += 1
            conn.execute(
                "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)", (version, now)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start, version


def _statements(script: str) -> list[str]:
    """Split a script into whole statements (a trigger holds ';' inside BEGIN ... END)."""
    out: list[str] = []
    buf = ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlcipher3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
