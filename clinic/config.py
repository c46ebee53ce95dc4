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

from clinic.errors import ConfigError, UsageError
from edge.config import ID_RE, PIN_RE

DEFAULT_CONFIG_PATH = Path("/etc/clinic/clinic.toml")
EXAMPLE = "config/clinic.example.toml"

_INSECURE_DSN_RE = re.compile(r"sslmode\s*=\s*(disable|allow|prefer)", re.IGNORECASE)
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", ""})
_KV_HOST_RE = re.compile(r"(?:^|\s)host\s*=\s*(\S+)")
#: ``clinic ingest --worker NAME``: NAME is a level of the worker's certificate CN
_WORKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
#: in broker.client_cert / client_key: the worker's name (each worker has its own certificate)
WORKER_PLACEHOLDER = "{worker}"


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
    #: the clinic's name; ingest worker NAME's certificate CN (= its MQTT client id, which
    #: the broker sets to the CN) is ``<id>-ingest-<NAME>``
    id: str

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.match(v):
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
    #: each ingest worker's own certificate (CN ``<clinic.id>-ingest-<NAME>``) and key;
    #: ``{worker}`` in either path stands for the worker's NAME
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
        if not all(PIN_RE.match(p) for p in v):
            raise ValueError("each pin must look like sha256/<44 base64 characters>")
        return v

    @field_validator("topic_prefix", "share_group")
    @classmethod
    def _level(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "#+\0$"):
            raise ValueError("must be non-empty, without '#', '+', '$' or edge '/'")
        return v

    @field_validator("client_cert", "client_key")
    @classmethod
    def _placeholder(cls, v: Path) -> Path:
        if any(c in str(v).replace(WORKER_PLACEHOLDER, "") for c in "{}"):
            raise ValueError("the only placeholder a path may hold is {worker}")
        if WORKER_PLACEHOLDER in str(v.parent):
            raise ValueError("{worker} may stand only in the file name, not in a directory")
        return v

    @model_validator(mode="after")
    def _both_or_neither(self) -> BrokerSection:
        if self.per_worker != (WORKER_PLACEHOLDER in str(self.client_key)):
            raise ValueError("client_cert and client_key must both contain {worker}, or "
                             "neither")
        return self

    @property
    def per_worker(self) -> bool:
        """The paths name each worker's own files (``{worker}``)."""
        return WORKER_PLACEHOLDER in str(self.client_cert)

    def identity_files(self, worker: str) -> tuple[Path, Path]:
        """Worker ``worker``'s certificate and key paths."""
        return (Path(str(self.client_cert).replace(WORKER_PLACEHOLDER, worker)),
                Path(str(self.client_key).replace(WORKER_PLACEHOLDER, worker)))


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


def ingest_identity(cfg: ClinicConfig, worker: str) -> str:
    """The certificate CN of ingest worker ``worker``, which is also its MQTT client id (the
    broker replaces a client id with the certificate's CN): ``<clinic.id>-ingest-<NAME>``."""
    return f"{cfg.clinic.id}-ingest-{worker}"


def check_worker_name(worker: str) -> str:
    """``--worker NAME``; UsageError when NAME cannot be part of a CN and a file name."""
    if not _WORKER_RE.match(worker):
        raise UsageError("--worker must be 1-32 letters, digits, '.', '_' or '-' (starting "
                         "with a letter or digit)")
    return worker


