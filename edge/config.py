"""The gateway's configuration: TOML loaded into pydantic models.

Every problem is reported with its key path (``uplink.port``), what is wrong and how to fix
it. Unknown keys are errors. Insecure values are errors, not warnings.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge.config_checks import valid_host
from edge.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edge/gateway.toml")
EXAMPLE = "config/gateway.example.toml"

#: an identity that is also an MQTT topic level and a certificate CN (hubs, clinics, users)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: an SPKI pin as `edge pki pin` prints it
PIN_RE = re.compile(r"^sha256/[A-Za-z0-9+/]{43}=$")

PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubConfig(_Section):
    #: the hub's id: the MQTT client id, the CN of its client certificate, a topic level
    id: str

    @field_validator("id")
    @classmethod
    def _id_is_topic_safe(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-'")
        return v


_ADAPTER_RE = re.compile(r"^hci\d{1,3}$")


class BleConfig(_Section):
    #: the Bluetooth adapters (BlueZ names) devices are spread over, in order of preference
    adapters: Annotated[tuple[str, ...], Field(min_length=1, max_length=16)] = ("hci0",)
    #: scanning runs in windows of this length while a bound device is missing
    scan_seconds: PositiveFloat = 10.0
    #: give up one connection attempt after this long
    connect_timeout_s: PositiveFloat = 20.0
    #: connection attempts in flight at once, per adapter (adapters have 5-7 connection slots)
    max_concurrent_connects: Annotated[int, Field(ge=1, le=7)] = 3
    #: an adapter whose StartDiscovery fails (InProgress / NotReady) this many times in a row
    #: is wedged: it is power-cycled
    wedge_scan_failures: Annotated[int, Field(ge=1, le=100)] = 3
    #: ... and so is one that hears no advertisement at all for this many scan windows in a
    #: row while bound devices are missing
    wedge_silent_windows: Annotated[int, Field(ge=1, le=1000)] = 6
    #: an adapter is power-cycled at most once per this many seconds
    power_cycle_min_interval_s: Annotated[float, Field(ge=1)] = 900.0
    #: a device in ``needs_pairing`` (it lost its bond) is tried again this rarely (and at once
    #: when the allow-list is re-read, as ``edge pair`` does)
    needs_pairing_retry_s: Annotated[float, Field(ge=1)] = 3600.0

    @model_validator(mode="before")
    @classmethod
    def _one_adapter_key(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            return data
        if "adapter" in data and "adapters" in data:
            raise ValueError("set `adapters` or the older `adapter`, not both "
                             "(e.g. adapters = [\"hci0\", \"hci1\"])")
        out = dict(data)
        if "adapter" in out:  # the older single-adapter key
            out["adapters"] = [out.pop("adapter")]
        return out

    @property
    def adapter(self) -> str:
        """The first adapter (``edge pair`` and ``edge scan`` use it)."""
        return self.adapters[0]

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in v if not _ADAPTER_RE.match(a)]
        if bad:
            raise ValueError(f"adapter names look like hci0, got {', '.join(map(repr, bad))}")
        if len(set(v)) != len(v):
            raise ValueError("an adapter is listed twice")
        return v
    reconnect_base_s: PositiveFloat = 1.0
    reconnect_cap_s: PositiveFloat = 60.0
    #: a connected heart-rate session with no notification for this long is restarted
    stall_timeout_s: PositiveFloat = 15.0
    #: a glucose record transfer (RACP) with no progress for this long is aborted
    racp_timeout_s: PositiveFloat = 30.0
    #: heart-rate notifications beyond this sustained rate per strap are refused
    #: (``rate_limited``), not stored; real straps notify at about 1 Hz
    heart_rate_max_hz: PositiveFloat = 4.0
    #: how many notifications a strap may send at once above that rate (token bucket)
    heart_rate_burst: Annotated[int, Field(ge=1, le=1000)] = 8


class IntakeConfig(_Section):
    #: device-timed measurements before 1 January of this year (UTC) are refused
    #: (``implausible_time``), counted and audited
    earliest_measurement_year: Annotated[int, Field(ge=1583, le=9999)] = 2000
    #: ... and so are those more than this many seconds after the hub's own clock
    max_future_s: Annotated[float, Field(ge=0)] = 86400.0


class VaultConfig(_Section):
    path: Path = Path("/var/lib/edge/vault.db")
    key_provider: Literal["systemd-credential", "file", "env"] = "systemd-credential"
    #: with key_provider = "file": a 0600/0400 file outside the vault's directory
    key_file: Path | None = None
    #: with key_provider = "systemd-credential": the credential's name in $CREDENTIALS_DIRECTORY
    key_credential: str = "vault-key"
    #: with key_provider = "env": the variable holding the hex key
    key_env: str = "EDGE_VAULT_KEY"
    #: the env provider is for tests only and must be allowed explicitly
    allow_env_key: bool = False
    #: a week offline is the hub's worst day: 10 devices at 1 Hz for 7 days is 6 M readings,
    #: about 3.2 GB (``vault.bytes_per_pending_reading``); the disk's free space is checked too
    max_pending: Annotated[int, Field(ge=1)] = 7_000_000
    max_pending_bytes: Annotated[int, Field(ge=4096)] = 4 << 30
    retention_days: Annotated[float, Field(ge=0)] = 7.0
    #: a power cut loses at most this many seconds of streamed readings (never a glucose
    #: record): accepted readings go to an encrypted side log, fsynced this often. 0: every
    #: append, delivered mark and last-seen time is its own durable transaction (SD wear!)
    flush_interval_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    #: how often the side log is merged into the database (fewer, larger merges write less)
    merge_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: merge earlier once this many readings and delivered marks wait in memory
    merge_max_readings: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    #: SQLCipher's page cache for the daemon's one connection, in KiB. The sqlcipher3 build's
    #: default (8,000 KiB) fills slowly as the vault grows, which read as a memory leak on a
    #: 256 MB unit; the writes are appends and the reads touch the newest pages, so 2 MiB
    #: costs nothing measurable (see the README's Figures)
    cache_kib: Annotated[int, Field(ge=256, le=65_536)] = 2048


class UplinkConfig(_Section):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    ca_file: Path
    client_cert: Path
    #: PEM private key of the hub; may be encrypted (see client_key_passphrase_file)
    client_key: Path | None = None
    #: read the client key from this systemd credential instead of client_key
    client_key_credential: str | None = None
    client_key_passphrase_file: Path | None = None
    #: SPKI pins of the broker or its issuing CA: ["sha256/<base64>", ...]
    pins: list[str]
    tls_min_version: Literal["1.2", "1.3"] = "1.3"
    topic_prefix: str = "edge/v1"
    mqtt_version: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    batch_max_readings: Annotated[int, Field(ge=1, le=1000)] = 50
    batch_max_bytes: Annotated[int, Field(ge=1024, le=262_144)] = 262_144
    inflight_window: Annotated[int, Field(ge=1, le=1000)] = 20
    #: a PUBACK not received after this long counts the message as lost; it is re-sent
    ack_timeout_s: PositiveFloat = 30.0
    #: MQTT 5 message expiry for observation bundles
    message_expiry_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    status_interval_s: PositiveFloat = 60.0
    reconnect_base_s: PositiveFloat = 1.0
    reconnect_cap_s: PositiveFloat = 60.0

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not valid_host(v):
            raise PydanticCustomError(
                "host", "must be the broker's DNS name or IP address (no scheme, port, path "
                "or spaces)")
        return v

    @field_validator("tls_min_version", mode="before")
    @classmethod
    def _tls_floor(cls, v: object) -> object:
        if isinstance(v, str | float | int) and str(v) in {"1.0", "1.1", "1", "1.0.0"}:
            raise ValueError("TLS below 1.2 is insecure and not allowed; use \"1.2\" or \"1.3\"")
        return str(v) if isinstance(v, float) else v

    @field_validator("pins")
    @classmethod
    def _pins(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(
                "an empty pin list would trust any certificate of the CA; "
                "add the broker's pin (edge pki pin CERT)"
            )
        for pin in v:
            if not PIN_RE.match(pin):
                raise ValueError("each pin must look like sha256/<44 base64 characters>")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "#+\0"):
            raise ValueError("must be non-empty, without '#', '+', or a leading/trailing '/'")
        return v


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class DaemonConfig(_Section):
    #: local control socket for `edge status` / `edge consent` (owner and group only)
    control_socket: Path = Path("/run/edge/control.sock")
    #: seconds between health checks that drive the systemd watchdog
    health_interval_s: PositiveFloat = 5.0
    #: shutdown budget after SIGTERM/SIGINT
    shutdown_timeout_s: PositiveFloat = 8.0
    #: control connections served at once; more are answered "busy" and closed
    control_max_connections: Annotated[int, Field(ge=1, le=1024)] = 32
    #: a control connection that sends no complete request for this long is closed
    control_idle_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0


class ClockConfig(_Section):
    """Where the daemon learns whether the hub's wall clock can be trusted."""

    #: "system": systemd-timesyncd's flag, else the kernel's error estimate (readings received
    #: before the clock is synchronised wait in the vault and are forwarded with corrected
    #: times); "flag-file": synchronised exactly while ``flag_file`` exists (another time
    #: daemon's hook creates it); "assume-synchronised": trust the wall clock as it is (test
    #: rigs and machines whose clock is set by other means)
    source: Literal["system", "flag-file", "assume-synchronised"] = "system"
    #: with source = "flag-file": the file that exists exactly while the clock is synchronised
    #: (on a tmpfs such as /run, so that it cannot outlive a boot)
    flag_file: Path | None = Field(default=None, validate_default=True)

    @field_validator("flag_file")
    @classmethod
    def _flag_file_with_its_source(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        # ``source`` is declared first, so it is in info.data when it is valid
        source = info.data.get("source")
        if source == "flag-file":
            if v is None:
                raise ValueError('required with source = "flag-file": set flag_file = '
                                 '"/run/<time daemon>/synchronised" (the file your time '
                                 "daemon creates once the clock is synchronised)")
            if not v.is_absolute():
                raise ValueError("must be an absolute path (the daemon's working directory "
                                 'is not the config\'s), e.g. "/run/chrony/synchronised"')
        elif v is not None and source is not None:
            raise ValueError(f'only used with source = "flag-file" (source is "{source}"): '
                             'remove flag_file or set source = "flag-file"')
        return v


E2E_MODES = ("sign+encrypt", "off")
#: the one-line fix for a missing or unknown e2e mode: every deployment decides
E2E_FIX = (
    'add [e2e] mode = "sign+encrypt" (recommended, with recipient_key = the clinic\'s public '
    'key PEM from `clinic keys public`) or mode = "off" (plaintext FHIR inside TLS)'
)


class E2eConfig(_Section):
    """End-to-end protection of each Bundle, beyond the TLS hop to the broker."""

    #: "sign+encrypt": JWE(JWS(Bundle)) to the clinic; "off": the Bundle as plain FHIR JSON.
    #: No default: a deployment must choose.
    mode: Literal["sign+encrypt", "off"]
    #: with sign+encrypt: the clinic's P-256 public key (PEM)
    recipient_key: Path | None = None
    #: with sign+encrypt: deflate the JWS before encrypting it (JWE "zip": "DEF"), ~10x smaller.
    #: Off by default: RFC 8725 §3.6 advises against compressing before encrypting (the
    #: length can tell about the plaintext) and not every JOSE library still reads "zip".
    compress: bool = False

    @field_validator("compress")
    @classmethod
    def _compress_needs_sealing(cls, v: bool, info: ValidationInfo) -> bool:
        # ``mode`` is declared first, so it is in info.data when it is valid
        if v and info.data.get("mode") == "off":
            raise ValueError('only used with mode = "sign+encrypt" (mode "off" sends plain FHIR '
                             "JSON, there is no JWE to compress): remove compress or set "
                             'mode = "sign+encrypt"')
        return v

    @property
    def enabled(self) -> bool:
        """Bundles are signed and encrypted."""
        return self.mode == "sign+encrypt"


class GatewayConfig(_Section):
    hub: HubConfig
    ble: BleConfig = BleConfig()
    intake: IntakeConfig = IntakeConfig()
    vault: VaultConfig = VaultConfig()
    uplink: UplinkConfig
    e2e: E2eConfig
    log: LogConfig = LogConfig()
    daemon: DaemonConfig = DaemonConfig()
    clock: ClockConfig = ClockConfig()


# --- loading and reporting ---------------------------------------------------------------------

_FIX_BY_TYPE = {
    "extra_forbidden": "remove it or correct its spelling (every key is in " + EXAMPLE + ")",
    "missing": "add it (see " + EXAMPLE + ")",
    "literal_error": "use one of the allowed values",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "float_parsing": "use a number",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "string_type": "use a quoted string",
    "list_type": "use a list, e.g. [\"...\"]",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "model_type": "make it a [section] table",
    "host": "set the name in the broker's certificate, e.g. broker.example.org",
}


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: ``key.path: what is wrong — fix: how``. Never echoes values."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        path = _key_path(tuple(err["loc"]))
        kind = err["type"]
        msg = err["msg"]
        if kind == "value_error":
            msg = msg.removeprefix("Value error, ")
            fix = "see " + EXAMPLE
        else:
            fix = _FIX_BY_TYPE.get(kind, "see " + EXAMPLE)
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "missing" if path == "e2e" else "required key is missing"
        if path in ("e2e", "e2e.mode") and kind in ("missing", "literal_error", "model_type"):
            fix = E2E_FIX
        lines.append(f"{path}: {msg} — fix: {fix}")
    return lines


def resolve_config_path(cli_value: str | os.PathLike[str] | None) -> Path:
    """``--config`` wins, then ``$EDGE_CONFIG``, then /etc/edge/gateway.toml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get("EDGE_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def parse_config(data: Mapping[str, object]) -> GatewayConfig:
    """Validate a parsed TOML document; raises ConfigError listing every problem."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid configuration", describe_validation_error(exc)) from exc


def read_toml(path: Path) -> dict[str, object]:
    """The parsed TOML document at ``path``; ConfigError (one line) if missing or invalid."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} not found",
            [f"{path}: file not found — fix: pass --config PATH or set EDGE_CONFIG"],
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"config file {path} unreadable",
            [f"{path}: cannot be read ({exc.strerror}) — fix: check its permissions"],
        ) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "config is not valid TOML", [f"{path}: not valid TOML: {exc} — fix: correct the syntax"]
        ) from exc
    return data


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the TOML file at ``path``. Relative paths inside it are kept as given."""
    return parse_config(read_toml(path))
