"""The side log: an append-only, encrypted file of accepted readings not yet in the database.

Each append is ONE ``pwrite`` of one record, so a process killed at any instant leaves every
record whose append returned in the page cache (and a torn record only at the tail); an
``fsync`` per flush interval bounds what a power cut can take. Records are merged into the
database in batches, after which the log is emptied (:meth:`SideLog.reset`).

Format (version 1)::

    header  = MAGIC (8) | salt (16) | check (16)
    record  = length (u32, big-endian) | AES-256-GCM(nonce = record index, u96 big-endian)
    plain   = raw DEFLATE (preset dictionary) of: first seq (u64) | stored_at (f64) | count (u32)
              | count × (length (u32) | reading JSON)

The record key is HKDF-SHA256(vault key, salt, "edge vault side log v1"); every reset draws a
new salt, so a (key, nonce) pair is never reused. ``check`` (an HMAC of the record key) tells
a log written under another vault key from a torn one. Nothing is ever written in plaintext.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import VaultError
from edge.log import get_logger

log = get_logger("edge.vault")

MAGIC = b"EDGESLG1"
_SALT = 16
_CHECK = 16
HEADER_BYTES = len(MAGIC) + _SALT + _CHECK
_INFO = b"edge vault side log v1"
_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">QdI")
#: a record larger than this is garbage, not a record (appends are bounded far below)
_MAX_RECORD = 64 << 20
#: what readings look like: the preset dictionary makes a ~300-byte reading ~100 bytes.
#: Part of the format: never change it without a new MAGIC.
_ZDICT = (
    b'{"id":"","device_id":"","patient":"","effective_time":"T:00Z","time_source":"gateway",'
    b'"received_at":"T:00Z","kind":"heart_rate","bpm":,"sensor_contact":"detected",'
    b'"energy_expended_kj":null,"rr_intervals_s":["0."]}'
    b'"time_source":"device","kind":"glucose","sequence_number":,"device_time":"T",'
    b'"concentration":"","unit":"kg/L","mg_dl":"","mmol_l":"","sample_type":'
)


def log_path(vault_path: Path) -> Path:
    """Where the side log of the vault at ``vault_path`` lives."""
    return Path(str(vault_path) + "-log")


def derive_key(vault_key: bytes, salt: bytes) -> bytes:
    """The record key of one log generation."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(vault_key)


def _check(key: bytes) -> bytes:
    return hmac.new(key, b"edge side log key check", hashlib.sha256).digest()[:_CHECK]


@dataclass(frozen=True)
class Entry:
    """One append: readings' JSON payloads with consecutive seqs from ``first_seq``."""

    first_seq: int
    stored_at: float
    payloads: tuple[bytes, ...]


def encode(entry: Entry) -> bytes:
    """The plaintext of a record, compressed."""
    parts = [_HEAD.pack(entry.first_seq, entry.stored_at, len(entry.payloads))]
    for p in entry.payloads:
        parts += (_LEN.pack(len(p)), p)
    z = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_ZDICT)
    return z.compress(b"".join(parts)) + z.flush()


def decode(data: bytes) -> Entry:
    """A record's plaintext; ValueError when it does not parse."""
    try:
        z = zlib.decompressobj(-15, zdict=_ZDICT)
        raw = z.decompress(data) + z.flush()
    except zlib.error as exc:
        raise ValueError("not a side-log record") from exc
    first, at, count = _HEAD.unpack_from(raw)
    off, payloads = _HEAD.size, []
    for _ in range(count):
        (n,) = _LEN.unpack_from(raw, off)
        off += _LEN.size
        if off + n > len(raw):
            raise ValueError("a side-log record is cut short")
        payloads.append(raw[off:off + n])
        off += n
    return Entry(first, at, tuple(payloads))


