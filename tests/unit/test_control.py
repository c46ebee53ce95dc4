"""Control requests without a socket: the dispatcher's answers and the daemon's handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from edge.daemon.control import ControlHandlers, ControlServer, Handler
from edge.daemon.status import StatusDocument
from edge.errors import VaultFull
from edge.intake import ConsentGate
from edge.vault import Binding, Consent

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


async def _echo(request: Mapping[str, object], actor: str) -> object:
    return {"echo": request.get("x"), "actor": actor}


async def _boom(request: Mapping[str, object], actor: str) -> object:
    raise RuntimeError("secret detail AA:BB:CC:DD:EE:FF")


async def _full(request: Mapping[str, object], actor: str) -> object:
    raise VaultFull("vault_full_count", "the vault is full")


def _server(handlers: Mapping[str, Handler]) -> ControlServer:
    from pathlib import Path

    return ControlServer(Path("/nonexistent/never-bound.sock"), dict(handlers))


async def test_every_failure_is_an_ok_false_answer() -> None:
    server = _server({"echo": _echo, "boom": _boom, "full": _full})
    assert await server.dispatch(b'{"op": "echo", "x": 1}', "uid:7") == {
        "ok": True, "result": {"echo": 1, "actor": "uid:7"}}
    assert (await server.dispatch(b"not json", "uid:7"))["code"] == "bad_request"
    assert (await server.dispatch(b'{"nop": 1}', "uid:7"))["code"] == "bad_request"
    assert (await server.dispatch(b'{"op": "nope"}', "uid:7"))["code"] == "unknown_op"
    # an unexpected error shows its type only, never its message
    assert await server.dispatch(b'{"op": "boom"}', "uid:7") == {
        "ok": False, "error": "internal error (RuntimeError)", "code": "internal"}
    assert (await server.dispatch(b'{"op": "full"}', "uid:7"))["code"] == "VaultFull"


class Store:
    """Consent records in memory (the vault's consent calls)."""

    def __init__(self) -> None:
        self.records: dict[str, Consent] = {}
        self.revoked_by: list[str] = []
        self.bound: list[Binding] = []

    async def consents(self) -> Sequence[Consent]:
        return list(self.records.values())

    async def bindings(self) -> Sequence[Binding]:
        return list(self.bound)

    async def grant_consent(self, patient: str, *, scope: str, actor: str) -> None:
        self.records[patient] = Consent(patient, scope, T0, actor, None, None)

    async def revoke_consent(self, patient: str, *, actor: str) -> int:
        old = self.records[patient]
        self.records[patient] = Consent(patient, old.scope, old.granted_at, old.granted_by,
                                        T0, actor)
        self.revoked_by.append(actor)
        return 3


async def test_handlers_wait_for_set_up_and_go_through_the_gate() -> None:
    store = Store()
    gate = ConsentGate(store)
    ready = asyncio.Event()
    refreshed: list[bool] = []

    async def status() -> StatusDocument:
        return {"source": "daemon"}

    async def refresh() -> bool:
        refreshed.append(True)
        return True

    handlers = ControlHandlers(ready=ready, gate=gate, records=store, status=status,
                               refresh=refresh)
    server = _server(handlers.table())
    pending = asyncio.ensure_future(server.dispatch(b'{"op": "status"}', "uid:1"))
    await asyncio.sleep(0)
    assert not pending.done(), "requests wait until the daemon is set up"
    ready.set()
    assert await pending == {"ok": True, "result": {"source": "daemon",
                                                    "devices_without_consent": []}}

    granted = await server.dispatch(b'{"op": "consent.grant", "patient": "pt-one"}', "uid:1")
    assert granted["result"] == {"patient": "pt-one", "consent": "granted", "scope": "vitals"}
    assert gate.allows("pt-one")
    listed = await server.dispatch(b'{"op": "consent.list"}', "uid:1")
    assert listed["result"] == [{"patient": "pt-one", "scope": "vitals",
                                 "granted_at": T0.isoformat(), "granted_by": "control:uid:1",
                                 "revoked_at": None, "revoked_by": None}]
    revoked = await server.dispatch(b'{"op": "consent.revoke", "patient": "pt-one"}', "uid:1")
    assert revoked["result"] == {"patient": "pt-one", "consent": "revoked", "purged": 3}
    assert not gate.allows("pt-one") and store.revoked_by == ["control:uid:1"]

    bad = await server.dispatch(b'{"op": "consent.grant", "patient": "Jane Doe"}', "uid:1")
    assert bad["ok"] is False and bad["code"] == "bad_request" and "Jane" not in str(bad)
    missing = await server.dispatch(b'{"op": "consent.revoke"}', "uid:1")
    assert missing["code"] == "bad_request"
    assert (await server.dispatch(b'{"op": "devices.refresh"}', "uid:1"))["result"] == {
        "refreshed": True}
    assert refreshed == [True]
