"""The control socket over real Unix sockets: protocol, permissions, stale sockets, the
blocking client."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edge.daemon.control import ControlClient, ControlServer, Handler
from edge.errors import ControlError, DaemonNotRunning, VaultFull
from tests.support.privileges import require_root


async def _echo(request: Mapping[str, object], actor: str) -> object:
    return {"echo": request.get("x"), "actor": actor}


async def _boom(request: Mapping[str, object], actor: str) -> object:
    raise RuntimeError("secret detail AA:BB:CC:DD:EE:FF")


async def _full(request: Mapping[str, object], actor: str) -> object:
    raise VaultFull("vault_full_count", "the vault is full")


def _handlers() -> dict[str, Handler]:
    return {"echo": _echo, "boom": _boom, "full": _full}


# Any: the replies are parsed JSON.
async def _request(path: Path, payload: bytes) -> list[dict[str, Any]]:
    import json

    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    out = []
    while line := await reader.readline():
        out.append(json.loads(line))
    writer.close()
    await writer.wait_closed()
    return out


async def test_protocol_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "run" / "edge" / "control.sock"
    server = ControlServer(path, _handlers())
    await server.start()
    task = asyncio.create_task(server.serve_forever())
    try:
        # a missing parent is created owner+group only; the socket is 0660
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660

        replies = await _request(
            path,
            b'{"op": "echo", "x": 1}\n'
            b"not json\n"
            b'{"nop": 1}\n'
            b'{"op": "nope"}\n'
            b'{"op": "boom"}\n'
            b'{"op": "full"}\n',
        )
        assert replies[0] == {"ok": True, "result": {"echo": 1, "actor": f"uid:{os.getuid()}"}}
        assert replies[1]["code"] == "bad_request"
        assert replies[2]["code"] == "bad_request"
        assert replies[3]["code"] == "unknown_op"
        # an unexpected error shows its type only, never its message
        assert replies[4] == {"ok": False, "error": "internal error (RuntimeError)",
                              "code": "internal"}
        assert replies[5]["ok"] is False and replies[5]["code"] == "VaultFull"

        # the blocking client (in a thread: the server runs on this loop)
        client = ControlClient(path, timeout_s=5)
        result = await asyncio.to_thread(client.request, "echo", x="y")
        assert result["echo"] == "y"
        with pytest.raises(ControlError) as ei:
            await asyncio.to_thread(client.request, "nope")
        assert ei.value.code == "unknown_op"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not path.exists(), "the socket is removed on the way out"


async def test_oversized_request_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(path, _handlers())
    await server.start()
    task = asyncio.create_task(server.serve_forever())
    try:
        replies = await _request(path, b"x" * (200 * 1024) + b"\n")
        assert replies == [{"ok": False, "error": "request too long", "code": "bad_request"}]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    # a socket file left behind by a killed daemon: nobody listens
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    first = ControlServer(path, _handlers())
    await first.start()
    try:
        second = ControlServer(path, _handlers())
        with pytest.raises(ControlError) as ei:
            await second.start()
        assert ei.value.code == "busy"
    finally:
        await first.close()


async def test_a_non_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    path.write_text("not a socket")
    with pytest.raises(ControlError):
        await ControlServer(path, _handlers()).start()
    assert path.read_text() == "not a socket"


def test_client_reports_a_daemon_that_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "absent.sock").request("status")
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with pytest.raises(DaemonNotRunning):
        ControlClient(dead).request("status")


async def test_only_owner_and_group_reach_the_socket() -> None:
    import shutil
    import tempfile

    require_root("it runs a client as another user")

    base = Path(tempfile.mkdtemp(prefix="edge-ctl-"))
    try:
        os.chmod(base, 0o711)  # others may pass through, as through /run
        path = base / "edge" / "control.sock"
        server = ControlServer(path, _handlers())
        await server.start()
        task = asyncio.create_task(server.serve_forever())

        def run_as(gid: int) -> str:
            """Connect from a forked child running as uid nobody with primary group ``gid``."""
            pid = os.fork()
            if pid == 0:  # the child: only system calls, then _exit
                code = 2
                try:
                    os.setgroups([])
                    os.setgid(gid)
                    os.setuid(65534)
                    s = socket.socket(socket.AF_UNIX)
                    try:
                        s.connect(str(path))
                        code = 0
                    except PermissionError:
                        code = 13
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            return {0: "connected", 13: "denied"}.get(os.waitstatus_to_exitcode(status), "?")

        try:
            assert await asyncio.to_thread(run_as, 65534) == "denied"  # someone else
            assert await asyncio.to_thread(run_as, os.getgid()) == "connected"  # the group
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        shutil.rmtree(base, ignore_errors=True)
