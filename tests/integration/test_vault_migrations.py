"""Forward migrations: a database of every earlier schema version opens and is upgraded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlcipher3

from edge.config import VaultConfig
from edge.errors import VaultError
from edge.vault import Vault, schema
from edge.vault.models import identity_time_us
from tests.support.vault_support import BASE_TIME, hr, vault_config, write_key

pytestmark = pytest.mark.integration

ADDRESS = "AA:BB:CC:DD:EE:01"


def build_at_version(cfg: VaultConfig, key: bytes, version: int) -> None:
    """A vault file as a release with schema ``version`` left it, with data in it."""
    conn = sqlcipher3.connect(str(cfg.path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    assert schema.migrate(conn, time.time(), target=version) == (0, version)
    r = hr(0)
    payload = r.model_dump_json().encode()
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO readings(ident, id, patient, kind, payload, stored_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (identity_time_us(r), r.id, r.patient, r.kind, payload, BASE_TIME.timestamp()),
    )
    conn.execute("UPDATE counters SET value = 1 WHERE name = 'pending'")
    conn.execute("UPDATE counters SET value = ? WHERE name = 'pending_bytes'", (len(payload),))
    conn.execute(
        "INSERT INTO bindings(address, kind, patient, bonded, bound_at, bound_by) "
        "VALUES (?, 'heart_rate', 'pt-alpha', 1, ?, 'admin:old')",
        (ADDRESS, BASE_TIME.timestamp()),
    )
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.parametrize("version", range(1, schema.CURRENT_VERSION))
async def test_every_earlier_version_is_migrated_with_its_data(
    tmp_path: Path, version: int
) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    build_at_version(cfg, key, version)
    async with await Vault.open(cfg, key) as v:
        assert v.schema_version == schema.CURRENT_VERSION
        [p] = await v.next_batch(10)
        assert p.reading() == hr(0)
        [b] = await v.bindings()
        assert (b.address, b.patient, b.last_seen) == (ADDRESS, "pt-alpha", None)
        await v.touch_device(ADDRESS, BASE_TIME)  # v2's column works on a migrated file
        assert (await v.bindings())[0].last_seen == BASE_TIME
        assert (await v.append([hr(0), hr(1)])).duplicates == 1
        assert await v.integrity_check() == []
    conn = sqlcipher3.connect(str(cfg.path))
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    conn.close()
    assert versions == list(range(1, schema.CURRENT_VERSION + 1))
    assert "bindings_patient" in indexes
    assert auto_vacuum == 2  # incremental, set before the first table


async def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    cfg = vault_config(tmp_path)
    key = write_key(cfg)
    build_at_version(cfg, key, schema.CURRENT_VERSION)
    conn = sqlcipher3.connect(str(cfg.path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (schema.CURRENT_VERSION + 1,))
    conn.close()
    with pytest.raises(VaultError, match="newer"):
        await Vault.open(cfg, key)
