"""Hostile control requests (issue 14, "the hub's own surfaces"; issue 10, the installer's
traps): every one a clear ``ok: false`` answer, never an exception out of the handler; every
field within its limits; revoking what was never granted is an error; a bound device without
consent makes the daemon unhealthy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.daemon.control import ControlHandlers, ControlServer
from edge.daemon.control_protocol import (
    MAX_DEPTH,
    MAX_REQUEST_BYTES,
    check_scope,
    nesting_depth,
    parse_request,
)
from edge.daemon.status import StatusDocument
from edge.errors import UsageError
from edge.intake import ConsentGate
from edge.log import REDACTOR
from edge.vault import Binding, Consent

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


async def _echo(request: Mapping[str, object], actor: str) -> object:
    return {"echo": request.get("x")}


def _server() -> ControlServer:
    return ControlServer(Path("/nonexistent/never-bound.sock"), {"echo": _echo})


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"[" * 60_000 + b"]" * 60_000, "too long"),
        (b'{"op": "echo", "x": ' + b"9" * 50_000 + b"}", "too long"),
        (b"[" * 1_500 + b"]" * 1_500, "nested"),
        (b'{"op": "echo", "x": ' + b"[" * 1_500 + b"]" * 1_500 + b"}", "nested"),
        (b'{"op": "echo", "x": ' + b"9" * 4_000 + b"}", "number"),
        (b'{"op": "echo", "x": -' + b"9" * 31 + b"}", "number"),
        (b'{"op": "echo", "x": 1' + b"0" * 40 + b".5}", "number"),
        (b'{"op": "echo", "x": 1e999}', "number"),
        (b'{"op": "echo", "x": NaN}', "NaN"),
        (b'{"op": "echo", "x": -Infinity}', "NaN"),
        (b'{"op": "echo", "op": "echo"}', "repeats"),
        (b'{"op": "echo", ' + b", ".join(b'"k%d": 1' % i for i in range(100)) + b"}", "keys"),
        (b'{"op": "echo", "x": "\xff"}', "not JSON"),
        (b"[1, 2]", '"op"'),
        (b'{"op": 7}', '"op"'),
        (b"{" + b" " * (MAX_REQUEST_BYTES + 1) + b"}", "too long"),
    ],
)
async def test_hostile_lines_are_clear_refusals(line: bytes, why: str) -> None:
    # Before: RecursionError / ValueError escaped from dispatch into the connection handler.
    reply = await _server().dispatch(line, "uid:7")
    assert reply["ok"] is False and reply["code"] == "bad_request", reply
    assert why in str(reply["error"])


def test_the_depth_check_skips_strings_and_counts_only_nesting() -> None:
    assert nesting_depth('{"a": "[[[[[[[[", "b": [[1]]}') == 3
    assert nesting_depth('"\\"[[[["') == 0
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    assert nesting_depth(deep) == MAX_DEPTH + 1
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # inside the request object
    assert parse_request(b'{"op": "x", "y": ' + ok.encode() + b"}")["op"] == "x"
    big_but_allowed = parse_request(b'{"op": "x", "n": ' + b"9" * 30 + b", "
                                    b'"f": 1.25}')
    assert big_but_allowed["n"] == int("9" * 30) and big_but_allowed["f"] == 1.25


def test_an_unknown_op_is_not_echoed_unless_it_looks_like_one() -> None:
    reply = asyncio.run(_server().dispatch(b'{"op": "Jane Doe"}', "uid:7"))
    assert reply == {"ok": False, "error": "unknown op", "code": "unknown_op"}
    reply = asyncio.run(_server().dispatch(b'{"op": "nope.x"}', "uid:7"))
    assert reply["error"] == "unknown op 'nope.x'"


@pytest.mark.parametrize("scope", ["vitals", "Vitalwerte (Herz)", "données vitales",
                                   "hr+glucose/2026", "a"])
def test_reasonable_scopes_are_accepted(scope: str) -> None:
    assert check_scope(scope) == scope


@pytest.mark.parametrize("scope", ["", " ", " vitals", "vitals ", "x" * 65, "❤️", "vitals 🩸",
                                   "a\nb", "a\x00b", "a\u200bb", "\ud800", 7, None])
def test_unreasonable_scopes_are_refused(scope: object) -> None:
    with pytest.raises(UsageError) as ei:
        check_scope(scope)
    assert "scope" in str(ei.value)


# --- the daemon's handlers -------------------------------------------------------------------


class Store:
    """Consent records and bindings in memory (the vault's calls)."""

    def __init__(self) -> None:
        self.records: dict[str, Consent] = {}
        self.bound: list[Binding] = []
        self.revokes = 0

    async def consents(self) -> Sequence[Consent]:
        return list(self.records.values())

    async def bindings(self) -> Sequence[Binding]:
        return list(self.bound)

    async def grant_consent(self, patient: str, *, scope: str, actor: str) -> None:
        self.records[patient] = Consent(patient, scope, T0, actor, None, None)

    async def revoke_consent(self, patient: str, *, actor: str) -> int:
        self.revokes += 1
        old = self.records.get(patient)
        self.records[patient] = Consent(patient, old.scope if old else "vitals",
                                        old.granted_at if old else None,
                                        old.granted_by if old else None, T0, actor)
        return 0

    def bind(self, address: str, patient: str) -> None:
        self.bound.append(Binding(address, "heart_rate", patient, True, T0, "admin:x", None))


async def _daemon(store: Store) -> tuple[ControlServer, ConsentGate]:
    gate = ConsentGate(store)
    await gate.load()
    ready = asyncio.Event()
    ready.set()

    async def status() -> StatusDocument:
        return {"source": "daemon", "healthy": True}

    async def refresh() -> bool:
        return True

    handlers = ControlHandlers(ready=ready, gate=gate, records=store, status=status,
                               refresh=refresh)
    return ControlServer(Path("/nonexistent/never-bound.sock"), handlers.table()), gate


async def test_scope_and_fields_are_bounded() -> None:
    store = Store()
    server, gate = await _daemon(store)
    for scope in ("", "🩸", "x" * 65, "a\tb"):
        line = json.dumps({"op": "consent.grant", "patient": "pt-one",
                           "scope": scope}).encode()
        reply = await server.dispatch(line, "uid:1")
        assert reply["code"] == "bad_request" and "scope" in str(reply["error"]), reply
    # a 60 KB scope never reaches the store: the line alone is too long
    huge = b'{"op": "consent.grant", "patient": "pt-one", "scope": "' + b"s" * 60_000 + b'"}'
    assert (await server.dispatch(huge, "uid:1"))["code"] == "bad_request"
    extra = await server.dispatch(b'{"op": "consent.grant", "patient": "pt-one", '
                                  b'"granted_by": "me"}', "uid:1")
    assert extra["code"] == "bad_request" and "granted_by" in str(extra["error"])
    assert store.records == {} and not gate.allows("pt-one")
    # an absent scope is the default, as before
    ok = await server.dispatch(b'{"op": "consent.grant", "patient": "pt-one"}', "uid:1")
    assert ok["result"] == {"patient": "pt-one", "consent": "granted", "scope": "vitals"}


async def test_revoking_consent_that_was_never_granted_is_an_error() -> None:
    store = Store()
    server, _ = await _daemon(store)
    reply = await server.dispatch(b'{"op": "consent.revoke", "patient": "pt-never"}', "uid:1")
    assert reply["ok"] is False and reply["code"] == "not_granted"
    assert "never granted" in str(reply["error"]) and "pt-never" not in str(reply["error"])
    assert store.revokes == 0 and store.records == {}
    # granted, then revoked twice: the second is harmless, not an error
    await server.dispatch(b'{"op": "consent.grant", "patient": "pt-one"}', "uid:1")
    for _ in range(2):
        again = await server.dispatch(b'{"op": "consent.revoke", "patient": "pt-one"}', "uid:1")
        assert again["ok"] is True


async def test_a_bound_device_without_consent_makes_the_daemon_unhealthy() -> None:
    store = Store()
    store.bind("AA:BB:CC:DD:EE:01", "pt-one")
    server, _ = await _daemon(store)
    status = (await server.dispatch(b'{"op": "status"}', "uid:1"))["result"]
    assert isinstance(status, dict)
    assert status["healthy"] is False
    assert status["devices_without_consent"] == ["AA:BB:CC:DD:EE:01"]
    assert any("edge consent grant" in p for p in status["problems"])
    await server.dispatch(b'{"op": "consent.grant", "patient": "pt-one"}', "uid:1")
    status = (await server.dispatch(b'{"op": "status"}', "uid:1"))["result"]
    assert isinstance(status, dict)
    assert status["healthy"] is True and status["devices_without_consent"] == []
    assert "problems" not in status


async def test_four_thousand_grants_leave_the_redactor_bounded() -> None:
    store = Store()
    server, _ = await _daemon(store)
    for i in range(4000):
        line = b'{"op": "consent.grant", "patient": "pt-%05d"}' % i
        assert (await server.dispatch(line, "uid:1"))["ok"] is True
    # Before: one entry per grant (4,000) and a regex rebuilt over all of them each time.
    assert len(REDACTOR) <= REDACTOR.capacity < 4000
    assert REDACTOR.scrub("error for pt-03999 at x") == "error for [redacted] at x"
