"""The local control socket: newline-delimited JSON over a Unix stream socket.

Request: ``{"op": "status"}``, ``{"op": "consent.grant", "patient": "...", "scope": "..."}``,
``{"op": "consent.revoke", "patient": "..."}``, ``{"op": "consent.list"}``,
``{"op": "devices.refresh"}``. Response: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "<safe message>", "code": "<word>"}``. One request per line; a
connection may send several.

The socket is 0660 inside a directory that is at most 0750, so only the daemon's user and
group can talk to it. The peer's uid (SO_PEERCRED) is the ``actor`` of audited commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from edge.daemon.status import StatusDocument, consent_json
from edge.errors import ControlError, DaemonNotRunning, EdgeError, UsageError
from edge.intake.consent import ConsentGate
from edge.log import REDACTOR, get_logger
from edge.readings import check_pseudonym
from edge.vault import Consent

log = get_logger("edge.control")

#: a request line larger than this is refused (the socket is local, but still bounded)
MAX_LINE = 64 * 1024
SOCKET_MODE = 0o660
DIR_MODE = 0o750

#: a request handler: the parsed request and the peer's ``uid:<n>``; returns a JSON value
Handler = Callable[[Mapping[str, object], str], Awaitable[object]]
#: one response line
Response = dict[str, object]

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
    """Create the parent directory 0750 if missing; remove a stale socket; refuse to start
    when another daemon is listening or the path is not a socket."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if parent.stat().st_mode & stat.S_IRWXO:
        # Others must not even reach the socket; tighten a directory we may own.
        with contextlib.suppress(PermissionError):
            parent.chmod(parent.stat().st_mode & ~stat.S_IRWXO & 0o7777)
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
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: left behind by a killed daemon
        return
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ControlError("another edge daemon is already running (control socket in use)", "busy")


class ControlServer:
    """Serves control requests with the handlers given by the daemon."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self._path = path
        self._handlers = handlers
        self._server: asyncio.Server | None = None

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
                self._serve, path=str(self._path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        self._path.chmod(SOCKET_MODE)
        log.info("control.listening")

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
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
            with contextlib.suppress(OSError):
                self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        actor = peer_actor(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request too long",
                                               "code": "bad_request"})
                    return
                if not line:
                    return
                response = await self.dispatch(line, actor)
                await self._reply(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reply(self, writer: asyncio.StreamWriter, response: Response) -> None:
        writer.write(json.dumps(response, default=str).encode() + b"\n")
        await writer.drain()

    async def dispatch(self, line: bytes, actor: str) -> Response:
        """Handle one request line; every failure becomes an ``ok: false`` response."""
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON", "code": "bad_request"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "request needs an \"op\"", "code": "bad_request"}
        op: str = request["op"]
        handler = self._handlers.get(op)
        if handler is None:
            return {"ok": False, "error": f"unknown op {op[:40]!r}", "code": "unknown_op"}
        try:
            result = await handler(request, actor)
        except ControlError as exc:
            return {"ok": False, "error": str(exc), "code": exc.code}
        except EdgeError as exc:
            log.warning("control.failed", op=op, error=type(exc).__name__)
            return {"ok": False, "error": str(exc), "code": type(exc).__name__}
        except Exception as exc:
            log.error("control.internal_error", op=op, error=type(exc).__name__)
            return {"ok": False, "error": f"internal error ({type(exc).__name__})",
                    "code": "internal"}
        log.info("control.request", op=op)
        return {"ok": True, "result": result}


class ConsentList(Protocol):
    """Where ``consent.list`` reads the records (the vault)."""

    async def consents(self) -> Sequence[Consent]: ...


class ControlHandlers:
    """The daemon's requests: ``status``, ``consent.grant|revoke|list``, ``devices.refresh``.

    Every request waits for ``ready`` (the daemon's set-up), so the socket can listen first:
    once it is bound a CLI no longer writes consent straight into the vault."""

    def __init__(
        self,
        *,
        ready: asyncio.Event,
        gate: ConsentGate,
        records: ConsentList,
        status: Callable[[], Awaitable[StatusDocument]],
        refresh: Callable[[], Awaitable[bool]],
    ) -> None:
        self._ready = ready
        self._gate = gate
        self._records = records
        self._status = status
        self._refresh = refresh

    def table(self) -> dict[str, Handler]:
        """Handlers by op, for :class:`ControlServer`."""
        handlers: dict[str, Handler] = {
            "status": self.status,
            "consent.grant": self.grant,
            "consent.revoke": self.revoke,
            "consent.list": self.consents,
            "devices.refresh": self.refresh,
        }
        return {op: self._after_set_up(h) for op, h in handlers.items()}

    def _after_set_up(self, handler: Handler) -> Handler:
        async def gated(request: Mapping[str, object], actor: str) -> object:
            await self._ready.wait()
            return await handler(request, actor)

        return gated

    async def status(self, request: Mapping[str, object], actor: str) -> object:
        return await self._status()

    async def grant(self, request: Mapping[str, object], actor: str) -> object:
        patient = patient_param(request)
        scope = str(request.get("scope") or "vitals")
        REDACTOR.register([patient])
        await self._gate.grant(patient, scope=scope, actor=f"control:{actor}")
        return {"patient": patient, "consent": "granted", "scope": scope}

    async def revoke(self, request: Mapping[str, object], actor: str) -> object:
        patient = patient_param(request)
        REDACTOR.register([patient])
        purged = await self._gate.revoke(patient, actor=f"control:{actor}")
        return {"patient": patient, "consent": "revoked", "purged": purged}

    async def consents(self, request: Mapping[str, object], actor: str) -> object:
        return [consent_json(c) for c in await self._records.consents()]

    async def refresh(self, request: Mapping[str, object], actor: str) -> object:
        return {"refreshed": await self._refresh()}


def patient_param(request: Mapping[str, object]) -> str:
    """The request's ``patient``, checked to be a pseudonym (``bad_request`` otherwise)."""
    patient = request.get("patient")
    if not isinstance(patient, str):
        raise ControlError("a patient pseudonym is required", "bad_request")
    try:
        return check_pseudonym(patient)
    except UsageError as exc:
        raise ControlError(str(exc), "bad_request") from exc


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
            sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 16 * MAX_LINE:
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
