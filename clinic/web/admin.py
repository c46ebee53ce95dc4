"""The admin pages (users, patients and assignments, hubs, tokens — what the CLI does, no
clinical data) and the auditor's audit log. Every change goes through clinic.db.registry,
which audits it with the web user as actor."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from clinic import audit
from clinic.db import registry
from clinic.errors import UsageError
from clinic.web import auth
from clinic.web.access import Area
from clinic.web.common import Form, gate, redirect, render, state, threaded


@threaded
def admin_page(request: Request, form: Form) -> Response:
    with state(request).pool.conn() as conn:
        s = gate(request, conn, Area.ADMIN)
        users = [(str(u), str(r), bool(d)) for u, r, d in conn.execute(
            "SELECT username, role, disabled FROM users ORDER BY username")]
        patients = registry.list_patients(conn)
        hubs = registry.list_hubs(conn)
        tokens = auth.list_tokens(conn)
    return render(request, "admin.html", session=s, users=users, patients=patients, hubs=hubs,
                  tokens=tokens, clinicians=[u for u, r, d in users if r == "clinician"])


@threaded
def admin_action(request: Request, form: Form) -> Response:
    what = str(request.path_params["action"])
    with state(request).pool.conn() as conn:
        s = gate(request, conn, Area.ADMIN, form)
        actor = "web:" + s.username
        if what in ("assign", "unassign"):
            registry.assign(conn, form.get("pseudonym", ""), form.get("clinician", ""), actor,
                            on=what == "assign")
        elif what == "hub-enroll":
            registry.enroll_hub(conn, form.get("hub_id", ""), actor)
        elif what == "hub-revoke":
            registry.revoke_hub(conn, form.get("hub_id", ""), actor)
        elif what == "user-disable":
            registry.disable_user(conn, form.get("username", ""), actor)
        elif what == "token-revoke":
            try:
                auth.revoke_token(conn, int(form.get("token_id", "")), actor)
            except ValueError as exc:
                raise UsageError("a token id is a number") from exc
        else:
            raise UsageError("unknown action")
    return redirect("/admin")


@threaded
def audit_page(request: Request, form: Form) -> Response:
    with state(request).pool.conn() as conn:
        s = gate(request, conn, Area.AUDIT)
        n, broken = audit.verify(conn)
        records = audit.tail(conn, 500)[::-1]
        audit.append(conn, s.username, "audit.view", "", {"records": len(records)})
    return render(request, "audit.html", session=s, records=records, n=n, broken=broken)
