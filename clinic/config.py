"""The clinic's configuration: TOML into pydantic models; unknown keys and insecure values are
errors, each reported as one line ``key.path: what — fix: how`` (never echoing a value)."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clinic.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/clinic/clinic.toml")
EXAMPLE = "config/clinic.example.toml"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PIN_RE = re.compile(r"^sha256/[A-Za-z0-9+/]{43}=$")
_INSECURE_DSN_RE = re.compile(r"sslmode\s*=\s*(disable|allow|prefer)", re.IGNORECASE)
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", ""})
_KV_HOST_RE = re.compile(r"(?:^|\s)host\s*=\s*(\S+)")


def _is_local(dsn: str) -> bool:
    """Loopback or a Unix socket: no network for TLS to protect."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        host = host or dict(parse_qsl(parts.query)).get("host", "")
    else:
        m = _KV_HOST_RE.search(dsn)
        host = m.group(1) if m else ""
    return host in _LOCAL_HOSTS or host.startswith("/")

Positive = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClinicSection(_Section):
    #: the CN of the clinic's client certificate; prefix of the MQTT client ids
    id: str

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return v


class DbSection(_Section):
    #: libpq connection string; credentials belong in ~/.pgpass or PGPASSWORD, not here
    dsn: str
    #: seconds a worker waits between attempts while PostgreSQL is unreachable
    retry_s: Positive = 1.0

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://", "host=", "dbname=")):
            raise ValueError("must be a postgresql:// URI or a libpq key=value string")
        if ":" in v.split("@", 1)[0].removeprefix("postgresql://").removeprefix("postgres://"):
            raise ValueError(
                "holds a password; put it in ~/.pgpass or $PGPASSWORD instead"
            )
        if not _is_local(v) and _INSECURE_DSN_RE.search(v):
            raise ValueError("a remote database needs sslmode=verify-full (or require)")
        return v


class KeysSection(_Section):
    provider: Literal["file", "systemd-credential", "env"] = "file"
    #: file provider: a 0700 directory outside any data directory; PEM private keys in it
    dir: Path = Path("/etc/clinic/keys")
    #: systemd-credential provider: the credential names (in $CREDENTIALS_DIRECTORY)
    credential_prefix: str = "clinic-"
    #: env provider (tests only): the variable holding the key set as JSON
    env: str = "CLINIC_KEYS"
    allow_env_key: bool = False


class HubsSection(_Section):
    #: the CA whose certificates hubs sign Bundles with (x5c is checked against it)
    ca_file: Path


