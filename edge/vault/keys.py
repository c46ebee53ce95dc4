"""Vault key providers.

A vault key is 32 random bytes used as SQLCipher's raw key (no passphrase KDF). Where it is
kept depends on ``vault.key_provider``:

``systemd-credential``
    ``$CREDENTIALS_DIRECTORY/<vault.key_credential>`` (``LoadCredential=`` /
    ``LoadCredentialEncrypted=`` in the unit). Read-only for edge: ``edge keys init`` and
    ``edge keys rotate`` print how to create the credential with ``systemd-creds``.
``file``
    ``vault.key_file``: refused if group- or world-accessible or inside the vault's directory.
``env``
    hex in ``$<vault.key_env>``; tests only, refused unless ``vault.allow_env_key``.

Key file format (file provider, and accepted from a credential): exactly 64 lower- or
upper-case hex characters followed by one newline (``openssl rand -hex 32`` writes this). A
credential may also hold the 32 raw bytes.

Rotation keeps the previous key in ``<key_file>.old`` until the database has been re-keyed
(see :mod:`edge.vault.rotation`), then keeps it as a retired key in ``<key_file>.retired/``
for the backups it encrypted, until ``edge keys retire KEY_ID`` (:mod:`edge.vault.retired`).

A vault that disappears is never silently replaced by an empty one: the ids (one-way, see
:func:`key_id`) of the keys that have opened a vault are recorded in a marker — beside the key
file for the file provider (apart from the data, so a vault directory that vanishes or is not
mounted is noticed too), beside the vault for the systemd-credential provider (whose
credential directory is read-only), none for the env provider (tests) — and a missing vault
whose key is in the marker is an error (:func:`edge.vault.rotation.open_vault`; the marker is
kept by :mod:`edge.vault.files`). A new key (``edge keys init``) starts a new vault.
"""

from __future__ import annotations

import binascii
import errno
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edge.config import VaultConfig
from edge.errors import ConfigError, KeyUnavailable

KEY_BYTES = 32

SYSTEMD_GUIDANCE = """\
The vault key comes from the systemd credential '{name}', which edge does not write.
To create it (once, as root), encrypted to this machine:
    openssl rand -hex 32 | systemd-creds encrypt --name={name} - /etc/credstore.encrypted/{name}
and load it in the unit (systemd/edge.service):
    LoadCredentialEncrypted={name}:/etc/credstore.encrypted/{name}
To rotate it: stop edge, run `edge keys rotate` with a config using key_provider = "file"
pointing at a 0600 copy of the current key, then encrypt the new key file as above
and remove the plain copies (shred -u)."""

ENV_GUIDANCE = """\
The vault key comes from the environment variable {var} (tests only), which edge cannot set.
Create one with:
    export {var}=$(openssl rand -hex 32)"""


def key_id(key: bytes) -> str:
    """A short one-way id naming a key without revealing it."""
    return hmac.new(key, b"edge vault key id", hashlib.sha256).hexdigest()[:16]


class KeyProvider(Protocol):
    """Produces the vault key; writable providers also create and rotate it."""

    #: the configured provider's name (``file``, ``env``, ``systemd-credential``)
    name: str
    #: whether edge can create and rotate the key itself
    writable: bool

    def guidance(self) -> str:
        """For a read-only provider: how the operator creates or replaces the key."""

    def describe(self) -> str:
        """Where the key lives, for messages (never the key)."""

    def load(self) -> bytes:
        """The current key (32 bytes); KeyUnavailable when missing, malformed or insecure."""

    def exists(self) -> bool:
        """Whether a current key is present."""

    def create(self) -> None:
        """Store a new random key; never overwrites one. Read-only providers raise
        KeyUnavailable carrying guidance."""

    def previous(self) -> bytes | None:
        """The key kept by an unfinished rotation, if any."""

    def stage_rotation(self, new_key: bytes, hook: Callable[[str], None] | None = None) -> None:
        """Keep the current key as the previous one, then make ``new_key`` current."""

    def finish_rotation(self) -> None:
        """Forget the previous key (after the database was re-keyed)."""


def key_provider(config: VaultConfig) -> KeyProvider:
    """The provider ``vault.key_provider`` names."""
    if config.key_provider == "file":
        if config.key_file is None:
            raise ConfigError(
                "vault.key_file is not set",
                ["vault.key_file: required with key_provider = \"file\" — fix: set a path "
                 "outside the vault's directory, e.g. /etc/edge/keys/vault.key"],
            )
        return FileKeyProvider(config.key_file, vault_dir=config.path.parent)
    if config.key_provider == "env":
        return EnvKeyProvider(config.key_env, allowed=config.allow_env_key)
    return SystemdCredentialProvider(config.key_credential)


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> bytes:
    """The key file contents: 64 hex characters and a newline."""
    if len(key) != KEY_BYTES:
        raise ValueError("a vault key is 32 bytes")
    return key.hex().encode("ascii") + b"\n"


