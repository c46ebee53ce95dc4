"""The versioned schema. ``migrate`` applies what is missing under an advisory lock, so two
processes migrating at once do it once; each version commits with its row in
``schema_migrations``. Never edit a shipped version: add the next one."""

from __future__ import annotations

from clinic.db.connect import Conn

#: advisory lock ids (any fixed 64-bit numbers, unique within this database)
MIGRATE_LOCK = 0x636C696E69630001
AUDIT_LOCK = 0x636C696E69630002
ALERTS_LOCK = 0x636C696E69630003

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE hubs (
    hub_id          text PRIMARY KEY,
    enrolled_at     timestamptz NOT NULL,
    revoked_at      timestamptz,
    online          boolean,
    last_seen       timestamptz,
    queue_depth     bigint,
    cert_days_left  double precision,
    status_at       timestamptz
);
CREATE TABLE patients (
    pseudonym       text PRIMARY KEY,
    hub_id          text NOT NULL REFERENCES hubs,
    -- a name is PHI: sealed with the data key like observations
    name_key_id     text,
    name_enc        bytea,
    added_at        timestamptz NOT NULL
);
CREATE TABLE users (
    username        text PRIMARY KEY,
    role            text NOT NULL CHECK (role IN ('admin', 'clinician', 'auditor')),
    password_hash   text NOT NULL,
    totp_key_id     text NOT NULL,
    totp_enc        bytea NOT NULL,
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL
);
CREATE TABLE assignments (
    pseudonym       text NOT NULL REFERENCES patients,
    username        text NOT NULL REFERENCES users,
    PRIMARY KEY (pseudonym, username)
);
CREATE TABLE observations (
    id              bigserial PRIMARY KEY,
    identifier      text NOT NULL UNIQUE,
    patient         text NOT NULL,
    hub_id          text NOT NULL,
    code            text NOT NULL,
    effective_at    timestamptz,
    received_at     timestamptz NOT NULL,
    key_id          text NOT NULL,
    resource_enc    bytea NOT NULL
);
CREATE INDEX observations_patient_code_time ON observations (patient, code, effective_at);
CREATE TABLE quarantine (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL,
    topic           text NOT NULL,
    reason          text NOT NULL,
    size            bigint NOT NULL,
    sha256          bytea NOT NULL,
    key_id          text,
    payload_enc     bytea
);
CREATE INDEX quarantine_reason ON quarantine (reason);
CREATE TABLE ingest_counters (
    worker          text NOT NULL,
    name            text NOT NULL,
    value           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (worker, name)
);
CREATE TABLE audit_log (
    seq             bigint PRIMARY KEY,
    at              timestamptz NOT NULL,
    actor           text NOT NULL,
    action          text NOT NULL,
    target          text NOT NULL,
    detail          text NOT NULL,
    prev_hash       bytea NOT NULL,
    hash            bytea NOT NULL
);
CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    patient         text NOT NULL,
    kind            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    opened_at       timestamptz NOT NULL,
    resolved_at     timestamptz
);
"""),
    # 2: alerts (acknowledgement, rule state, per-patient thresholds), hub offline spells,
    # heart-rate rollups (clinic.alerts, clinic.db.rollups)
    (2, """
-- alerts: acknowledgement (the note is free text, so sealed like observations), the hub of a
-- hub_offline alert, and at most one open (or acknowledged) alert per patient and kind
ALTER TABLE alerts
    ADD COLUMN hub_id           text,
    ADD COLUMN acknowledged_at  timestamptz,
    ADD COLUMN acknowledged_by  text,
    ADD COLUMN note_key_id      text,
    ADD COLUMN note_enc         bytea;
