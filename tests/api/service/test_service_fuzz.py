"""Fuzz the service from its own OpenAPI schema (schemathesis) against a real server: no 5xx,
and every answer conforms to the schema (status codes, content types, bodies, headers).
Profiling jobs are left out: each one starts a process, a fuzzer would only queue them."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from convplan.api.service.app import create_app
from convplan.settings import ServiceSettings
from tests.support.service_server import Server, running_server

#: Small limits: anything valid the fuzzer finds is planned or measured in a blink.
LIMITS = {"CONVPLAN_MAX_BODY": "256KiB", "CONVPLAN_MAX_LAYERS": "40",
          "CONVPLAN_MAX_TENSOR_BYTES": "4MiB", "CONVPLAN_MAX_WEIGHT_BYTES": "4MiB",
          "CONVPLAN_MAX_BUDGET": "0.002", "CONVPLAN_MAX_TIME_LIMIT": "5",
          "CONVPLAN_MAX_REPEAT": "1", "CONVPLAN_QUEUE_TIMEOUT": "60"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("fuzz"), LIMITS) as s:
        yield s


#: The app's own schema (building the app starts nothing: workers start with the server);
#: `test_the_server_serves_this_schema` checks the real server publishes the same.
OPENAPI = create_app(ServiceSettings.from_env({})).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(method="POST", path="/v1/profile")
schema.config.generation.update(modes=list(schemathesis.GenerationMode))  # valid and invalid


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case, server: Server) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)


def test_the_server_serves_this_schema(server: Server) -> None:
    with server.client() as client:
        assert client.get("/openapi.json").json() == OPENAPI


def test_the_server_survived_the_fuzzing(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
    assert server.process.poll() is None
