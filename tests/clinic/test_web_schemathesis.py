"""The FHIR API against its own published OpenAPI (``/fhir/r4/openapi.json``), with
schemathesis driving the ASGI app in-process (a real PostgreSQL behind it) and a bearer token
from ``clinic tokens create``: no server error (5xx), and every response conforms to the
document (status code, content type, body schema). Bounded: 100 valid and 100 invalid
inputs per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from clinic.cli import main as clinic_main
from clinic.web.app import build_app
from tests.clinic.web_support import World, seed, web_cfg, write_config

OPENAPI = "/fhir/r4/openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture
def world(dsn: str) -> World:
    return seed(dsn)


@pytest.fixture
def token(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """doc1's bearer token, as an API client gets it: the last line `clinic tokens create`
    prints."""
    cfg = write_config(tmp_path / "clinic.toml", world.dsn, tmp_path)
    assert clinic_main(["--config", str(cfg), "tokens", "create", "doc1"]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture
def api_schema(world: World, tmp_path: Path) -> Iterator[OpenApiSchema]:
    """The app's published OpenAPI, loaded from the app itself (in-process ASGI)."""
    app = build_app(web_cfg(world.dsn, tmp_path), world.ring)
    yield schemathesis.openapi.from_asgi(OPENAPI, app)
    app.state.web.pool.close()


#: the operations the document publishes (the test fails if one goes missing or appears)
OPERATIONS = {"GET /fhir/r4/metadata", "GET /fhir/r4/Observation", "GET /fhir/r4/Observation/{id}"}


def test_fhir_api_conforms_to_its_openapi(api_schema: OpenApiSchema, token: str) -> None:
    # schemathesis's pytest loader (`from_fixture` + `parametrize`) fails under pytest 9
    # (`'Function' object has no attribute '_nodeid'`), so each operation's strategy is driven
    # by Hypothesis directly: valid inputs, then inputs that violate the document.
    ops: list[APIOperation[Any, Any, Any, Any]] = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), result
        ops.append(result.ok())
    assert {op.label for op in ops} == OPERATIONS
    auth = {"Authorization": f"Bearer {token}"}
    for op in ops:
        # invalid inputs need parameters to break (metadata has none)
        has_params = bool(len(op.query) or len(op.path_parameters))
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_params else [])
        for mode in modes:

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=100, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: Case[Any]) -> None:
                case.call_and_validate(headers=auth, checks=CHECKS)

            run()