def _certificate_cn(path: Path) -> str | None:
    """The subject CN of the first certificate in ``path``; None when unreadable."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (OSError, ValueError):
        return None
    return str(names[0].value) if names else None


def _key_problems(key: str, path: Path) -> list[str]:
    if not path.is_file():
        return [f"{key}: {path} does not exist — fix: correct the path"]
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"{key}: {path} is readable by others — fix: chmod 600 {path}"]
    return []


def worker_problems(cfg: ClinicConfig, worker: str) -> list[str]:
    """What stops ingest worker ``worker`` from connecting as itself: its certificate or key
    missing, its key readable by others, or a certificate whose CN is not
    ``<clinic.id>-ingest-<worker>`` (the broker would connect it as someone else)."""
    cert, key = cfg.broker.identity_files(worker)
    want = ingest_identity(cfg, worker)
    if not cert.is_file():
        return [f"broker.client_cert: {cert} does not exist — fix: issue worker {worker} its "
                f"own certificate (CN {want}) and key there"]
    out: list[str] = []
    cn = _certificate_cn(cert)
    if cn is None:
        out.append(f"broker.client_cert: {cert} is not a PEM certificate — fix: correct the "
                   "path")
    elif cn != want:
        out.append(f"broker.client_cert: {cert} has CN {cn!r}, but worker {worker} must "
                   f"connect as {want!r} — fix: issue each worker its own certificate with "
                   f"CN {want} (the broker makes the CN the MQTT client id)")
    return out + _key_problems("broker.client_key", key)


def _worker_certificates(cfg: ClinicConfig) -> dict[str, Path]:
    """The workers whose certificate exists: the file names in broker.client_cert's directory
    that ``{worker}`` (standing for a valid worker name) matches."""
    cert = cfg.broker.client_cert
    # the first {worker} captures the name, any further one must repeat it
    first, *more = cert.name.split(WORKER_PLACEHOLDER)
    regex = re.escape(first) + "".join(
        ("(?P<w>[^/]+)" if i == 0 else "(?P=w)") + re.escape(p) for i, p in enumerate(more))
    found: dict[str, Path] = {}
    try:
        entries = sorted(cert.parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        m = re.fullmatch(regex, entry.name)
        if m and _WORKER_RE.match(m["w"]):
            found[m["w"]] = entry
    return found


def file_problems(cfg: ClinicConfig) -> list[str]:
    """What is wrong on disk: missing files, world-readable keys, keys inside data dirs, and
    ingest certificates whose CN is not ``<clinic.id>-ingest-<NAME>`` (each worker's, when
    the paths hold ``{worker}``)."""
    out: list[str] = []
    for key, path in (("hubs.ca_file", cfg.hubs.ca_file), ("broker.ca_file", cfg.broker.ca_file)):
        if not path.is_file():
            out.append(f"{key}: {path} does not exist — fix: create it or correct the path")
    b = cfg.broker
    prefix = ingest_identity(cfg, "")
    if b.per_worker:
        workers = _worker_certificates(cfg)
        if not workers:
            out.append(f"broker.client_cert: no file matches {b.client_cert} — fix: issue each "
                       f"ingest worker NAME its own certificate (CN {prefix}NAME) there")
        for name in workers:
            out += worker_problems(cfg, name)
    elif not b.client_cert.is_file():
        out.append(f"broker.client_cert: {b.client_cert} does not exist — fix: create it or "
                   "correct the path")
        out += _key_problems("broker.client_key", b.client_key)
    else:
        # one certificate for one worker: its CN says which (`clinic ingest --worker NAME`)
        cn = _certificate_cn(b.client_cert) or ""
        name = cn.removeprefix(prefix) if cn.startswith(prefix) else ""
        if _WORKER_RE.match(name):
            out += worker_problems(cfg, name)
        else:
            out.append(f"broker.client_cert: {b.client_cert} has CN {cn!r}, not an ingest "
                       f"worker's ({prefix}NAME) — fix: issue each worker its own certificate "
                       "(the broker makes the CN the MQTT client id), or write {worker} in "
                       "the paths")
            out += _key_problems("broker.client_key", b.client_key)
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


def check_worker(cfg: ClinicConfig, worker: str) -> None:
    """``clinic ingest --worker NAME`` may start: ConfigError (one line per problem) when its
    certificate, key or CN is wrong (see :func:`worker_problems`)."""
    problems = worker_problems(cfg, check_worker_name(worker))
    if problems:
        raise ConfigError(f"worker {worker} cannot connect as itself", problems)
