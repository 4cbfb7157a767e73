"""Property-based tests from the OpenAPI document (schemathesis) against the live API on a free port.

Every operation is called with its owner's key: valid data (on real ids the party may see, so the business
path runs) and invalid data (negative mode). No answer may be a server error, and every answer must match the
documented status codes, content type and response schema. Bounded: a few examples per operation and mode.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from services.api import create_app
from services.application import RxTrail
from services.infra.settings import Settings
from tests.support.flows import Actors, api_keys, live_server, register_cast

EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
STATE_FOR = {  # which real prescription a party's path ids point at
    "/hospital/prescriptions/{prescription_id}/routing": "approved",
    "/pharmacy/": "accepted",
    "/pharmacist/": "issued",
}


def test_openapi_properties(database: str, application: RxTrail) -> None:
    from fastapi.testclient import TestClient

    cast = register_cast(application)
    keys = api_keys(database, f"hospital:{cast.hospital}", f"pharmacist:{cast.pharmacist}",
                    f"pharmacy:{cast.pharmacy}", f"agency:{cast.region}", "regulator:REG-S")
    tokens = {k.split(":")[0]: v for k, v in keys.items()}
    app = create_app(Settings(database_url=database), application=application)
    with TestClient(create_app(Settings(database_url=database), application=application)) as client:
        actors = Actors(client, cast, keys)
        visit = actors.visit()
        real = {"issued": actors.issue(), "approved": actors.approved(), "accepted": actors.accepted()}

    failures: list[str] = []
    calls = 0
    with live_server(app) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            path = operation.path
            party = path.strip("/").split("/")[0]
            headers = {"Authorization": f"Bearer {tokens[party]}"} if party in tokens else {}
            ids: dict[str, Any] = {}
            if "{prescription_id}" in path:
                state = next((s for prefix, s in STATE_FOR.items() if path.startswith(prefix)), "issued")
                ids["prescription_id"] = real[state]
            if "{visit_id}" in path:
                ids["visit_id"] = visit
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode,
                                                 path_parameters=ids if mode is GenerationMode.POSITIVE else None)

                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def exercise(case: Any) -> None:
                    # runs within this iteration, so the loop variables it reads are the current ones
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=base, headers=headers, timeout=60)  # noqa: B023  (above the feed's 30 s long poll)
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except (Exception, BaseExceptionGroup) as exc:
                        label = f"{operation.label} [{mode.value}]"  # noqa: B023
                        failures.append(f"{label} {response.status_code}: {exc}"[:2000])

                try:
                    exercise()
                except Unsatisfiable:  # nothing to make invalid (e.g. no parameters): the mode does not apply
                    assert mode is GenerationMode.NEGATIVE, operation.label
    assert calls > 0
    print(f"schemathesis {schemathesis.__version__}: {calls} calls")
    assert not failures, "\n\n".join(failures[:10])
