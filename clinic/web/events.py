"""Live updates as server-sent events: the stream looks at the database every few seconds
and sends ``update`` when what the page shows has changed (a new reading, an alert opened or
closed); the page's script then fetches itself again. The stream is not activity: it does
not extend the session, and it ends (``end``) when the session does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from clinic.db.registry import check_pseudonym
from clinic.errors import ClinicError
from clinic.web import access, auth, clinical
from clinic.web import security as sec
from clinic.web.common import SignInNeeded, check_storable, state

Fingerprint = tuple[int, tuple[int, ...]]


def _look(request: Request, patient: str | None) -> Fingerprint:
    st = state(request)
    web = st.cfg.web
    with st.pool.conn() as conn:
        s = auth.load_session(conn, request.cookies.get(sec.SESSION_COOKIE),
                              idle_s=web.idle_timeout_s, lifetime_s=web.session_lifetime_s,
                              touch=False)
        if s is None:
            raise SignInNeeded
        if patient is None:
            mine = clinical.assigned(conn, s.username)
            ok = access.decide(s.role, access.Area.CLINICAL_LIST)
        else:
            ok = access.decide(s.role, access.Area.PATIENT,
                               assigned=clinical.is_assigned(conn, s.username, patient))
            mine = [patient]
        if ok is not access.Decision.ALLOW:
            raise HTTPException(404)
        row = conn.execute("SELECT coalesce(max(id), 0) FROM observations "
                           "WHERE patient = ANY(%s)", (mine,)).fetchone()
        alerts = tuple(sorted(a.id for a in st.alert_source.open_for(conn, s.username)
                              if a.patient in mine))
    return (int(row[0]) if row else 0, alerts)


async def events(request: Request) -> Response:
    check_storable(request, {})
    p = request.query_params.get("patient")
    if p is not None:
        try:
            check_pseudonym(p)
        except ClinicError as exc:
            raise HTTPException(404) from exc
    first = await run_in_threadpool(_look, request, p)  # refuses before the stream starts
    poll = state(request).poll_s

    async def stream() -> AsyncIterator[str]:
        last = first
        yield "retry: 5000\n\n"
        while True:
            await anyio.sleep(poll)
            try:
                now = await run_in_threadpool(_look, request, p)
            except (ClinicError, HTTPException):
                yield "event: end\ndata: {}\n\n"
                return
            if now != last:
                last = now
                yield "event: update\ndata: {}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store"})
