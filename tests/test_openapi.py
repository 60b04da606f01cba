"""The OpenAPI document (gateway/openapi.py, served at /openapi.json) against the live app.

* the served document is :data:`gateway.openapi.DOCUMENT`, a valid OpenAPI 3.1
  document (``openapi-spec-validator``);
* it lists every route ``gateway/app.py`` serves, with the methods served;
* every status the app can answer on an operation, each produced here on a
  live gateway, is documented for that operation;
* the key pattern is the SPEC §3 grammar, no wider;
* a schemathesis run (positive and negative examples, bounded and
  derandomized, with a valid device token) finds no 5xx and no response that
  violates the document.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.access import object_key
from gateway.app import BINARIES, URLS, GatewayApp
from gateway.errors import InvalidObjectKey
from gateway.openapi import DOCUMENT, OPENAPI_JSON
from tests.security import RawResponse, bearer, http
from tests.stack import FILES, KEY, Stack, running_stack

STREAM_KEY = "firmware/acme-x1/1.0.1/app.bin"  # the stream rule below covers 1.0.1/
STREAM_SIZE = len(FILES[STREAM_KEY])
BINARY_PATH = "/v1/binaries/{key}"
URLS_PATH = "/v1/urls/{key}"
KEY_PATTERN: str = DOCUMENT["paths"][BINARY_PATH]["parameters"][0]["schema"]["pattern"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def edit(config: dict[str, Any]) -> None:
        # Both delivery modes on one gateway, and a rate limit to reach 429 with.
        config["access"] = [
            {"prefix": "firmware/{product}/1.0.1/", "delivery": "stream"},
            {"prefix": "firmware/{product}/"},
        ]
        config["limits"] = {"rate_per_device": "20/s", "burst_per_device": 10}

    with running_stack(tmp_path_factory.mktemp("openapi"), edit) as s:
        yield s


_subs = itertools.count(1)


def fresh_token(stack: Stack) -> str:
    """A token of a device not seen before, so the per-device rate limit never bites."""
    return stack.token(f"device-{next(_subs):06d}")


def documented(path: str, method: str) -> dict[str, Any]:
    responses: dict[str, Any] = DOCUMENT["paths"][path][method]["responses"]
    return responses


# --------------------------------------------------------------------------- the document


def test_the_served_document_is_the_module_document(stack: Stack) -> None:
    response = http(stack.base, "/openapi.json")
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.body == OPENAPI_JSON
    assert response.json() == DOCUMENT
    head = http(stack.base, "/openapi.json", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(OPENAPI_JSON))


def test_it_is_a_valid_openapi_3_1_document() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(copy.deepcopy(DOCUMENT))  # raises OpenAPIValidationError with the path


def app_routes() -> dict[str, set[str]]:
    """The routes gateway/app.py serves: the two decision prefixes and the
    operational table in GatewayApp._operational (read from the source, so a
    route added there without documentation fails this test)."""
    source = inspect.getsource(GatewayApp._operational)
    table = re.search(r"route = \{(.*?)\}\.get", source, re.DOTALL)
    assert table is not None, "the operational route table moved; update this test"
    operational = re.findall(r'"(/[^"]+)":\s*"', table.group(1))
    assert operational, "no operational routes found"
    routes = {
        BINARIES.rstrip("/") + "/{key}": {"get", "head"},
        URLS.rstrip("/") + "/{key}": {"get"},
    }
    routes.update({path: {"get"} for path in operational})
    return routes


def test_every_route_the_app_serves_is_documented() -> None:
    routes = app_routes()
    assert set(routes) == {
        BINARY_PATH,
        URLS_PATH,
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }
    assert set(DOCUMENT["paths"]) == set(routes)
    for path, methods in routes.items():
        operations = {m for m in DOCUMENT["paths"][path] if m != "parameters"}
        assert methods <= operations, (path, methods - operations)


@pytest.mark.parametrize("path", sorted(DOCUMENT["paths"]))
def test_documented_methods_are_served_and_others_are_405(stack: Stack, path: str) -> None:
    target = path.replace("{key}", KEY)
    operations = {m.upper() for m in DOCUMENT["paths"][path] if m != "parameters"}
    token = fresh_token(stack)
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = http(stack.base, target, [bearer(token)], method=method)
        if method in operations:
            assert response.status not in (404, 405), (method, path)
        elif path in (BINARY_PATH, URLS_PATH) or method != "HEAD":
            # The device API serves exactly what is documented; the operational
            # routes also answer HEAD (not worth an operation of its own).
            assert response.status == 405, (method, path, response.status)
            assert response.header("allow") is not None


# --------------------------------------------------------------------------- statuses


def _get(key: str, *headers: tuple[str, str], token: bool = True) -> Callable[[Stack], RawResponse]:
    def trigger(stack: Stack) -> RawResponse:
        auth = [bearer(fresh_token(stack))] if token else []
        return http(stack.base, "/v1/binaries/" + key, [*auth, *headers])

    return trigger


def _head(key: str) -> Callable[[Stack], RawResponse]:
    def trigger(stack: Stack) -> RawResponse:
        return http(stack.base, "/v1/binaries/" + key, [bearer(fresh_token(stack))], method="HEAD")

    return trigger


def _url(key: str, *headers: tuple[str, str], token: bool = True) -> Callable[[Stack], RawResponse]:
    def trigger(stack: Stack) -> RawResponse:
        auth = [bearer(fresh_token(stack))] if token else []
        return http(stack.base, "/v1/urls/" + key, [*auth, *headers])

    return trigger


def _burst(route: str) -> Callable[[Stack], RawResponse]:
    def trigger(stack: Stack) -> RawResponse:
        token = fresh_token(stack)
        for _ in range(40):
            response = http(stack.base, route + KEY, [bearer(token)])
            if response.status == 429:
                return response
        return response

    return trigger


def _not_modified(stack: Stack) -> RawResponse:
    etag = _get(STREAM_KEY)(stack).header("etag")
    assert etag is not None
    return _get(STREAM_KEY, ("If-None-Match", etag))(stack)


def _operational(path: str) -> Callable[[Stack], RawResponse]:
    return lambda stack: http(stack.base, path)


LONG = "firmware/acme-x1/" + "a" * 4100
PAD = ("X-Pad", "a" * 8193)


STATUSES = [
    (BINARY_PATH, "get", 307, _get(KEY)),
    (BINARY_PATH, "get", 400, _get("firmware/acme-x1/../x")),
    (BINARY_PATH, "get", 401, _get(KEY, token=False)),
    (BINARY_PATH, "get", 403, _get("firmware/acme-x2/2.0.0/app.bin")),
    (BINARY_PATH, "get", 429, _burst("/v1/binaries/")),
    (BINARY_PATH, "get", 431, _get(KEY, PAD)),
    (BINARY_PATH, "get", 414, _get(LONG)),
    (BINARY_PATH, "get", 200, _get(STREAM_KEY)),
    (
        BINARY_PATH, "get", 206, _get(STREAM_KEY, ("Range", "bytes=0-9"))),
    (BINARY_PATH, "get", 304, _not_modified),
    (
        BINARY_PATH, "get", 404, _get("firmware/acme-x1/1.0.1/missing.bin")),
    (
        BINARY_PATH, "get", 416, _get(STREAM_KEY, ("Range", f"bytes={STREAM_SIZE}-"))),
    (BINARY_PATH, "head", 307, _head(KEY)),
    (BINARY_PATH, "head", 400, _head("firmware/acme-x1/./x")),
    (BINARY_PATH, "head", 403, _head("firmware/acme-x2/2.0.0/app.bin")),
    (BINARY_PATH, "head", 414, _head(LONG)),
    (BINARY_PATH, "head", 200, _head(STREAM_KEY)),
    (
        BINARY_PATH, "head", 404, _head("firmware/acme-x1/1.0.1/missing.bin")),
    (URLS_PATH, "get", 200, _url(KEY)),
    (URLS_PATH, "get", 400, _url("firmware//x")),
    (URLS_PATH, "get", 401, _url(KEY, token=False)),
    (URLS_PATH, "get", 403, _url("firmware/acme-x2/2.0.0/app.bin")),
    (URLS_PATH, "get", 429, _burst("/v1/urls/")),
    (URLS_PATH, "get", 431, _url(KEY, PAD)),
    (URLS_PATH, "get", 414, _url(LONG)),
    ("/metrics", "get", 200, _operational("/metrics")),
    ("/healthz", "get", 200, _operational("/healthz")),
    ("/readyz", "get", 200, _operational("/readyz")),
    ("/openapi.json", "get", 200, _operational("/openapi.json")),
]  # fmt: skip


@pytest.mark.parametrize(("path", "method", "status", "trigger"), STATUSES)
def test_every_status_the_app_answers_is_documented(
    stack: Stack,
    path: str,
    method: str,
    status: int,
    trigger: Callable[[Stack], RawResponse],
) -> None:
    response = trigger(stack)
    assert response.status == status  # the app really answers this
    responses = documented(path, method)
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    if response.header("content-type") == "application/problem+json":
        assert responses[str(status)] == {"$ref": "#/components/responses/Problem"}


# --------------------------------------------------------------------------- the key grammar


KEY_SCHEMA: dict[str, Any] = DOCUMENT["paths"][BINARY_PATH]["parameters"][0]["schema"]


def admitted(key: str) -> bool:
    """Whether the document's key schema accepts ``key`` (pattern and length)."""
    length = len(key)
    return re.search(KEY_SCHEMA["pattern"], key) is not None and KEY_SCHEMA.get(
        "minLength", 0
    ) <= length <= KEY_SCHEMA.get("maxLength", length)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(key=st.from_regex(KEY_PATTERN, fullmatch=True))
