"""Fuzz every operation in the server's OpenAPI document: no input may cause a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import TOKEN
from tests.integration.server_support import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 15


def test_no_input_makes_the_server_fail(served: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/predict", "/feedback", "/v2/models/{model_name}/infer"} <= {
        op.path for op in operations
    }
    for operation in operations:

        @given(case=operation.as_strategy(), authorized=st.booleans())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case, authorized: bool) -> None:
            # Half the cases carry the token, so the authenticated routes get fuzzed too.
            headers = {"Authorization": f"Bearer {TOKEN}"} if authorized else {}
            response = case.call(headers=headers, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
