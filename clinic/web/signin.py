"""Sign-in, sign-out and the user's own page. The sign-in form (``username``, ``password``,
``otp`` on one page) is protected by a double-submit token: a random value in a host-only,
SameSite=Strict cookie that the form must repeat."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from clinic.web import access, auth
from clinic.web import security as sec
from clinic.web.common import Form, gate, redirect, render, session_of, state, threaded


def _form(request: Request, error: str = "", status: int = 200) -> Response:
    pre = request.cookies.get(sec.PRE_COOKIE) or sec.new_secret()
    resp = render(request, "signin.html", status, csrf=pre, error=error)
    resp.headers.append("set-cookie", sec.cookie_header(sec.PRE_COOKIE, pre, max_age=3600))
    return resp


@threaded
def signin_page(request: Request, form: Form) -> Response:
    with state(request).pool.conn() as conn:
        s = session_of(request, conn)
    if s is not None:
        return redirect(access.home(s.role))
    return _form(request)


@threaded
def signin_submit(request: Request, form: Form) -> Response:
    st = state(request)
    if not sec.same(form.get("csrf"), request.cookies.get(sec.PRE_COOKIE)):
        return _form(request, "The form had expired. Please sign in again.", 403)
    try:
        with st.pool.conn() as conn:
            role = auth.sign_in(conn, st.ring, form.get("username", ""),
                                form.get("password", ""), form.get("otp", ""), st.policy)
            sid = auth.create_session(conn, form.get("username", "").strip())
    except auth.SignInRefused as exc:
        if exc.reason == "locked":
            return _form(request, "Too many failed sign-ins: this account is locked for a "
                                  "while. Ask an administrator if it persists.", 429)
        return _form(request, "Sign-in failed: check your username, password and code.", 401)
    resp = redirect(access.home(role))
    resp.headers.append("set-cookie", sec.cookie_header(sec.SESSION_COOKIE, sid))
    resp.headers.append("set-cookie", sec.cookie_header(sec.PRE_COOKIE, "", max_age=0))
    return resp


@threaded
def signout(request: Request, form: Form) -> Response:
    with state(request).pool.conn() as conn:
        s = gate(request, conn, access.Area.SELF, form)
        auth.end_session(conn, request.cookies.get(sec.SESSION_COOKIE), s.username)
    resp = redirect("/signin")
    resp.headers.append("set-cookie", sec.cookie_header(sec.SESSION_COOKIE, "", max_age=0))
    return resp


@threaded
def me_page(request: Request, form: Form) -> Response:
    with state(request).pool.conn() as conn:
        s = gate(request, conn, access.Area.SELF, form)
        if request.method == "POST":
            auth.set_unit(conn, s.username, form.get("unit", ""))
            return redirect("/me")
    return render(request, "me.html", session=s)


@threaded
def home(request: Request, form: Form) -> Response:
    with state(request).pool.conn() as conn:
        s = session_of(request, conn)
    return redirect("/signin" if s is None else access.home(s.role))
