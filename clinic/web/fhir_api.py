"""The FHIR R4 read API: Observation search (searchset Bundles with paging links) and read,
the CapabilityStatement, and the OpenAPI document. Bearer tokens (``clinic tokens create``)
see exactly what their user may see; anything else answers 404, like the pages."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clinic.db.connect import Conn
from clinic.errors import UsageError
from clinic.web import access, auth, clinical
from clinic.web.common import Form, SignInNeeded, state, threaded_lenient, unstorable
from clinic.web.fhir_docs import capability, openapi
from edge.fhir import to_json

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
DEFAULT_COUNT, MAX_COUNT = 50, 500
_PREFIXES = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "eq": "="}


def outcome(status: int, code: str, text: str,
            headers: dict[str, str] | None = None) -> Response:
    doc = {"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return JSONResponse(doc, status_code=status, media_type=FHIR_JSON, headers=headers)


def _fhir(doc: dict[str, Any]) -> Response:
    return Response(to_json(doc), media_type=FHIR_JSON, headers={"cache-control": "no-store"})


def _user(request: Request, conn: Conn) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    who = auth.token_user(conn, token.strip()) if scheme.lower() == "bearer" else None
    if who is None:
        raise SignInNeeded
    return who


def date_clauses(values: list[str]) -> list[tuple[str, dt.datetime]]:
    """FHIR ``date`` parameters (``ge2024-01-01``, ``lt2024-01-02T10:00:00Z`` …) as
    (SQL operator, instant); a date without a zone is UTC."""
    out = []
    for v in values:
        op = _PREFIXES.get(v[:2])
        text = v[2:] if op else v
        try:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise UsageError("date must be [ge|gt|le|lt|eq]YYYY-MM-DD[Thh:mm:ss[Z]]") from exc
        out.append((op or "=", t if t.tzinfo else t.replace(tzinfo=dt.UTC)))
    return out


def _codes(values: list[str]) -> list[str]:
    codes = []
    for v in values:
        for tok in v.split(","):
            system, _, code = tok.rpartition("|")
            if system not in ("", LOINC) or unstorable(code):  # PostgreSQL text has no NUL
                continue
            codes.append(code)
    return codes


def _int(request: Request, name: str, default: int, hi: int) -> int:
    raw = request.query_params.get(name)
    try:
        n = default if raw is None else int(raw)
    except ValueError as exc:
        raise UsageError(f"{name} must be a whole number") from exc
    return max(0, min(n, hi))


@threaded_lenient("code")  # a NUL code matches nothing (_codes skips it)
def search(request: Request, form: Form) -> Response:
    st = state(request)
    q = request.query_params
    count = _int(request, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _int(request, "_offset", 0, 10**9)
    subjects = q.getlist("subject") + [f"Patient/{p}" for p in q.getlist("patient")]
    with st.pool.conn() as conn:
        username, role = _user(request, conn)
        mine = clinical.assigned(conn, username)
        wanted: list[str] | None = None
        if subjects:
            wanted = [s.removeprefix("Patient/") for s in subjects]
            for p in wanted:
                if access.decide(role, access.Area.PATIENT,
                                 assigned=p in mine) is not access.Decision.ALLOW:
                    raise HTTPException(404)
        patients = access.visible_patients(mine, wanted)
        where = ["patient = ANY(%s)"]
        args: list[Any] = [patients]
        if q.getlist("code"):
            where.append("code = ANY(%s)")
            args.append(_codes(q.getlist("code")))
        for op, t in date_clauses(q.getlist("date")):
            where.append(f"effective_at {op} %s")
            args.append(t)
        cond = " AND ".join(where)
        total_row = conn.execute(f"SELECT count(*) FROM observations WHERE {cond}",  # noqa: S608
                                 args).fetchone()
        rows = conn.execute(
            f"SELECT identifier, patient, key_id, resource_enc FROM observations "  # noqa: S608
            f"WHERE {cond} ORDER BY effective_at, id LIMIT %s OFFSET %s",
            [*args, count, offset]).fetchall()
        resources = [clinical.open_resource(st.ring, str(i), str(k), bytes(b))
                     for i, _, k, b in rows]
        clinical.audit_view(conn, username, "fhir", sorted({str(r[1]) for r in rows}))
    total = int(total_row[0]) if total_row else 0
    base = str(request.base_url).rstrip("/") + "/fhir/r4"

    def page(off: int) -> str:
        params = [(k, v) for k, v in q.multi_items() if k not in ("_count", "_offset")]
        return f"{base}/Observation?" + urlencode([*params, ("_count", str(count)),
                                                   ("_offset", str(off))])

    links = [{"relation": "self", "url": page(offset)}]
    if offset + count < total and count:
        links.append({"relation": "next", "url": page(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": page(max(0, offset - count))})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total,
                              "link": links}
    if resources:  # FHIR JSON has no empty arrays
        bundle["entry"] = [{"fullUrl": f"{base}/Observation/{r['id']}", "resource": r,
                            "search": {"mode": "match"}} for r in resources]
    return _fhir(bundle)


@threaded_lenient("id")  # a NUL id is one that does not exist: 404
def read(request: Request, form: Form) -> Response:
    st = state(request)
    oid = str(request.path_params["id"])
    with st.pool.conn() as conn:
        username, role = _user(request, conn)
        if unstorable(oid):  # no stored id holds NUL (PostgreSQL text cannot): not found
            raise HTTPException(404)
        row = conn.execute("SELECT identifier, patient, key_id, resource_enc FROM observations "
                           "WHERE identifier = %s", (oid,)).fetchone()
        if row is None or access.decide(
                role, access.Area.PATIENT,
                assigned=clinical.is_assigned(conn, username, str(row[1]))
        ) is not access.Decision.ALLOW:
            raise HTTPException(404)
        res = clinical.open_resource(st.ring, str(row[0]), str(row[2]), bytes(row[3]))
        clinical.audit_view(conn, username, "fhir", [str(row[1])])
    return _fhir(res)


async def metadata(request: Request) -> Response:
    return _fhir(capability(str(request.base_url).rstrip("/") + "/fhir/r4"))


async def openapi_doc(request: Request) -> Response:
    return JSONResponse(openapi())


def routes() -> list[Route]:
    return [
        Route("/fhir/r4/metadata", metadata, methods=["GET"]),
        Route("/fhir/r4/openapi.json", openapi_doc, methods=["GET"]),
        Route("/fhir/r4/Observation", search, methods=["GET"]),
        Route("/fhir/r4/Observation/{id}", read, methods=["GET"]),
    ]

