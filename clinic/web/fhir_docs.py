"""The API's self-description (pure): the FHIR CapabilityStatement and an OpenAPI 3.1
document for the same endpoints."""

from __future__ import annotations

from typing import Any

from clinic import __version__

_SEARCH_PARAMS = [
    ("subject", "reference", "Patient/<pseudonym>; only the user's patients"),
    ("patient", "reference", "the pseudonym (same as subject=Patient/<pseudonym>)"),
    ("date", "date", "effective time with ge/gt/le/lt/eq prefix; repeatable"),
    ("code", "token", "LOINC code, optionally http://loinc.org|<code>; comma = or"),
    ("_count", "number", "page size (default 50, at most 500)"),
    ("_offset", "number", "paging offset (from the Bundle's next/previous links)"),
]


def capability(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "software": {"name": "clinic", "version": __version__},
        "implementation": {"description": "clinic FHIR read API", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {"description": "OAuth-style bearer tokens issued with "
                                        "`clinic tokens create`; a token sees its user's "
                                        "patients only"},
            "resource": [{
                "type": "Observation",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [{"name": n, "type": t, "documentation": d}
                                for n, t, d in _SEARCH_PARAMS if not n.startswith("_")],
            }],
        }],
    }


def _param(name: str, kind: str, doc: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 0} if kind == "number" else {
        "type": "string"}
    p: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema,
                         "description": doc}
    if name in ("date", "code", "subject", "patient"):
        p["schema"] = {"type": "array", "items": {"type": "string"}}
        p["style"], p["explode"] = "form", True
    return p


_FHIR = {"application/fhir+json": {"schema": {"type": "object"}}}
_ERR = {"description": "OperationOutcome", "content": _FHIR}


def openapi() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "clinic FHIR R4 API", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/fhir/r4/metadata": {"get": {
                "summary": "CapabilityStatement", "operationId": "metadata",
                "responses": {"200": {"description": "CapabilityStatement",
                                      "content": _FHIR}}}},
            "/fhir/r4/Observation": {"get": {
                "summary": "Search Observations", "operationId": "searchObservation",
                "security": bearer,
                "parameters": [_param(*p) for p in _SEARCH_PARAMS],
                "responses": {"200": {"description": "searchset Bundle", "content": _FHIR},
                              "400": _ERR, "401": _ERR, "404": _ERR}}},
            "/fhir/r4/Observation/{id}": {"get": {
                "summary": "Read an Observation", "operationId": "readObservation",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Observation", "content": _FHIR},
                              "401": _ERR, "404": _ERR}}},
        },
    }
