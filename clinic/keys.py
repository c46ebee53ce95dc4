"""The clinic's keys: E2E P-256 key pairs (by RFC 7638 ``kid``) and AES-256 data keys (by id),
the current one of each, and the providers that hold them — never beside the data.

Providers:
- ``file``: a 0700 directory, each key a 0600 file (``e2e-<kid>.pem``, ``data-<id>.key``), and
  ``current.json`` naming the keys in use. Writable: ``keys init`` / ``keys rotate`` use it.
- ``systemd-credential``: the same files, named ``<credential_prefix><file name>``, read from
  ``$CREDENTIALS_DIRECTORY`` (read-only; generate with the file provider, then encrypt them
  with ``systemd-creds``).
- ``env`` (tests only, ``allow_env_key``): a JSON document (:func:`to_env_json`).

Rotation keeps every retired key: old envelopes still in a broker's queue and stored rows
written under an old data key stay readable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clinic.config import KeysSection
from clinic.errors import ClinicError, KeyUnavailable, UsageError
from edge.uplink.envelope import thumbprint

CURRENT = "current.json"


@dataclass
class KeyRing:
    """Every key the clinic holds; ``current_*`` name the ones new work uses."""

    e2e: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    current_e2e: str = ""
    current_data: str = ""

    def public_pem(self) -> bytes:
        """The current E2E public key as PEM (what hub installers put in ``recipient_key``)."""
        return self.e2e[self.current_e2e].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def data_key(self) -> tuple[str, bytes]:
        """The current data key and its id."""
        return self.current_data, self.data[self.current_data]


def data_key_id(key: bytes) -> str:
    """A data key's id: names it without revealing it (a hash prefix of a 256-bit key)."""
    return "dk-" + hashlib.sha256(b"clinic data key id|" + key).hexdigest()[:16]