def decode_key(data: bytes, *, allow_raw: bool = False) -> bytes | None:
    """Parse key material; None when it is not a valid key."""
    if allow_raw and len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) != 2 * KEY_BYTES:
        return None
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return None


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably, mode 0600: temp file, fsync,
    rename, fsync of the directory."""
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileKeyProvider:
    """A 0600/0400 key file outside the vault's directory."""

    name = "file"
    writable = True

    def __init__(self, path: Path, *, vault_dir: Path) -> None:
        self.path = path
        self.old_path = path.with_name(path.name + ".old")
        self._vault_dir = vault_dir

    def describe(self) -> str:
        return f"file {self.path}"

    def guidance(self) -> str:
        return ""

    def _check_location(self) -> None:
        key_dir = self.path.resolve().parent
        vault_dir = self._vault_dir.resolve()
        if key_dir == vault_dir or vault_dir in key_dir.parents:
            raise KeyUnavailable(
                f"file provider: key file {self.path} sits in the vault's directory — keep keys "
                "apart from data, e.g. /etc/edge/keys/vault.key"
            )

    def _read(self, path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise KeyUnavailable(
                f"file provider: no key at {path} — create one with `edge keys init`"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
                raise KeyUnavailable(
                    f"file provider: key file {path} is a symbolic link — edge never follows "
                    "a link to a key; set vault.key_file to the file itself"
                ) from exc
            raise KeyUnavailable(
                f"file provider: key file {path} cannot be read ({exc.strerror})"
            ) from exc
        try:
            st = os.fstat(fd)
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyUnavailable(
                    f"file provider: key file {path} is accessible by group or others — "
                    f"fix: chmod 600 {path}"
                )
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        key = decode_key(data)
        if key is None:
            raise KeyUnavailable(
                f"file provider: key file {path} is not 64 hex characters and a newline"
            )
        return key

    def load(self) -> bytes:
        self._check_location()
        return self._read(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        self._check_location()
        if self.path.exists() or self.old_path.exists():
            raise ConfigError(
                "vault key exists",
                [f"vault.key_file: a key already exists at {self.path} — `edge keys init` never "
                 "overwrites a key; use `edge keys rotate` to change it"],
            )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, encode_key(new_key()))

    def previous(self) -> bytes | None:
        if not self.old_path.exists():
            return None
        return self._read(self.old_path)

    def stage_rotation(self, new_key: bytes, hook: Callable[[str], None] | None = None) -> None:
        current = self.load()
        # The previous key is durable before the current one is replaced, so at every instant
        # one of the two files holds the key the database opens with.
        write_private(self.old_path, encode_key(current))
        if hook:
            hook("previous_kept")
        write_private(self.path, encode_key(new_key))

    def finish_rotation(self) -> None:
        directory = self.path.parent
        for stale in directory.glob(f".{self.path.name}*.tmp-*"):
            stale.unlink(missing_ok=True)
        if self.old_path.exists():
            # The replaced key is kept (retired) for the backups it encrypted, until
            # `edge keys retire` (see edge.vault.retired); never the current key.
            previous = self._read(self.old_path)
            if previous != self.load():
                from edge.vault.retired import keep

                keep(self.path, previous)
            self.old_path.unlink()
        fsync_dir(directory)


class EnvKeyProvider:
    """Hex key in an environment variable; for tests, and only when allowed."""

    name = "env"
    writable = False

    def __init__(self, var: str, *, allowed: bool) -> None:
        self.var = var
        self._allowed = allowed

    def describe(self) -> str:
        return f"environment variable {self.var}"

    def guidance(self) -> str:
        return ENV_GUIDANCE.format(var=self.var)

    def load(self) -> bytes:
        if not self._allowed:
            raise KeyUnavailable(
                "env provider: refused — the env key provider is for tests; set "
                "vault.allow_env_key = true in a test config, or use the file or "
                "systemd-credential provider"
            )
        raw = os.environ.get(self.var)
        if not raw:
            raise KeyUnavailable(f"env provider: {self.var} is not set")
        key = decode_key(raw.encode("ascii", "replace"))
        if key is None:
            raise KeyUnavailable(f"env provider: {self.var} is not 64 hex characters")
        return key

    def exists(self) -> bool:
        return bool(os.environ.get(self.var))

    def create(self) -> None:
        raise KeyUnavailable(ENV_GUIDANCE.format(var=self.var))

    def previous(self) -> bytes | None:
        return None

    def stage_rotation(self, new_key: bytes, hook: Callable[[str], None] | None = None) -> None:
        raise KeyUnavailable(ENV_GUIDANCE.format(var=self.var))

    def finish_rotation(self) -> None:
        return None


class SystemdCredentialProvider:
    """A credential in ``$CREDENTIALS_DIRECTORY``; read-only."""

    name = "systemd-credential"
    writable = False

    def __init__(self, credential: str) -> None:
        self.credential = credential

    def describe(self) -> str:
        return f"systemd credential {self.credential}"

    def guidance(self) -> str:
        return SYSTEMD_GUIDANCE.format(name=self.credential)

    def _path(self) -> Path:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise KeyUnavailable(
                "systemd-credential provider: $CREDENTIALS_DIRECTORY is not set — run edge "
                f"under systemd with LoadCredentialEncrypted={self.credential}:..., or "
                "configure another key provider"
            )
        return Path(directory) / self.credential

    def load(self) -> bytes:
        path = self._path()
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyUnavailable(
                f"systemd-credential provider: credential {self.credential} is missing — "
                "see `edge keys init` for how to create it"
            ) from exc
        except OSError as exc:
            raise KeyUnavailable(
                f"systemd-credential provider: credential {self.credential} cannot be read "
                f"({exc.strerror})"
            ) from exc
        key = decode_key(data, allow_raw=True)
        if key is None:
            raise KeyUnavailable(
                f"systemd-credential provider: credential {self.credential} is not a 32-byte "
                "key (64 hex characters)"
            )
        return key

    def exists(self) -> bool:
        try:
            return self._path().exists()
        except KeyUnavailable:
            return False

    def create(self) -> None:
        raise KeyUnavailable(SYSTEMD_GUIDANCE.format(name=self.credential))

    def previous(self) -> bytes | None:
        return None

    def stage_rotation(self, new_key: bytes, hook: Callable[[str], None] | None = None) -> None:
        raise KeyUnavailable(SYSTEMD_GUIDANCE.format(name=self.credential))

    def finish_rotation(self) -> None:
        return None
