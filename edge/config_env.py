"""The checks of a loaded gateway config that the schema cannot see: missing files, key files
with loose permissions or in the vault's directory, the e2e recipient key, and (through
:mod:`edge.config_checks`) owners, the control socket's directory and the client certificate's
CN. ``load_checked`` loads, validates and checks in one call, as the CLI and the daemon do."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.config import E2eConfig, GatewayConfig, parse_config, read_toml
from edge.config_checks import environment_problems, key_file_problem
from edge.errors import ConfigError


def _private_file_problem(key: str, path: Path) -> str | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return f"{key}: file {path} does not exist — fix: create it or correct the path"
    except OSError as exc:
        return f"{key}: file {path} cannot be examined ({exc.strerror}) — fix: check permissions"
    problem = key_file_problem(key, path, st)  # a link, not a file, another user's
    if problem:
        return problem
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{key}: key file {path} is readable by group or others — "
            f"fix: chmod 600 {path}"
        )
    return None


def _exists_problem(key: str, path: Path) -> str | None:
    if not path.exists():
        return f"{key}: file {path} does not exist — fix: create it or correct the path"
    return None


def check_environment(cfg: GatewayConfig) -> list[str]:
    """Problems the schema cannot see: missing files, key files with loose permissions,
    a key file inside the vault's directory, a world-readable vault directory."""
    problems: list[str] = []
    v = cfg.vault
    if v.key_provider == "file":
        if v.key_file is None:
            problems.append(
                "vault.key_file: required with key_provider = \"file\" — fix: set a path "
                "outside the vault's directory, e.g. /etc/edge/keys/vault.key"
            )
        else:
            if v.key_file.resolve().parent == v.path.resolve().parent:
                problems.append(
                    "vault.key_file: the key sits in the vault's own directory — fix: keep keys "
                    "apart from data, e.g. /etc/edge/keys/vault.key"
                )
            if os.path.lexists(v.key_file):
                p = _private_file_problem("vault.key_file", v.key_file)
                if p:
                    problems.append(p)
    if v.key_provider == "env" and not v.allow_env_key:
        problems.append(
            "vault.key_provider: \"env\" is for tests only — fix: use \"systemd-credential\" or "
            "\"file\", or set vault.allow_env_key = true in a test config"
        )
    vault_dir = v.path.parent
    if vault_dir.exists() and vault_dir.stat().st_mode & stat.S_IRWXO:
        problems.append(
            f"vault.path: directory {vault_dir} is accessible by others — "
            f"fix: chmod 700 {vault_dir}"
        )
    u = cfg.uplink
    for key, path in (("uplink.ca_file", u.ca_file), ("uplink.client_cert", u.client_cert)):
        p = _exists_problem(key, path)
        if p:
            problems.append(p)
    if u.client_key is None and u.client_key_credential is None:
        problems.append(
            "uplink.client_key: no client key configured — fix: set uplink.client_key to a "
            "0600 PEM file or uplink.client_key_credential to a systemd credential name"
        )
    if u.client_key is not None:
        p = _private_file_problem("uplink.client_key", u.client_key)
        if p:
            problems.append(p)
    if u.client_key_passphrase_file is not None:
        p = _private_file_problem(
            "uplink.client_key_passphrase_file", u.client_key_passphrase_file
        )
        if p:
            problems.append(p)
    problems.extend(_e2e_problems(cfg.e2e))
    problems.extend(environment_problems(cfg))  # owners, socket directory, client key, CN
    return problems


def read_recipient_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The clinic's P-256 public key from a PEM file; ConfigError (one line) otherwise."""
    key = "e2e.recipient_key"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError("recipient key missing", [
            f"{key}: file {path} does not exist — fix: save the output of "
            "`clinic keys public` there"]) from exc
    except OSError as exc:
        raise ConfigError("recipient key unreadable", [
            f"{key}: file {path} cannot be read ({exc.strerror}) — fix: check its "
            "permissions"]) from exc
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("recipient key invalid", [
            f"{key}: {path} is not a PEM public key — fix: save the output of "
            "`clinic keys public` there"]) from exc
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(
        pub.curve, ec.SECP256R1
    ):
        raise ConfigError("recipient key invalid", [
            f"{key}: {path} is not a P-256 (EC) public key — fix: use the clinic's key "
            "from `clinic keys public`"])
    return pub


def _e2e_problems(e2e: E2eConfig) -> list[str]:
    if not e2e.enabled:
        return []
    if e2e.recipient_key is None:
        return [
            'e2e.recipient_key: required with mode = "sign+encrypt" — fix: set it to the '
            "clinic's public key PEM (from `clinic keys public`), or choose mode = \"off\""
        ]
    try:
        read_recipient_key(e2e.recipient_key)
    except ConfigError as exc:
        return exc.problems
    return []


_KEY_FILE_KEYS = (
    ("vault", "key_file"), ("uplink", "client_key"), ("uplink", "client_key_passphrase_file"),
)


def _raw_key_file_problems(data: Mapping[str, object]) -> list[str]:
    """Loose key-file permissions, found even when the schema is broken elsewhere, so one run
    of check-config reports them together with the schema problems."""
    problems = []
    for section, key in _KEY_FILE_KEYS:
        table = data.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and os.path.lexists(value):
            p = _private_file_problem(f"{section}.{key}", Path(value))
            if p:
                problems.append(p)
    return problems


def load_checked(path: Path) -> GatewayConfig:
    """Load, validate and check the environment; raises ConfigError with every problem."""
    data = read_toml(path)
    try:
        cfg = parse_config(data)
    except ConfigError as exc:
        raise ConfigError(
            "invalid configuration", exc.problems + _raw_key_file_problems(data)
        ) from exc
    problems = check_environment(cfg)
    if problems:
        raise ConfigError("invalid configuration", problems)
    return cfg