class BrokerSection(_Section):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    ca_file: Path
    client_cert: Path
    client_key: Path
    pins: list[str]
    tls_min_version: Literal["1.2", "1.3"] = "1.3"
    topic_prefix: str = "edge/v1"
    share_group: str = "clinic"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    #: the broker keeps a worker's session (and unacknowledged messages) this long
    session_expiry_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    #: MQTT 5 receive maximum: unacknowledged messages the broker may send one worker
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 200
    #: messages committed per transaction at most
    batch_max: Annotated[int, Field(ge=1, le=10_000)] = 200
    reconnect_base_s: Positive = 0.5
    reconnect_cap_s: Positive = 30.0

    @field_validator("tls_min_version", mode="before")
    @classmethod
    def _tls(cls, v: Any) -> Any:
        if str(v) in {"1", "1.0", "1.1"}:
            raise ValueError('TLS below 1.2 is insecure; use "1.2" or "1.3"')
        return str(v) if isinstance(v, float) else v

    @field_validator("pins")
    @classmethod
    def _pins(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("an empty pin list would trust any certificate of the CA")
        if not all(_PIN_RE.match(p) for p in v):
            raise ValueError("each pin must look like sha256/<44 base64 characters>")
        return v

    @field_validator("topic_prefix", "share_group")
    @classmethod
    def _level(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "#+\0$"):
            raise ValueError("must be non-empty, without '#', '+', '$' or edge '/'")
        return v


class WebSection(_Section):
    listen: str = "127.0.0.1:8443"
    tls_cert: Path = Path("/etc/clinic/tls/web.pem")
    tls_key: Path = Path("/etc/clinic/tls/web.key")
    idle_timeout_s: Annotated[int, Field(ge=60, le=8 * 3600)] = 900
    time_zone: str = "UTC"
    #: a session ends this long after sign-in however active it is
    session_lifetime_s: Annotated[int, Field(ge=300, le=7 * 24 * 3600)] = 12 * 3600
    #: consecutive sign-in failures for one username before it is locked
    max_failures: Annotated[int, Field(ge=3, le=100)] = 5
    #: how long a locked username stays locked
    lockout_s: Annotated[int, Field(ge=60, le=24 * 3600)] = 900
    #: a heart rate older than this is shown stale
    stale_hr_s: Annotated[int, Field(ge=60)] = 600
    #: a glucose reading older than this is shown stale (meters are used a few times a day)
    stale_glucose_s: Annotated[int, Field(ge=3600)] = 36 * 3600

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("is not an IANA time zone (e.g. \"Europe/Berlin\")") from exc
        return v


class IngestSection(_Section):
    #: a single envelope larger than this is refused (reason ``oversize``)
    max_message_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024
    #: raw heart-rate rows older than this are purged by the periodic evaluator (the
    #: per-minute rollups stay); 0 keeps them forever
    raw_retention_days: Annotated[float, Field(ge=0)] = 0


class AlertsSection(_Section):
    """Defaults for every patient; ``clinic alerts thresholds`` overrides them per patient."""

    #: glucose (mg/dL; mmol/L readings are converted, x 18.016)
    glucose_urgent_low_mg_dl: Positive = 54
    glucose_low_mg_dl: Positive = 70
    glucose_high_mg_dl: Positive = 250
    #: heart rate outside [low, high] bpm for this many consecutive samples opens an alert,
    #: and as many consecutive samples back inside resolve it (a single glitch does neither)
    heart_rate_low_bpm: Positive = 40
    heart_rate_high_bpm: Positive = 130
    heart_rate_sustain_samples: Annotated[int, Field(ge=1, le=3600)] = 10
    #: no reading from a patient for this long opens a ``stale`` alert
    stale_after_s: Annotated[float, Field(ge=60)] = 3600
    #: a hub offline (Last Will / state offline) this long opens ``hub_offline`` for its
    #: patients
    hub_offline_after_s: Annotated[float, Field(ge=1)] = 900
    #: how often the periodic evaluator (one at a time across workers) runs
    evaluate_interval_s: Annotated[float, Field(ge=1, le=3600)] = 60

    @model_validator(mode="after")
    def _ordered(self) -> AlertsSection:
        if not self.glucose_urgent_low_mg_dl < self.glucose_low_mg_dl < self.glucose_high_mg_dl:
            raise ValueError("glucose thresholds must be urgent_low < low < high")
        if not self.heart_rate_low_bpm < self.heart_rate_high_bpm:
            raise ValueError("heart_rate_low_bpm must be below heart_rate_high_bpm")
        return self


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class ClinicConfig(_Section):
    clinic: ClinicSection
    db: DbSection
    keys: KeysSection = KeysSection()
    hubs: HubsSection
    broker: BrokerSection
    web: WebSection = WebSection()
    ingest: IngestSection = IngestSection()
    alerts: AlertsSection = AlertsSection()
    log: LogSection = LogSection()


_FIX = {
    "extra_forbidden": f"remove it or correct its spelling (every key is in {EXAMPLE})",
    "missing": f"add it (see {EXAMPLE})",
    "literal_error": "use one of the allowed values",
    "int_parsing": "use a whole number",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "model_type": "make it a [section] table",
}


def describe(exc: ValidationError) -> list[str]:
    """One line per problem; values are never echoed."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {msg} — fix: {_FIX.get(err['type'], 'see ' + EXAMPLE)}")
    return lines


def resolve_path(cli_value: str | None, environ: dict[str, str] | None = None) -> Path:
    """``--config`` wins, then ``$CLINIC_CONFIG``, then /etc/clinic/clinic.toml."""
    env = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value)
    return Path(env["CLINIC_CONFIG"]) if env.get("CLINIC_CONFIG") else DEFAULT_CONFIG_PATH


def parse(data: dict[str, Any]) -> ClinicConfig:
    """Validate a TOML document; ConfigError listing every problem."""
    try:
        return ClinicConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid configuration", describe(exc)) from exc


def load(path: Path) -> ClinicConfig:
    """Read and validate ``path``."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("config not found", [f"{path}: file not found — fix: pass "
                                               "--config PATH or set CLINIC_CONFIG"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config unreadable", [f"{path}: cannot be read — fix: check "
                                                "its permissions"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config is not TOML", [f"{path}: not valid TOML ({exc}) — fix: "
                                                 "correct the syntax"]) from exc
    return parse(data)


def file_problems(cfg: ClinicConfig) -> list[str]:
    """What is wrong on disk: missing files, world-readable keys, keys inside data dirs."""
    out: list[str] = []
    for key, path in (("hubs.ca_file", cfg.hubs.ca_file), ("broker.ca_file", cfg.broker.ca_file),
                      ("broker.client_cert", cfg.broker.client_cert)):
        if not path.is_file():
            out.append(f"{key}: {path} does not exist — fix: create it or correct the path")
    ck = cfg.broker.client_key
    if not ck.is_file():
        out.append(f"broker.client_key: {ck} does not exist — fix: correct the path")
    elif ck.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        out.append(f"broker.client_key: {ck} is readable by others — fix: chmod 600 {ck}")
    if cfg.keys.provider == "env" and not cfg.keys.allow_env_key:
        out.append("keys.provider: \"env\" is for tests only — fix: use \"file\" or "
                   "\"systemd-credential\" (or set keys.allow_env_key = true in a test)")
    if cfg.keys.provider == "file":
        d = cfg.keys.dir
        if d.exists() and d.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            out.append(f"keys.dir: {d} is accessible by others — fix: chmod 700 {d}")
    return out


def check(cfg: ClinicConfig) -> None:
    """Raise ConfigError when :func:`file_problems` finds anything."""
    problems = file_problems(cfg)
    if problems:
        raise ConfigError("configuration problems", problems)
