"""The control protocol without a socket: :func:`parse_request` on any line, and
``ControlServer.dispatch`` with the daemon's real handlers over in-memory fakes.

``parse_request`` documents ``BadRequest`` and nothing else. ``dispatch`` never raises: it
answers ``ok: false`` — and an answer with code ``internal`` means a handler raised something
it should not have, which is a crash here. Every answer must serialise as the server sends it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.daemon.control import ControlServer
from edge.daemon.control_handlers import ControlHandlers
from edge.daemon.control_protocol import MAX_REQUEST_BYTES, BadRequest, op_name, parse_request
from edge.daemon.status import StatusDocument
from edge.intake.consent import ConsentGate, ConsentRecord
from edge.vault import Binding, Consent
from fuzz.data import Data

_T0 = datetime(2025, 1, 1, tzinfo=UTC)
_KNOWN = "p-0001"
_OPS = ("status", "consent.grant", "consent.revoke", "consent.list", "devices.refresh")
_FIELDS = ("patient", "scope", "op", "extra")


class _Store:
    """A consent store that keeps only what one request needs."""

    def __init__(self) -> None:
        self.records = [Consent(_KNOWN, "vitals", _T0, "uid:0", None, None)]

    async def consents(self) -> Sequence[ConsentRecord]:
        return self.records

    async def grant_consent(self, patient: str, *, scope: str, actor: str) -> None:
        self.records = [Consent(patient, scope, _T0, actor, None, None)]

    async def revoke_consent(self, patient: str, *, actor: str) -> int:
        return 0


class _Records:
    def __init__(self, store: _Store) -> None:
        self._store = store

    async def consents(self) -> Sequence[Consent]:
        return self._store.records

    async def bindings(self) -> Sequence[Binding]:
        return [Binding("AA:BB:CC:DD:EE:01", "heart_rate", _KNOWN, True, _T0, "uid:0", None)]


async def _status() -> StatusDocument:
    return {"source": "daemon", "hub": "hub-1", "healthy": True}


async def _refresh() -> bool:
    return True


def _server() -> ControlServer:
    ready = asyncio.Event()
    ready.set()
    store = _Store()
    handlers = ControlHandlers(ready=ready, gate=ConsentGate(store), records=_Records(store),
                               status=_status, refresh=_refresh)
    return ControlServer(Path("/nonexistent/edge/control.sock"), handlers.table())


def _run(coro: Coroutine[Any, Any, dict[str, object]]) -> dict[str, object]:
    """Run a coroutine that never has to wait (every fake answers at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: dict[str, object] = done.value
        return result
    coro.close()
    raise AssertionError("dispatch waited on something")


def _dispatch(line: bytes) -> None:
    response = _run(_server().dispatch(line, "uid:1000"))
    assert isinstance(response.get("ok"), bool), response
    if not response["ok"]:
        assert isinstance(response.get("error"), str) and isinstance(response.get("code"), str)
        assert response["code"] != "internal", response
    json.dumps(response, default=str)  # what _line sends


def _structured(d: Data) -> bytes:
    """A request object with known ops and fields and fuzzed values."""
    request: dict[str, object] = {"op": d.pick(_OPS) if d.flag() else d.text(40)}
    for _ in range(d.u8() % 4):
        key = d.pick(_FIELDS) if d.flag() else d.text(16)
        kind = d.u8() % 5
        value: object
        if kind == 0:
            value = d.sint(8)
        elif kind == 1:
            value = [d.text(8)]
        elif kind == 2:
            value = None
        else:
            value = d.text(80)
        request[key] = value
    return json.dumps(request, ensure_ascii=d.flag()).encode()


def control_protocol(data: bytes) -> None:
    d = Data(data)
    mode = d.u8() % 3
    line = _structured(d) if mode == 2 else d.rest()
    try:
        request = parse_request(line)
    except BadRequest:
        pass
    else:
        assert len(line) <= MAX_REQUEST_BYTES
        assert isinstance(request, dict) and isinstance(request["op"], str)
        assert isinstance(op_name(request), str)
    if mode:
        _dispatch(line)
