"""structlog set-up and the redaction processor.

At INFO and above no reading value, patient pseudonym, device address, key or token survives:
PHI-bearing keys are removed or replaced, a device address becomes a short keyed hash
(``dev-1a2b3c4d``), and free text (exception messages included) is scrubbed of addresses, BlueZ
object paths, long hex strings and any registered sensitive string (e.g. bound pseudonyms).

Registered strings are pseudonym-shaped (letters, digits, '.', '-'). They are kept in a set
looked up per word of the text, not compiled into one ever-growing pattern: pinned strings
(the bound patients) stay; the others are the most recently registered
:data:`REMEMBERED`, so a flood of consent requests cannot grow the process.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"

#: keys whose values are PHI or secrets: dropped to REDACTED at INFO and above
SENSITIVE_KEYS = frozenset(
    {
        "patient", "pseudonym", "patient_id", "subject",
        "value", "values", "bpm", "heart_rate", "heart_rate_bpm", "mg_dl", "mmol_l",
        "concentration", "glucose", "rr_intervals", "rr_intervals_s", "energy_expended_kj",
        "reading", "readings", "payload", "raw", "hex", "data",
        "key", "vault_key", "secret", "token", "password", "passphrase", "private_key",
        "name", "device_name",
    }
)
#: keys holding a device address: replaced by its keyed hash
ADDRESS_KEYS = frozenset({"address", "device_address", "device_id", "mac", "device"})
#: a key containing one of these is sensitive too (``hr_bpm``, ``patient_pseudonym``)
SENSITIVE_FRAGMENTS = (
    "patient", "pseudonym", "glucose", "mg_dl", "mmol", "bpm", "heart_rate", "concentration",
    "rr_interval", "secret", "passw", "passphrase", "private", "token",
)
#: ... and so is a key whose last ``_``-separated word is one of these (``vault_key``)
SENSITIVE_LAST_WORDS = frozenset({"key", "hex", "raw", "payload", "value", "values", "data"})
#: a key whose last word is one of these holds an address (``peer_address``)
ADDRESS_LAST_WORDS = frozenset({"address", "mac"})

# Look-arounds, not \b: in BlueZ paths (dev_AA_BB_...) the address follows an underscore.
_MAC_RE = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{2}(?:[:_-][0-9a-f]{2}){5}(?![0-9a-f])")
_LONG_HEX_RE = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{32,}(?![0-9a-f])")
_DEVICE_HASH_RE = re.compile(r"dev-[0-9a-f]{8}")
# pydantic's error text repeats the rejected input (input_value=72): a reading value.
_INPUT_VALUE_RE = re.compile(r"input_value=(?:'[^']*'|\"[^\"]*\"|[^,\]\n]*)")
#: a word of free text, as far as registered strings are concerned
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*")
#: what may be registered: a pseudonym of 3 characters or more
_REGISTRABLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{2,63}")
_MAX_REGISTERED_LEN = 64
#: registered (not pinned) strings remembered, the most recently registered first
REMEMBERED = 1024


@functools.lru_cache(maxsize=1024)
def _key_kind(key: str) -> str:
    """``address``, ``sensitive`` or ``plain`` for a log key (cached: keys repeat)."""
    k = key.lower()
    last = k.rsplit("_", 1)[-1]
    if k in ADDRESS_KEYS or last in ADDRESS_LAST_WORDS:
        return "address"
    if k in SENSITIVE_KEYS or last in SENSITIVE_LAST_WORDS:
        return "sensitive"
    if any(f in k for f in SENSITIVE_FRAGMENTS):
        return "sensitive"
    return "plain"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


class Redactor:
    """Holds the device-hash key and the registered sensitive strings."""

    def __init__(self, hash_key: bytes | None = None, *, capacity: int = REMEMBERED) -> None:
        self._key = hash_key or secrets.token_bytes(32)
        self._pinned: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        #: how many registered, unpinned strings are remembered
        self.capacity = capacity

    def set_hash_key(self, key: bytes) -> None:
        """Use a stable key (derived from the vault key) so device hashes survive restarts."""
        self._key = key

    def register(self, values: Iterable[str]) -> None:
        """Pseudonyms to scrub from any free text, remembered while among the ``capacity``
        most recently registered (others — shorter than 3 characters, or not
        pseudonym-shaped — are ignored)."""
        with self._lock:
            for v in values:
                if v in self._pinned or not _REGISTRABLE_RE.fullmatch(v):
                    continue
                self._recent[v] = None
                self._recent.move_to_end(v)
            while len(self._recent) > self.capacity:
                self._recent.popitem(last=False)

    def pin(self, values: Iterable[str]) -> None:
        """Pseudonyms to scrub for as long as the process runs (the bound patients)."""
        with self._lock:
            for v in values:
                if _REGISTRABLE_RE.fullmatch(v):
                    self._pinned.add(v)
                    self._recent.pop(v, None)

    def __len__(self) -> int:
        """How many strings are registered (pinned and remembered)."""
        return len(self._pinned) + len(self._recent)

    def _known(self, word: str) -> bool:
        return word in self._pinned or word in self._recent

    def _scrub_word(self, match: re.Match[str]) -> str:
        word = match.group(0)
        if self._known(word):
            return REDACTED
        seps = [i for i, c in enumerate(word) if c in ".-"]
        if not seps:
            return word
        # A registered string may be part of a word, between separators: "pt-one.json".
        starts = [0, *(i + 1 for i in seps)]
        ends = sorted({len(word), *seps, *(i + 1 for i in seps)})
        out: list[str] = []
        done = 0
        for start in starts:
            if start < done:
                continue
            lo = bisect.bisect_left(ends, start + 3)
            hi = bisect.bisect_right(ends, start + _MAX_REGISTERED_LEN)
            for end in reversed(ends[lo:hi]):  # the longest match first
                if self._known(word[start:end]):
                    out += [word[done:start], REDACTED]
                    done = end
                    break
        return "".join(out) + word[done:] if out else word

    def device_hash(self, address: str) -> str:
        """A short keyed hash naming a device in logs without revealing its address."""
        norm = address.upper().replace("_", ":").replace("-", ":").encode()
        return "dev-" + hmac.new(self._key, norm, hashlib.sha256).hexdigest()[:8]

    def scrub(self, text: str) -> str:
        """Remove addresses, long hex strings and registered strings from free text."""
        text = _MAC_RE.sub(lambda m: self.device_hash(m.group(0)), text)
        text = _LONG_HEX_RE.sub(REDACTED, text)
        text = _INPUT_VALUE_RE.sub("input_value=" + REDACTED, text)
        if self._pinned or self._recent:
            text = _WORD_RE.sub(self._scrub_word, text)
        return text

    def _clean(self, key: str, value: object) -> object:
        kind = _key_kind(key) if key else "plain"
        if kind == "address" and isinstance(value, str):
            # already a device hash (a caller named the device itself): keep, never re-hash
            return value if _DEVICE_HASH_RE.fullmatch(value) else self.device_hash(value)
        if kind == "sensitive":
            return REDACTED
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.scrub(str(value))

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        level = _LEVELS.get(str(event_dict.get("level", method_name)).lower(), logging.INFO)
        if level < logging.INFO:
            return event_dict
        return {k: (v if k in ("level", "timestamp") else self._clean(k, v))
                for k, v in event_dict.items()}


#: the process-wide redactor; the daemon gives it the stable hash key and the pseudonyms
REDACTOR = Redactor()


def shared_processors() -> list[Processor]:
    """Processors every event goes through, redaction last before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        REDACTOR,
    ]


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """JSON lines (journald-friendly) or a console renderer; stdlib loggers (bleak, paho)
    are routed through the same redaction."""
    out = stream or sys.stdout
    renderer: Processor
    if fmt == "console" or (fmt == "auto" and out.isatty()):
        colors = out.isatty() and "NO_COLOR" not in os.environ
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    numeric = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared_processors()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Library chatter (bleak logs addresses at debug) stays at WARNING unless debugging.
    for noisy in ("bleak", "dbus_fast", "paho", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str = "edge") -> structlog.stdlib.BoundLogger:
    """A structlog logger. Event names are stable dotted words, e.g. ``ble.connected``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
