"""The control socket under a local user's attack (issue 14): 1,100 idle connections, a slow
request, accept errors on every retry, a world-writable socket directory. Real Unix sockets;
time is a ManualClock, so nothing here waits on the wall clock except bounded polls."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.daemon.control import BUSY, IDLE, ControlClient, ControlServer
from edge.daemon.control_protocol import AcceptErrorLimiter
from edge.errors import ControlError
from edge.testing import ManualClock, eventually

IDLE_CONNECTIONS = 1_100
CAP = 32


async def _echo(request: Mapping[str, object], actor: str) -> object:
    return {"echo": request.get("x")}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_idle_connections_are_capped_then_timed_out(tmp_path: Path) -> None:
    import json

    clock = ManualClock()
    path = tmp_path / "run" / "control.sock"
    server = ControlServer(path, {"echo": _echo}, max_connections=CAP, idle_timeout_s=5.0,
                           clock=clock)
    await server.start()
    task = asyncio.create_task(server.serve_forever())
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        before = _open_fds()
        # one slow request among them: a line that never ends
        conns.append(await asyncio.open_unix_connection(str(path)))
        conns[0][1].write(b'{"op": "echo", "x": ')
        for _ in range(IDLE_CONNECTIONS - 1):
            conns.append(await asyncio.open_unix_connection(str(path)))
        await eventually(lambda: server.connections + server.refused == IDLE_CONNECTIONS,
                         within_s=60, what="every connection accepted or refused")
        assert server.connections == CAP
        assert server.refused == IDLE_CONNECTIONS - CAP
        # a refused connection is told why and closed at once: the daemon keeps no descriptor
        assert json.loads(await conns[-1][0].readline()) == BUSY
        assert await conns[-1][0].read() == b""
        # Before: the daemon held one descriptor per connection, 1,100 more here.
        await eventually(lambda: _open_fds() <= before + IDLE_CONNECTIONS + CAP + 8,
                         within_s=30, what="refused descriptors released")

        # while the idle ones hold every slot a client is told the daemon is busy ...
        client = ControlClient(path, timeout_s=10)
        with pytest.raises(ControlError) as ei:
            await asyncio.to_thread(client.request, "echo", x=1)
        assert ei.value.code == "busy"
        # ... until they time out (on the server's clock), slow request included
        await clock.advance(5.0)
        await eventually(lambda: server.connections == 0, within_s=30,
                         what="idle connections closed")
        assert json.loads(await conns[0][0].readline()) == IDLE
        assert (await asyncio.to_thread(client.request, "echo", x=1)) == {"echo": 1}
    finally:
        for _, writer in conns:
            writer.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_accept_errors_are_logged_at_most_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    server = ControlServer(tmp_path / "c.sock", {"echo": _echo}, clock=clock)
    await server.start()
    loop = asyncio.get_running_loop()
    context = {"message": AcceptErrorLimiter.MESSAGE,
               "exception": OSError(errno.EMFILE, "Too many open files")}
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"), capture_logs() as events:
            for _ in range(1000):
                loop.call_exception_handler(dict(context))
            await clock.advance(60.0)
            loop.call_exception_handler(dict(context))
        # Before: asyncio's default handler wrote one error (with traceback) per failure.
        assert [r for r in caplog.records if r.name == "asyncio"] == []
        failed = [e for e in events if e["event"] == "control.accept_failed"]
        assert [(e["count"], e["total"]) for e in failed] == [(1, 1), (1000, 1001)]
        assert failed[0]["error"] == "Too many open files"
        # every other asyncio error still reaches the handler that was there before
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler({"message": "something else"})
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [
            "something else"]
    finally:
        await server.close()
    assert loop.get_exception_handler() is None, "the previous handler is put back"


async def test_an_existing_socket_directory_is_never_re_moded(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ControlError) as ei:
        await ControlServer(shared / "c.sock", {"echo": _echo}).start()
    assert ei.value.code == "bad_path" and "writable by others" in str(ei.value)
    # Before: the daemon changed the directory's mode (1777 -> 1770) and started.
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert not (shared / "c.sock").exists()

    readable = tmp_path / "readable"
    readable.mkdir()
    readable.chmod(0o755)
    server = ControlServer(readable / "c.sock", {"echo": _echo})
    await server.start()
    try:
        # the socket itself keeps others out (0660); the directory is left as it was
        assert stat.S_IMODE(readable.stat().st_mode) == 0o755
        assert stat.S_IMODE((readable / "c.sock").stat().st_mode) == 0o660
    finally:
        await server.close()