CREATE UNIQUE INDEX alerts_one_open ON alerts (patient, kind) WHERE state <> 'resolved';
CREATE INDEX alerts_state ON alerts (state, opened_at);
-- what the rules remember per patient; the row is also the lock that serialises alert
-- decisions about one patient across workers and the evaluator
CREATE TABLE alert_state (
    patient         text PRIMARY KEY,
    last_reading_at timestamptz,
    glucose_at      timestamptz,
    hr_at           timestamptz,
    hr_side         text CHECK (hr_side IN ('low', 'high')),
    hr_run          integer NOT NULL DEFAULT 0,
    hr_ok_run       integer NOT NULL DEFAULT 0
);
-- per-patient thresholds; NULL = the [alerts] default from the config
CREATE TABLE alert_thresholds (
    patient                     text PRIMARY KEY REFERENCES patients ON DELETE CASCADE,
    glucose_urgent_low_mg_dl    numeric,
    glucose_low_mg_dl           numeric,
    glucose_high_mg_dl          numeric,
    heart_rate_low_bpm          numeric,
    heart_rate_high_bpm         numeric,
    heart_rate_sustain_samples  integer,
    stale_after_s               double precision,
    updated_at                  timestamptz NOT NULL
);
-- when a hub's current offline spell began (a re-delivered retained Last Will keeps it)
ALTER TABLE hubs ADD COLUMN offline_since timestamptz;
-- per-minute heart-rate rollups beside the raw rows (which retention purges); the figures
-- are sealed with the data key like the observations they summarise
CREATE TABLE hr_rollups (
    patient         text NOT NULL,
    minute          timestamptz NOT NULL,
    key_id          text NOT NULL,
    stats_enc       bytea NOT NULL,
    PRIMARY KEY (patient, minute)
);
CREATE INDEX observations_code_received ON observations (code, received_at);
"""),
    # 3: the web application (clinic.web): server-side sessions (the cookie's SHA-256 only),
    # sign-in failures for throttling and lockout, hashed API tokens, per-user preferences.
    (3, """
CREATE TABLE web_sessions (
    id_hash         bytea PRIMARY KEY,
    username        text NOT NULL REFERENCES users,
    csrf            text NOT NULL,
    created_at      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (username);
CREATE TABLE signin_failures (
    username        text PRIMARY KEY,
    failures        integer NOT NULL,
    last_at         timestamptz NOT NULL,
    locked_until    timestamptz
);
CREATE TABLE api_tokens (
    id              bigserial PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE,
    username        text NOT NULL REFERENCES users,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz,
    revoked_at      timestamptz
);
CREATE TABLE user_prefs (
    username        text PRIMARY KEY REFERENCES users,
    glucose_unit    text NOT NULL CHECK (glucose_unit IN ('mg/dL', 'mmol/L'))
);
"""),
    # 4: the indexed text columns ingest writes compare bytewise (COLLATE "C": memcmp, not
    # the server locale's strcoll on every btree comparison of every insert). Their values are
    # ASCII (uuids, pseudonyms, hub ids, LOINC codes) and every reader compares them for
    # equality only, which "C" and the database default agree on (a default-collation
    # parameter or column compared with a "C" column takes "C", no conflict). No table
    # rewrite (text to text), but the indexes on these columns are rebuilt.
    (4, """
ALTER TABLE observations
    ALTER COLUMN identifier TYPE text COLLATE "C",
    ALTER COLUMN patient TYPE text COLLATE "C",
    ALTER COLUMN hub_id TYPE text COLLATE "C",
    ALTER COLUMN code TYPE text COLLATE "C";
ALTER TABLE hr_rollups ALTER COLUMN patient TYPE text COLLATE "C";
"""),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: Conn) -> int:
    """The applied schema version (0 for an empty database)."""
    row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    if row is None or row[0] is None:
        return 0
    got = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(got[0]) if got else 0


def migrate(conn: Conn) -> list[int]:
    """Apply every missing version; returns those applied (empty when up to date)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        # Each version by itself (not "everything above the highest"): a database that got a
        # later version first still gets an earlier one added afterwards.
        have = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, sql in sorted(MIGRATIONS):
            if version in have:
                continue
            conn.execute(sql.encode())  # a constant from this module, not input
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