class SideLog:
    """The open side log, held under an exclusive flock: one owner process at a time."""

    def __init__(self, fd: int, path: Path, vault_key: bytes) -> None:
        self.fd = fd
        self.path = path
        self._vault_key = vault_key
        self._aead = AESGCM(b"\0" * 32)
        self._index = 0
        self._end = 0
        self.dirty = False
        #: fsyncs issued (for benchmarks and tests)
        self.fsyncs = 0
        #: called right after each fsync: a test seam to copy the files at that boundary
        self.on_sync: Callable[[], None] | None = None

    @classmethod
    def acquire(cls, path: Path, vault_key: bytes) -> SideLog | None:
        """The log at ``path`` (created 0600), or None when another process owns it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, vault_key)

    def close(self) -> None:
        """Release the log (the lock goes with the descriptor)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def size(self) -> int:
        return self._end

    # -- recovery --------------------------------------------------------------------------

    def replay(self) -> list[Entry]:
        """Every complete record, in order. A torn or unreadable tail is dropped (it was never
        acknowledged: the append that wrote it had not returned); a log written under another
        vault key is set aside, never decrypted with the wrong key or deleted."""
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size, 0) if size else b""
        if len(data) < HEADER_BYTES or not data.startswith(MAGIC):
            if data:
                log.warning("vault.sidelog_header_torn", size=len(data))
            return []
        if len(data) == HEADER_BYTES:
            return []  # empty (a re-key may have changed the key since it was started)
        salt = data[len(MAGIC):len(MAGIC) + _SALT]
        key = derive_key(self._vault_key, salt)
        if not hmac.compare_digest(data[len(MAGIC) + _SALT:HEADER_BYTES], _check(key)):
            aside = self.path.with_name(f"{self.path.name}.foreign-{os.urandom(4).hex()}")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            log.error("vault.sidelog_foreign_key", kept_as=aside.name)
            return []
        aead = AESGCM(key)
        out: list[Entry] = []
        off, index = HEADER_BYTES, 0
        while off + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, off)
            body = data[off + _LEN.size:off + _LEN.size + n]
            if n > _MAX_RECORD or len(body) < n:
                break
            try:
                out.append(decode(aead.decrypt(index.to_bytes(12, "big"), body, MAGIC)))
            except (InvalidTag, ValueError, struct.error):
                break
            off += _LEN.size + n
            index += 1
        if off < len(data):
            log.warning("vault.sidelog_tail_dropped", bytes=len(data) - off, records=len(out))
        return out

    # -- writing ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the log and start a new generation (new salt, new key), durably: called once
        everything in it is committed to the database."""
        salt = os.urandom(_SALT)
        key = derive_key(self._vault_key, salt)
        header = MAGIC + salt + _check(key)
        os.ftruncate(self.fd, 0)
        self._end = 0
        self._pwrite_all(header)
        os.fsync(self.fd)
        self._synced()
        self._aead = AESGCM(key)
        self._index = 0
        self._end = len(header)
        self.dirty = False

    def rekey(self, vault_key: bytes) -> None:
        """Follow a re-keyed vault (the log must be empty: merge first)."""
        self._vault_key = vault_key
        self.reset()

    def write(self, entry: Entry) -> None:
        """Append one record with one write. OSError (disk full…) leaves the log as it was."""
        ct = self._aead.encrypt(self._index.to_bytes(12, "big"), encode(entry), MAGIC)
        self._pwrite_all(_LEN.pack(len(ct)) + ct)
        self._end += _LEN.size + len(ct)
        self._index += 1
        self.dirty = True

    def _pwrite_all(self, data: bytes) -> None:
        try:
            n = os.pwrite(self.fd, data, self._end)
            if n != len(data):
                raise OSError(errno.ENOSPC, "short write to the side log")
        except OSError:
            # Nothing half-written may stay: the next record would follow garbage.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self._end)
            raise

    def sync(self) -> bool:
        """fsync if anything was written since the last one; whether it did."""
        if not self.dirty:
            return False
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise VaultError(f"the side log could not be synced ({exc.strerror})") from exc
        self.dirty = False
        self._synced()
        return True

    def _synced(self) -> None:
        self.fsyncs += 1
        if self.on_sync is not None:
            self.on_sync()
