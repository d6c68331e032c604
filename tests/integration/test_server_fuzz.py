"""Fuzz every route in the server's OpenAPI document: no input may cause a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from tests.integration.conftest import TOKEN
from tests.integration.server_support import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def api_schema(served: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_makes_the_server_fail(case: schemathesis.Case) -> None:
    # Half the cases carry the token, so the authenticated routes get fuzzed too.
    headers = {"Authorization": f"Bearer {TOKEN}"} if hash(repr(case.body)) % 2 else {}
    response = case.call(headers=headers, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
