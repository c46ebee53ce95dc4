"""The control protocol's pure half: bounded request parsing, the limits of every field, and a
rate limit for the one error the accept loop can repeat forever.

A request is one line of UTF-8 JSON of at most :data:`MAX_REQUEST_BYTES`: an object with at
most :data:`MAX_KEYS` distinct keys, nested at most :data:`MAX_DEPTH` deep, whose numbers have
at most :data:`MAX_NUMBER_CHARS` characters. Python's ``json`` alone would build a
50,000-digit integer (or raise ``ValueError`` past 4,300 digits) and recurse into
``RecursionError`` on deep nesting; here every such request is a ``bad_request`` answer.

No I/O, no asyncio: the server (:mod:`edge.daemon.control`) and the CLI both use these.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from edge.clock import Clock
from edge.errors import ControlError, UsageError
from edge.log import get_logger

log = get_logger("edge.control")

#: a request line longer than this is refused (a real request is a few hundred bytes)
MAX_REQUEST_BYTES = 4096
#: JSON arrays/objects nested deeper than this are refused
MAX_DEPTH = 32
#: a JSON number written with more characters than this is refused
MAX_NUMBER_CHARS = 30
#: an object with more keys than this is refused
MAX_KEYS = 64
#: a consent scope: 1-64 printable characters
MAX_SCOPE_CHARS = 64
#: the default consent scope
DEFAULT_SCOPE = "vitals"

#: a request handler: the parsed request and the peer's ``uid:<n>``; returns a JSON value
Handler = Callable[[Mapping[str, object], str], Awaitable[object]]
#: one response line
Response = dict[str, object]

_OP_RE = re.compile(r"[a-z][a-z0-9_.]{0,31}")
_FIELD_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_STRINGS_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS_RE = re.compile(r"[\[\]{}]")
#: Unicode categories a scope may use besides the ASCII space: letters, marks that combine
#: with them, digits, punctuation and math/currency symbols — never emoji (So), control or
#: format characters, surrogates or private use.
_SCOPE_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd", "Nl", "No",
                               "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc"})


class BadRequest(ControlError):
    """A request the protocol refuses; its message is safe to send back (it never echoes
    the request)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "bad_request")


class _NumberTooLong(Exception):
    """Raised from the parse hooks; becomes a BadRequest."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NumberTooLong
    return value


def _parse_constant(text: str) -> float:
    raise BadRequest("NaN and Infinity are not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_KEYS:
        raise BadRequest(f"a request object has at most {MAX_KEYS} keys")
    out = dict(pairs)
    if len(out) != len(pairs):
        raise BadRequest("a request repeats a key")
    return out


def nesting_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (strings are skipped)."""
    depth = deepest = 0
    for bracket in _BRACKETS_RE.findall(_STRINGS_RE.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as a dict with a string ``op``; BadRequest (never another exception)
    for anything else."""
    if len(line) > MAX_REQUEST_BYTES:
        raise BadRequest("request too long")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request is not JSON") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise BadRequest(f"request nested more than {MAX_DEPTH} levels deep")
    try:
        request = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                             parse_constant=_parse_constant, object_pairs_hook=_object)
    except _NumberTooLong:
        raise BadRequest(f"a number in the request is longer than {MAX_NUMBER_CHARS} "
                         "characters") from None
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise BadRequest("request is not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise BadRequest('request needs an "op"')
    return request


def op_name(request: Mapping[str, object]) -> str:
    """The request's ``op`` if it looks like one (for messages), else ``?``."""
    op = request.get("op")
    return op if isinstance(op, str) and _OP_RE.fullmatch(op) else "?"


def only_fields(request: Mapping[str, object], allowed: Collection[str]) -> None:
    """BadRequest if the request carries a field its op does not take."""
    for key in request:
        if key != "op" and key not in allowed:
            shown = f" {key!r}" if _FIELD_RE.fullmatch(key) else ""
            raise BadRequest(f"unknown field{shown} for this request")


def check_scope(value: object) -> str:
    """``value`` if it is a usable consent scope, else UsageError (not echoing it)."""
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SCOPE_CHARS
        and value == value.strip(" ")
        and all(c == " " or unicodedata.category(c) in _SCOPE_CATEGORIES for c in value)
    ):
        return value
    raise UsageError(
        f"a consent scope is 1-{MAX_SCOPE_CHARS} printable characters (letters, digits, "
        "punctuation, inner spaces) — no emoji, control characters or empty scope"
    )


class AcceptErrorLimiter:
    """An asyncio exception handler that turns the accept loop's "out of system resource"
    errors (EMFILE, ENFILE, ENOBUFS, ENOMEM, reported on every retry) into at most one log
    event per ``interval_s`` on ``clock``, counting the rest; every other error goes to the
    handler that was there before."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, clock: Clock, interval_s: float = 60.0,
                 previous: Callable[[Any, dict[str, Any]], object] | None = None) -> None:
        self._clock = clock
        self._interval = interval_s
        self.previous = previous
        self._last_logged: float | None = None
        #: accept failures since start, and those not logged since the last event
        self.failures = 0
        self.unlogged = 0

    def __call__(self, loop: Any, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failures += 1
        self.unlogged += 1
        now = self._clock.monotonic()
        if self._last_logged is not None and now - self._last_logged < self._interval:
            return
        exc = context.get("exception")
        log.error("control.accept_failed", error=getattr(exc, "strerror", None) or "?",
                  count=self.unlogged, total=self.failures)
        self._last_logged = now
        self.unlogged = 0