@example(key="a//b")
@example(key="firmware/acme-x1/./app.bin")
@example(key="..")
@example(key="a/")
def test_every_key_the_document_admits_is_a_valid_key(key: str) -> None:
    if not admitted(key):
        return
    try:
        assert object_key(key.encode()) == key
    except InvalidObjectKey:
        pytest.fail(f"the document admits {key!r}, the gateway refuses it")


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(key=st.text(alphabet="ab./", max_size=12))
def test_every_valid_key_is_admitted_by_the_document(key: str) -> None:
    # The other direction: the document never refuses a key the gateway serves.
    try:
        object_key(key.encode())
    except InvalidObjectKey:
        return
    assert admitted(key), key


# --------------------------------------------------------------------------- schemathesis

# A key refused for its length can also be 414 (the request target is too long).
SCHEMA = schemathesis.openapi.from_dict(
    copy.deepcopy(DOCUMENT),
    config=schemathesis.Config.from_dict(
        {
            "checks": {
                "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 414, 431]}
            }
        }
    ),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
OPERATIONS = [
    (path, method.upper(), mode)
    for path, item in DOCUMENT["paths"].items()
    for method in item
    if method != "parameters"
    for mode in (
        (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if "{key}" in path
        else (GenerationMode.POSITIVE,)
    )
]


def entitled_cases(operation: Any) -> st.SearchStrategy[Any]:
    """Cases whose key is inside the device's prefix. Most generated keys are
    outside it (403); these get 307/200 answers, whose headers and bodies are
    then checked too."""
    suffixes = st.from_regex(KEY_PATTERN, fullmatch=True).filter(lambda k: len(k) <= 1000)
    return suffixes.flatmap(
        lambda suffix: operation.as_strategy(
            generation_mode=GenerationMode.POSITIVE,
            path_parameters={"key": "firmware/acme-x1/" + suffix},
        )
    )


@pytest.mark.parametrize(
    ("path", "method", "mode"), OPERATIONS, ids=lambda v: getattr(v, "value", v)
)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    stack: Stack, path: str, method: str, mode: GenerationMode
) -> None:
    operation = SCHEMA[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{key}" in path and mode is GenerationMode.POSITIVE:
        strategy = st.one_of(strategy, entitled_cases(operation))
    statuses: dict[int, int] = {}

    @settings(
        max_examples=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        auth = {"Authorization": f"Bearer {fresh_token(stack)}"}
        response = case.call(base_url=stack.base, headers=auth, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(
            response,
            checks=CHECKS,
            headers=auth,
            transport_kwargs={"base_url": stack.base, "headers": auth},
        )

    started = time.perf_counter()
    run()
    assert statuses, "nothing was sent"
    assert all(code < 500 for code in statuses), statuses
    if path in (BINARY_PATH, URLS_PATH) and mode is GenerationMode.POSITIVE:
        assert {307, 200} & set(statuses), statuses  # the success path was exercised
    assert time.perf_counter() - started < 20
