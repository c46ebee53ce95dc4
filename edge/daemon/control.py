"""The local control socket: newline-delimited JSON over a Unix stream socket.

Request: ``{"op": "status"}``, ``{"op": "consent.grant", "patient": "...", "scope": "..."}``,
``{"op": "consent.revoke", "patient": "..."}``, ``{"op": "consent.list"}``,
``{"op": "devices.refresh"}``. Response: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "<safe message>", "code": "<word>"}``. One request per line; a
connection may send several.

The socket is 0660, so only the daemon's user and group can talk to it. Its directory is
created 0750 when missing; an existing one is never re-moded, and one that others may write
(``/tmp``-like, even with the sticky bit) or that another user owns is refused. The peer's uid
(SO_PEERCRED) is the ``actor`` of audited commands.

Bounds (a local user must not be able to starve the daemon): at most ``max_connections``
connections at once (more are answered ``busy`` and closed at once); a connection that does
not complete a request line within ``idle_timeout_s`` is closed; requests are bounded as
:mod:`edge.daemon.control_protocol` says; the accept loop's "out of system resource" errors
are logged at most once a minute.

The idle timeout runs on the injected clock, the real one by default. The daemon's peers are
other processes that move in real time; tests inject a ManualClock and advance it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from edge.clock import Clock, SystemClock, with_timeout
from edge.config_checks import socket_dir_problem
from edge.daemon.control_handlers import ControlHandlers
from edge.daemon.control_protocol import (
    MAX_REQUEST_BYTES,
    AcceptErrorLimiter,
    BadRequest,
    Handler,
    Response,
    op_name,
    parse_request,
)
from edge.errors import ControlError, DaemonNotRunning, EdgeError
from edge.log import get_logger

log = get_logger("edge.control")

#: kept for callers that bound a request line
MAX_LINE = MAX_REQUEST_BYTES
#: the largest answer the client reads (``consent.list`` of a hub with many patients)
MAX_RESPONSE_BYTES = 4 << 20
SOCKET_MODE = 0o660
DIR_MODE = 0o750
#: defaults of ``daemon.control_max_connections`` / ``daemon.control_idle_timeout_s``
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 5.0

BUSY: Response = {"ok": False, "error": "too many control connections; try again",
                  "code": "busy"}
IDLE: Response = {"ok": False, "error": "no complete request in time; closed", "code": "timeout"}

__all__ = ["ControlClient", "ControlError", "ControlHandlers", "ControlServer",
           "DaemonNotRunning", "Handler", "peer_actor"]


def peer_actor(sock: socket.socket | None) -> str:
    """``uid:<n>`` of the connected peer (Linux SO_PEERCRED), or ``uid:?``."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return "uid:?"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except OSError:
        return "uid:?"
    return f"uid:{uid}"


