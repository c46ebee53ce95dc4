"""What every handler shares: the app's state (config, keys, a small connection pool,
templates), input that PostgreSQL could not store refused at the door, the session gate,
CSRF, rendering, and the one 404."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import queue
import re
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from clinic.config import ClinicConfig
from clinic.db.connect import Conn, connect
from clinic.errors import ClinicError, StoreUnavailable, UsageError
from clinic.keys import KeyRing
from clinic.web import access, auth, clinical
from clinic.web import security as sec

HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024
Form = dict[str, str]
#: what PostgreSQL text cannot hold (NUL) or psycopg cannot encode (an unpaired surrogate)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE = "The request contains a character that cannot be stored."


def unstorable(text: str) -> bool:
    """Whether ``text`` holds something no PostgreSQL text column can (NUL, a surrogate)."""
    return _UNSTORABLE.search(text) is not None


class BadInput(UsageError):
    """A path, query or form value no database column could hold: answered 400."""


def check_storable(request: Request, form: Form, lenient: Collection[str] = ()) -> None:
    """:class:`BadInput` if a path parameter, query parameter or form field (name or value)
    holds NUL or an unpaired surrogate. The values of ``lenient`` parameters are the
    handler's own business (it treats them as matching nothing)."""
    items = [*request.path_params.items(), *request.query_params.multi_items(), *form.items()]
    for name, value in items:
        if unstorable(name) or (name not in lenient and unstorable(str(value))):
            raise BadInput(UNSTORABLE_MESSAGE)


class Pool:
    """A few reusable autocommit connections; a broken one is dropped, not reused. Data
    PostgreSQL cannot take (``DataError``) is :class:`BadInput`, any other refusal
    :class:`StoreUnavailable`."""

    def __init__(self, dsn: str, size: int = 8) -> None:
        self._dsn = dsn
        self._q: queue.LifoQueue[Conn] = queue.LifoQueue(maxsize=size)

    @contextlib.contextmanager
    def conn(self) -> Iterator[Conn]:
        try:
            c = self._q.get_nowait()
        except queue.Empty:
            c = connect(self._dsn)
        ok = False
        try:
            yield c
            ok = True
        except psycopg.DataError as exc:  # the input, not the database: never its message
            raise BadInput(UNSTORABLE_MESSAGE) from exc
        except psycopg.Error as exc:
            raise StoreUnavailable("PostgreSQL refused the request") from exc
        finally:
            if ok and not c.closed and c.info.transaction_status == \
                    psycopg.pq.TransactionStatus.IDLE:
                try:
                    self._q.put_nowait(c)
                except queue.Full:
                    c.close()
            else:
                c.close()

    def close(self) -> None:
        while True:
            try:
                self._q.get_nowait().close()
            except queue.Empty:
                return


@dataclass
class WebState:
    cfg: ClinicConfig
    ring: KeyRing
    pool: Pool
    alerts: clinical.AlertSource | None = None
    rollups: clinical.HrRollups | None = None
    #: seconds between the event stream's looks at the database
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        self.alert_source = self.alerts or clinical.StoredAlerts(self.ring)
        self.hr_rollups = self.rollups or clinical.StoredHrRollups(self.ring)
        self.tz = ZoneInfo(self.cfg.web.time_zone)
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["local"] = self.local

    def local(self, t: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        return "—" if t is None else t.astimezone(self.tz).strftime(fmt + " %Z")

    @property
    def policy(self) -> sec.LockPolicy:
        return sec.LockPolicy(self.cfg.web.max_failures, self.cfg.web.lockout_s)


def state(request: Request) -> WebState:
    st: WebState = request.app.state.web
    return st


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


Handler = Callable[[Request, Form], Response]
Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(fn: Handler, lenient: frozenset[str]) -> Endpoint:
    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        form: Form = {}
        if request.method == "POST":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM_BYTES:
                    raise HTTPException(413)
            try:
                form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError as exc:
                raise HTTPException(400) from exc
        check_storable(request, form, lenient)
        return await run_in_threadpool(fn, request, form)

    return endpoint


def threaded(fn: Handler) -> Endpoint:
    """An async endpoint that reads a POSTed urlencoded form (bounded), refuses input
    PostgreSQL could not store (:func:`check_storable`), then runs ``fn`` (blocking database
    work) in the thread pool."""
    return _endpoint(fn, frozenset())


def threaded_lenient(*params: str) -> Callable[[Handler], Endpoint]:
    """:func:`threaded`, except that the named parameters' values are not checked: the
    handler itself treats a value no row can hold as matching nothing."""
    return lambda fn: _endpoint(fn, frozenset(params))


def session_of(request: Request, conn: Conn) -> auth.Session | None:
    web = state(request).cfg.web
    return auth.load_session(conn, request.cookies.get(sec.SESSION_COOKIE),
                             idle_s=web.idle_timeout_s, lifetime_s=web.session_lifetime_s)


class SignInNeeded(ClinicError):
    """No live session: the page redirects to the sign-in page."""


def gate(request: Request, conn: Conn, area: access.Area, form: Form | None = None, *,
         patient: str | None = None) -> auth.Session:
    """The session, if it may use ``area`` (and ``patient``); SignInNeeded or 404 otherwise.
    A POST must carry the session's CSRF token."""
    s = session_of(request, conn)
    if s is None:
        raise SignInNeeded
    assigned = patient is not None and clinical.is_assigned(conn, s.username, patient)
    if access.decide(s.role, area, assigned=assigned) is not access.Decision.ALLOW:
        raise HTTPException(404)
    if request.method == "POST" and not sec.same((form or {}).get("csrf"), s.csrf):
        raise HTTPException(403, "the form is out of date: reload the page and try again")
    return s


def render(request: Request, template: str, status: int = 200,
           session: auth.Session | None = None, **ctx: Any) -> HTMLResponse:
    st = state(request)
    html = st.env.get_template(template).render(
        session=session, zone=st.cfg.web.time_zone, path=request.url.path, **ctx)
    return HTMLResponse(html, status_code=status,
                        headers={"cache-control": "no-store"})


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)
