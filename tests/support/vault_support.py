"""Helpers for the vault tests: configs, keys and readings with distinctive values."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from edge.config import VaultConfig
from edge.readings import GlucoseReading, HeartRateReading, stable_reading_id
from edge.vault.keys import encode_key, new_key

BASE_TIME = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def vault_config(tmp: Path, **overrides: Any) -> VaultConfig:
    """A file-provider config: data in tmp/data (0700), key in tmp/keys (0700)."""
    data = tmp / "data"
    keys = tmp / "keys"
    for d in (data, keys):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
    values: dict[str, Any] = {
        "path": data / "vault.db",
        "key_provider": "file",
        "key_file": keys / "vault.key",
    }
    values.update(overrides)
    return VaultConfig(**values)


def write_key(cfg: VaultConfig, key: bytes | None = None) -> bytes:
    """Store a key for a file-provider config (0600) and return it."""
    key = key or new_key()
    assert cfg.key_file is not None
    fd = os.open(cfg.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_key(key))
    return key


def hr(i: int, *, patient: str = "pt-alpha", device: str = "AA:BB:CC:DD:EE:01",
       bpm: int = 72, start: datetime = BASE_TIME) -> HeartRateReading:
    """A heart-rate reading i seconds after ``start``."""
    t = start + timedelta(seconds=i)
    return HeartRateReading(
        id=stable_reading_id(device, "2a37", t.isoformat()),
        device_id=device,
        patient=patient,
        effective_time=t,
        time_source="gateway",
        received_at=t,
        bpm=bpm,
        sensor_contact="detected",
    )


def glucose(seq: int, *, patient: str = "pt-alpha", device: str = "AA:BB:CC:DD:EE:02",
            mg_dl: str = "104", start: datetime = BASE_TIME) -> GlucoseReading:
    """A glucose record with meter sequence ``seq``."""
    t = start + timedelta(minutes=seq)
    return GlucoseReading(
        id=stable_reading_id(device, "2a18", str(seq)),
        device_id=device,
        patient=patient,
        effective_time=t,
        time_source="device",
        received_at=t,
        sequence_number=seq,
        device_time=t.replace(tzinfo=None),
        concentration=Decimal(mg_dl) / Decimal(100000),
        unit="kg/L",
        mg_dl=Decimal(mg_dl),
        mmol_l=(Decimal(mg_dl) / Decimal("18.016")).quantize(Decimal("0.1")),
    )


def file_digests(path: Path) -> dict[str, str | None]:
    """SHA-256 of the database and its -wal/-shm files (None when absent)."""
    out: dict[str, str | None] = {}
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        out[suffix or "db"] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
    return out


def write_gateway_config(tmp: Path, cfg: VaultConfig) -> Path:
    """A gateway TOML whose [vault] section is ``cfg`` (uplink files need not exist)."""
    lines = [
        "[hub]", 'id = "hub-test"', "",
        "[vault]",
        f'path = "{cfg.path}"',
        f'key_provider = "{cfg.key_provider}"',
    ]
    if cfg.key_file is not None:
        lines.append(f'key_file = "{cfg.key_file}"')
    lines += [
        f'key_env = "{cfg.key_env}"',
        f"allow_env_key = {'true' if cfg.allow_env_key else 'false'}",
        f'key_credential = "{cfg.key_credential}"',
        f"max_pending = {cfg.max_pending}",
        f"max_pending_bytes = {cfg.max_pending_bytes}",
        f"retention_days = {cfg.retention_days}",
        f"flush_interval_s = {cfg.flush_interval_s}",
        "",
        "[e2e]", 'mode = "off"', "",
        "[uplink]",
        'host = "127.0.0.1"',
        f'ca_file = "{tmp}/ca.pem"',
        f'client_cert = "{tmp}/client.pem"',
        f'client_key = "{tmp}/client.key"',
        'pins = ["sha256/' + "A" * 43 + '="]',
    ]
    path = tmp / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