def new_e2e_key() -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A fresh P-256 key pair and its kid."""
    key = ec.generate_private_key(ec.SECP256R1())
    return thumbprint(key), key


def new_data_key() -> tuple[str, bytes]:
    """A fresh AES-256 key and its id."""
    key = secrets.token_bytes(32)
    return data_key_id(key), key


# --- sealing stored data (pure) ---------------------------------------------------------------


def encrypt(ring: KeyRing, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
    """AES-256-GCM under the current data key: (key id, nonce || ciphertext+tag). ``aad`` binds
    the ciphertext to its row (e.g. the Observation identifier), so rows cannot be swapped."""
    kid, key = ring.data_key()
    nonce = secrets.token_bytes(12)
    return kid, nonce + _aead(key).encrypt(nonce, plaintext, aad)


@functools.lru_cache(maxsize=8)
def _aead(key: bytes) -> AESGCM:
    """One AES-GCM object per data key, not per row (ingest seals thousands a second); the
    keys are already held in memory by the ring, a few at most (current and retired)."""
    return AESGCM(key)


def decrypt(ring: KeyRing, key_id: str, blob: bytes, aad: bytes) -> bytes:
    """Open what :func:`encrypt` sealed, with the (possibly retired) key ``key_id``."""
    key = ring.data.get(key_id)
    if key is None:
        raise KeyUnavailable(f"data key {key_id} is not held by this clinic")
    try:
        return _aead(key).decrypt(blob[:12], blob[12:], aad)
    except InvalidTag as exc:
        raise ClinicError("stored data does not decrypt (tampered or wrong row)") from exc


# --- file layout --------------------------------------------------------------------------------


def _files_of(ring: KeyRing) -> dict[str, bytes]:
    files = {
        f"e2e-{kid}.pem": k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for kid, k in ring.e2e.items()
    }
    files.update({f"data-{kid}.key": k.hex().encode() for kid, k in ring.data.items()})
    files[CURRENT] = json.dumps({"e2e": ring.current_e2e, "data": ring.current_data}).encode()
    return files


def _ring_of(files: Mapping[str, bytes]) -> KeyRing:
    ring = KeyRing()
    try:
        for name, data in files.items():
            if name.startswith("e2e-") and name.endswith(".pem"):
                key = serialization.load_pem_private_key(data, password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError("not an EC key")
                ring.e2e[thumbprint(key)] = key
            elif name.startswith("data-") and name.endswith(".key"):
                raw = bytes.fromhex(data.decode().strip())
                if len(raw) != 32:
                    raise ValueError("data key is not 256 bits")
                ring.data[data_key_id(raw)] = raw
        current = json.loads(files[CURRENT])
        ring.current_e2e, ring.current_data = current["e2e"], current["data"]
    except KeyError as exc:
        raise KeyUnavailable("no current key — fix: run `clinic keys init`") from exc
    except (ValueError, TypeError) as exc:
        raise KeyUnavailable("a key file is unreadable or not a key — fix: restore it "
                             "from backup") from exc
    if ring.current_e2e not in ring.e2e or ring.current_data not in ring.data:
        raise KeyUnavailable("current.json names a key that is missing — fix: restore it")
    return ring


def _read_dir(d: Path, prefix: str = "") -> dict[str, bytes]:
    try:
        names = [p for p in d.iterdir() if p.name.startswith(prefix) and p.is_file()]
        out = {}
        for p in names:
            if p.name != prefix + CURRENT and p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyUnavailable(f"key file {p} is readable by others — fix: chmod 600 {p}")
            out[p.name.removeprefix(prefix)] = p.read_bytes()
        return out
    except FileNotFoundError as exc:
        raise KeyUnavailable(f"key directory {d} does not exist — fix: run "
                             "`clinic keys init`") from exc
    except PermissionError as exc:
        raise KeyUnavailable(f"key directory {d} cannot be read — fix: check its "
                             "owner") from exc


def load(cfg: KeysSection, environ: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring from the configured provider."""
    env = os.environ if environ is None else environ
    if cfg.provider == "file":
        return _ring_of(_read_dir(cfg.dir))
    if cfg.provider == "systemd-credential":
        creds = env.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise KeyUnavailable("keys.provider is systemd-credential but "
                                 "$CREDENTIALS_DIRECTORY is not set — fix: LoadCredential=")
        return _ring_of(_read_dir(Path(creds), cfg.credential_prefix))
    if not cfg.allow_env_key:
        raise KeyUnavailable("the env key provider is for tests only — fix: set "
                             "keys.allow_env_key = true in a test config")
    raw = env.get(cfg.env)
    if not raw:
        raise KeyUnavailable(f"${cfg.env} is not set")
    try:
        doc = json.loads(raw)
        files = {k: v.encode() for k, v in doc.items()}
    except (ValueError, AttributeError) as exc:
        raise KeyUnavailable(f"${cfg.env} is not a key set") from exc
    return _ring_of(files)


def to_env_json(ring: KeyRing) -> str:
    """The ring as the env provider's JSON (tests only)."""
    return json.dumps({k: v.decode() for k, v in _files_of(ring).items()})


def save(cfg: KeysSection, ring: KeyRing) -> None:
    """Write the ring with the file provider: new 0600 files, current.json replaced last."""
    if cfg.provider != "file":
        raise UsageError("only the file key provider can create keys — fix: generate them "
                         "with provider = \"file\", then load them as credentials")
    d = cfg.dir
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    for name, data in sorted(_files_of(ring).items(), key=lambda kv: kv[0] == CURRENT):
        path = d / name
        if path.exists() and name != CURRENT:
            continue  # keys never change once written
        tmp = d / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)


def initial_ring() -> KeyRing:
    """A ring with one fresh key of each kind."""
    kid, key = new_e2e_key()
    did, dkey = new_data_key()
    return KeyRing({kid: key}, {did: dkey}, kid, did)


def rotated(ring: KeyRing, *, e2e: bool = True, data: bool = True) -> KeyRing:
    """A ring with new current keys; every old one is kept for decryption."""
    out = KeyRing(dict(ring.e2e), dict(ring.data), ring.current_e2e, ring.current_data)
    if e2e:
        kid, key = new_e2e_key()
        out.e2e[kid] = key
        out.current_e2e = kid
    if data:
        did, dkey = new_data_key()
        out.data[did] = dkey
        out.current_data = did
    return out