def _prepare_path(path: Path) -> None:
    """Create the parent directory 0750 if missing (never re-mode an existing one; refuse one
    others may write); remove a stale socket; refuse to start when another daemon is listening
    or the path is not a socket."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    problem = socket_dir_problem(parent)
    if problem is not None:
        raise ControlError(problem, "bad_path")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"control socket path {path} exists and is not a socket", "bad_path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # stale: left behind by a killed daemon
        return
    finally:
        probe.close()
    raise ControlError("another edge daemon is already running (control socket in use)", "busy")


class ControlServer:
    """Serves control requests with the handlers given by the daemon."""

    def __init__(
        self,
        path: Path,
        handlers: dict[str, Handler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock: Clock | None = None,
    ) -> None:
        self._path = path
        self._handlers = handlers
        self._server: asyncio.Server | None = None
        self._max = max_connections
        self._idle_s = idle_timeout_s
        self._clock: Clock = clock or SystemClock()
        self._limiter: AcceptErrorLimiter | None = None
        #: connections being served now; connections refused because of the cap
        self.connections = 0
        self.refused = 0

    @property
    def path(self) -> Path:
        """Where the socket lives."""
        return self._path

    async def start(self) -> None:
        """Bind with mode 0660 (the umask is tightened around bind so there is no window)."""
        _prepare_path(self._path)
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self._path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old)
        self._path.chmod(SOCKET_MODE)
        loop = asyncio.get_running_loop()
        self._limiter = AcceptErrorLimiter(self._clock, previous=loop.get_exception_handler())
        loop.set_exception_handler(self._limiter)
        log.info("control.listening", max_connections=self._max)

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled; the socket is removed on the way out."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        server, self._server = self._server, None
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            loop, previous = asyncio.get_running_loop(), limiter.previous
            if loop.get_exception_handler() is limiter:
                loop.set_exception_handler(previous)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
            with contextlib.suppress(OSError):
                self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self._max:
            # Answer and let go at once: the descriptor is held for microseconds, not forever.
            self.refused += 1
            with contextlib.suppress(Exception):
                writer.write(_line(BUSY))
                writer.close()
            return
        self.connections += 1
        try:
            await self._converse(reader, writer)
        except Exception as exc:  # never an unhandled exception in a connection handler
            log.warning("control.connection_failed", error=type(exc).__name__)
        finally:
            self.connections -= 1
            await self._hang_up(writer)

    async def _converse(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        actor = peer_actor(writer.get_extra_info("socket"))
        while True:
            try:
                line = await with_timeout(self._clock, self._idle_s, reader.readline())
            except TimeoutError:
                writer.write(_line(IDLE))
                return
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(_line(_refusal(BadRequest("request too long"))))
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            if not line:
                return
            writer.write(_line(await self.dispatch(line, actor)))
            try:
                await with_timeout(self._clock, self._idle_s, writer.drain())
            except (TimeoutError, ConnectionError):
                return

    async def _hang_up(self, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a peer that does not read its answers gets no more time
        else:
            writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def dispatch(self, line: bytes, actor: str) -> Response:
        """Handle one request line; every failure becomes an ``ok: false`` response."""
        try:
            request = parse_request(line)
        except BadRequest as exc:
            return _refusal(exc)
        op: str = request["op"]
        handler = self._handlers.get(op)
        if handler is None:
            shown = op_name(request)
            return {"ok": False, "error": "unknown op" + ("" if shown == "?" else f" {shown!r}"),
                    "code": "unknown_op"}
        try:
            result = await handler(request, actor)
        except ControlError as exc:
            return _refusal(exc)
        except EdgeError as exc:
            log.warning("control.failed", op=op, error=type(exc).__name__)
            return {"ok": False, "error": str(exc), "code": type(exc).__name__}
        except Exception as exc:
            log.error("control.internal_error", op=op, error=type(exc).__name__)
            return {"ok": False, "error": f"internal error ({type(exc).__name__})",
                    "code": "internal"}
        log.debug("control.request", op=op)  # one line per request only when debugging
        return {"ok": True, "result": result}


def _refusal(exc: ControlError) -> Response:
    return {"ok": False, "error": str(exc), "code": exc.code}


def _line(response: Response) -> bytes:
    return json.dumps(response, default=str).encode() + b"\n"


class ControlClient:
    """A blocking client for the CLI."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self._path = path
        self._timeout = timeout_s

    # The result is the daemon's JSON, whose shape depends on ``op``: callers read it as such.
    def request(self, op: str, **params: object) -> Any:
        """Send one request and return its ``result``; raises DaemonNotRunning when nobody
        listens, ControlError for a refused request or a permission problem."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            try:
                sock.connect(str(self._path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonNotRunning() from exc
            except PermissionError as exc:
                raise ControlError(
                    f"no permission to use the control socket {self._path} — run as the edge "
                    "user or a member of its group",
                    "permission",
                ) from exc
            # a busy daemon answers and hangs up before reading the request: read its answer
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise ControlError("control response too large", "bad_response")
        except TimeoutError as exc:
            raise ControlError("the daemon did not answer in time", "timeout") from exc
        except OSError as exc:
            raise ControlError(f"control socket error ({type(exc).__name__})", "io") from exc
        finally:
            sock.close()
        try:
            response = json.loads(buf)
        except json.JSONDecodeError as exc:
            raise ControlError("the daemon's answer is not JSON", "bad_response") from exc
        if not isinstance(response, dict):
            raise ControlError("the daemon's answer is not an object", "bad_response")
        if not response.get("ok"):
            raise ControlError(str(response.get("error", "refused")),
                               str(response.get("code", "error")))
        return response.get("result")
