"""schemathesis against the web service's OpenAPI document, on the ASGI app in-process.

Every operation is fuzzed with a bounded number of examples; every response must conform to
the spec (status codes, content types, schemas) and none may be a server error. The policy
refuses everything except 127.0.0.1 on the ports of two hostile-farm servers, and the injected
resolver answers only "farm.test" (no DNS query leaves the process), so no packet ever leaves
loopback whatever the fuzzer generates.
"""

from __future__ import annotations

import socket
import tempfile
import warnings
from pathlib import Path

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

with warnings.catch_warnings():  # starlette nags about httpx; the pinned client is httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vncaudit.web import Settings, create_app
from vncaudit.web.settings import hash_token, new_token

from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

# The Host the service answers by default (allowed_hosts: the localhost names).
LOCAL = "http://localhost"
# schemathesis' in-process client names the service "testserver" in every Host header.
FUZZER_HOSTS = ("testserver",)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAX_EXAMPLES = 20


def _resolver(name: str) -> list[str]:
    if name == "farm.test":
        return ["127.0.0.1"]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(scope="module")
def web_schema(hostile_farm: Farm) -> schemathesis.BaseSchema:  # noqa: F811
    ports = f"{hostile_farm.ports['vnc-none']},{hostile_farm.ports['vnc-auth']}"
    db = Path(tempfile.mkdtemp(prefix="vncaudit-schemathesis-")) / "web.db"
    settings = Settings(db_path=str(db), allow=("127.0.0.1/32",), allow_own_address=False,
                        allowed_hosts=FUZZER_HOSTS,
                        allowed_ports=ports, max_ports=2, probe_timeout=2.0,
                        rate_burst=10000, rate_per_minute=60000, resolver=_resolver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))


def fuzz(schema: schemathesis.BaseSchema, examples: int = MAX_EXAMPLES,
         path_parameters: dict[str, str] | None = None) -> dict[str, set[int]]:
    """Drive every operation with positive and negative data; returns statuses seen per
    operation. (schemathesis' lazy pytest integration does not run under the pinned pytest
    9.2, so each operation's strategy is run with hypothesis directly.)"""
    seen: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /api/scans", "GET /api/scans", "GET /api/scans/{scan_id}",
        "GET /api/scans/{scan_id}/report.{fmt}", "GET /api/health"}
    for operation in operations:
        fixed = path_parameters if "{scan_id}" in operation.path else None
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode,
                                                         path_parameters=fixed))
            @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True,
                                 database=None, suppress_health_check=list(hypothesis.HealthCheck))
            def run(case: schemathesis.Case) -> None:
                # The policy refuses most schema-valid targets by design (403; 400 for a name
                # that does not resolve; 404 for an unknown scan id): documented answers, so
                # "valid data must be accepted" does not apply; every other default check does.
                response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
                assert response.status_code < 500, response.text
                seen.setdefault(case.operation.label, set()).add(response.status_code)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Negative data for an operation with nothing to negate (GET /api/health).
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return seen


def test_api_conforms_to_its_openapi(web_schema: schemathesis.BaseSchema,
                                     hostile_farm: Farm) -> None:  # noqa: F811
    seen = fuzz(web_schema)
    print(f"schemathesis, random ids: {seen}")
    assert {400, 403} <= seen["POST /api/scans"]
    # Again with the id of a real, finished scan, so the read paths see stored results.
    post = next(r.ok() for r in web_schema.get_all_operations()
                if r.ok().label == "POST /api/scans")
    ports = f"{hostile_farm.ports['vnc-none']},{hostile_farm.ports['vnc-auth']}"
    created = post.Case(body={"target": "farm.test", "ports": ports}).call_and_validate(
        excluded_checks=[positive_data_acceptance])
    assert created.status_code == 201, created.text
    scan_id = created.json()["id"]
    seen = fuzz(web_schema, examples=10, path_parameters={"scan_id": scan_id})
    print(f"schemathesis, real id: {seen}")
    assert 200 in seen["GET /api/scans/{scan_id}"]
    assert 200 in seen["GET /api/scans/{scan_id}/report.{fmt}"]


def test_api_with_tokens_conforms(tmp_path: Path) -> None:
    """With tokens configured the spec declares bearer auth, and every call without a valid
    token gets the documented 401 (schemathesis' ignored-auth check)."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        allowed_hosts=FUZZER_HOSTS,
                        token_hashes=(hash_token(new_token()),), resolver=_resolver,
                        allowed_ports="5900", rate_burst=10000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    seen = fuzz(schema, examples=8)
    print(f"schemathesis, tokens: {seen}")
    # Nothing is accepted without the token (a malformed body may be refused before auth).
    assert 401 in seen["POST /api/scans"]
    assert not any(200 <= code < 300 for label, codes in seen.items() for code in codes
                   if label != "GET /api/health")
    assert 401 in seen["GET /api/scans/{scan_id}"]


def test_fuzzer_reached_a_real_scan(hostile_farm: Farm, tmp_path: Path) -> None:  # noqa: F811
    """The same settings accept the allow-listed farm ports: the fuzzed policy is not a wall
    that refuses everything (so the run above also exercised accepted submissions)."""
    ports = f"{hostile_farm.ports['vnc-none']},{hostile_farm.ports['vnc-auth']}"
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        allow_own_address=False, allowed_ports=ports, max_ports=2,
                        resolver=_resolver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = TestClient(create_app(settings), base_url=LOCAL)
    with client:
        assert client.post("/api/scans", json={"target": "farm.test", "ports": ports}
                           ).status_code == 201
        assert client.post("/api/scans", json={"target": "127.0.0.1", "ports": "5900"}
                           ).status_code == 403
