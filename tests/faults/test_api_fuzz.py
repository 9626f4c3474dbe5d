"""schemathesis against a real control plane (``edgeplane up``: store, manager, API, one
worker) through its own ``/openapi.json``: whatever it sends, no answer is a 5xx, every
status is one the schema documents (problem+json for errors) and every answer conforms to
its schema. Bounded: a few examples per operation, the whole file well under a minute."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: The file takes about 40 s here; the margin is for a loaded machine.
pytestmark = pytest.mark.timeout(150)

TOKEN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
#: Under /api/v1 but taking no token: they check credentials of their own.
PUBLIC = ("/api/v1/auth/login", "/api/v1/auth/refresh")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Examples per operation: enough to reach every field's bounds, few enough for the budget.
EXAMPLES = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``edgeplane up`` (its own broker) on its own data dir: its base URL."""
    data = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    command = [sys.executable, "-m", "edgeplane", "up", "--data-dir", str(data), "--port"]
    with (data / "up.log").open("w") as log:
        proc = subprocess.Popen(
            [*command, str(port), "--workers", "1"],
            env={**os.environ, "EDGEPLANE_ADMIN_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # until it serves, or it exits (its log says why)
            assert proc.poll() is None, (data / "up.log").read_text()
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def api_schema(api: str) -> Any:
    return schemathesis.openapi.from_url(f"{api}/openapi.json")


def content_type(response: Any) -> str:
    (value,) = response.headers["content-type"]  # schemathesis: every header is a list
    return str(value)


#: The event stream never ends by design (tests/integration/test_events.py follows it).
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/api/v1/events")
#: Generated examples only: the explicit phase (schemathesis's coverage cases, hundreds
#: per operation) alone would take minutes.
fuzz = settings(
    max_examples=EXAMPLES,
    phases=[Phase.generate],
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@schema.parametrize()
@fuzz
def test_no_5xx_and_every_answer_documented(case: Any) -> None:
    response = case.call(headers=AUTH, timeout=30)
    case.validate_response(response, checks=CHECKS, headers=AUTH)
    if response.status_code >= 400:
        assert content_type(response) == PROBLEM, response.text


@schema.parametrize()
@settings(fuzz, max_examples=3)
def test_every_protected_route_answers_401_without_a_token(case: Any) -> None:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(timeout=30)
    if not case.path.startswith("/api/v1/") or case.path in PUBLIC:
        return
    assert response.status_code in (401, 413), response.text  # 413: the limit comes first
    assert content_type(response) == PROBLEM
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == ["Bearer"]


def test_an_undocumented_method_is_405_naming_the_documented_ones(api: str) -> None:
    document = httpx.get(f"{api}/openapi.json").json()
    paths = document["paths"]
    verbs = {"get", "put", "post", "delete", "patch"}

    def takes(concrete: str) -> set[str]:
        """The methods of every path ``concrete`` matches (``/tasks/batch`` is also
        ``/tasks/{task_id}``)."""
        return {
            method.upper()
            for template, operations in paths.items()
            if re.fullmatch(re.sub(r"{[^}]+}", "[^/]+", template), concrete)
            for method in operations
            if method in verbs
        }

    with httpx.Client(base_url=api, headers=AUTH) as http:
        for path, operations in paths.items():
            concrete = path.replace("{", "").replace("}", "")  # any id will do
            documented = takes(concrete)
            for method in sorted({m.upper() for m in verbs} - documented):
                answer = http.request(method, concrete)
                assert answer.status_code == 405, (method, path, answer.text)
                assert answer.headers["content-type"] == PROBLEM
                allowed = {m.strip() for m in answer.headers["allow"].split(",")}
                assert allowed == documented, (method, path)
                assert all("405" in op["responses"] for op in operations.values()), path


def test_the_schema_declares_the_token_and_the_problems(api: str) -> None:
    document = httpx.get(f"{api}/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "Problem" in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"405", "413"} <= set(responses), (method, path)
            if path in PUBLIC:  # no token asked: their own credentials in the body
                assert "security" not in operation, (method, path)
            elif path.startswith("/api/v1/"):
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
                assert "403" in responses, (method, path)
            if path.startswith("/api/v1/"):
                assert {"401", "404", "409", "422", "503"} <= set(responses), (method, path)
                assert PROBLEM in responses["422"]["content"], (method, path)
    assert "Retry-After" in document["paths"][PUBLIC[0]]["post"]["responses"]["429"]["headers"]
