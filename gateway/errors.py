"""Every error the gateway raises on purpose, and how each one looks on the wire.

Hierarchy::

    GatewayError                  500  internal        (base; never raised bare on purpose)
    ├── BadRequest                400  bad-request
    │   └── InvalidObjectKey      400  invalid-key
    ├── InvalidToken              401  invalid-token   (.reason -> gateway_auth_failures_total)
    ├── NotEntitled               403  not-entitled
    ├── NotFound                  404  not-found
    ├── MethodNotAllowed          405  method-not-allowed
    ├── UriTooLong                414  uri-too-long
    ├── RangeNotSatisfiable       416  range-not-satisfiable
    ├── RateLimited               429  rate-limited    (Retry-After)
    ├── HeaderTooLarge            431  header-too-large
    ├── BackendError              502  backend-error
    ├── Unavailable               503  unavailable
    │   └── NoRegionAvailable     503  no-region
    └── BackendTimeout            504  backend-timeout

    ConfigError                   not HTTP: a configuration with one or more problems
                                  (.problems: one "field.path: why" line each)

Each HTTP error carries its status, a problem ``type`` and ``title`` and renders
itself as ``application/problem+json`` (RFC 9457 section 3: ``type``, ``title``,
``status``, ``detail``). Third-party exceptions (PyJWT, maxminddb, httpx, ...)
are translated into these where they enter; none leaks to a client.
"""

from __future__ import annotations

import json
from typing import ClassVar

PROBLEM_BASE = "urn:gateway:problem:"
PROBLEM_CONTENT_TYPE = b"application/problem+json"

Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """Base of the HTTP errors; subclasses fix status, problem type and title."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title

    def extra_headers(self) -> Headers:
        """Headers beyond Content-Type that this error adds to its response."""
        return []

    def problem(self) -> dict[str, object]:
        return {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }

    def render(self) -> tuple[int, Headers, bytes]:
        """The response: (status, headers, body). The caller adds X-Request-ID."""
        body = json.dumps(self.problem(), separators=(",", ":")).encode()
        headers: Headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *self.extra_headers(),
        ]
        return self.status, headers, body


class BadRequest(GatewayError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class InvalidObjectKey(BadRequest):
    slug = "invalid-key"
    title = "Invalid object key"


class InvalidToken(GatewayError):
    """The bearer token is missing or not acceptable (RFC 6750 section 3.1).

    ``reason`` is a fixed, low-cardinality word for the
    ``gateway_auth_failures_total{reason}`` metric; ``detail`` is for humans and
    never contains the token itself.
    """

    status = 401
    slug = "invalid-token"
    title = "Invalid token"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    def extra_headers(self) -> Headers:
        # RFC 6750 section 3: a missing token gets a bare challenge (no error code);
        # every other failure is error="invalid_token". The description is a
        # quoted-string, so strip the characters that would break it.
        description = self.detail.replace("\\", "").replace('"', "'")
        if self.reason == "missing":
            value = 'Bearer realm="gateway"'
        else:
            value = (
                f'Bearer realm="gateway", error="invalid_token", error_description="{description}"'
            )
        return [(b"www-authenticate", value.encode("ascii", "replace"))]


class NotEntitled(GatewayError):
    status = 403
    slug = "not-entitled"
    title = "Not entitled"


class NotFound(GatewayError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(GatewayError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, allow: str, detail: str = "") -> None:
        super().__init__(detail or f"allowed: {allow}")
        self.allow = allow

    def extra_headers(self) -> Headers:
        return [(b"allow", self.allow.encode())]


class UriTooLong(GatewayError):
    status = 414
    slug = "uri-too-long"
    title = "URI too long"


class RangeNotSatisfiable(GatewayError):
    status = 416
    slug = "range-not-satisfiable"
    title = "Range not satisfiable"

    def __init__(self, size: int, detail: str = "") -> None:
        super().__init__(detail or f"the representation is {size} bytes long")
        self.size = size

    def extra_headers(self) -> Headers:
        # RFC 9110 section 15.5.17: a 416 to a byte range carries "bytes */size".
        return [(b"content-range", f"bytes */{self.size}".encode())]


class RateLimited(GatewayError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, retry_after: int, detail: str = "") -> None:
        super().__init__(detail or f"retry after {retry_after} s")
        self.retry_after = max(1, retry_after)

    def extra_headers(self) -> Headers:
        return [(b"retry-after", str(self.retry_after).encode())]


class HeaderTooLarge(GatewayError):
    status = 431
    slug = "header-too-large"
    title = "Request header fields too large"


class BackendError(GatewayError):
    status = 502
    slug = "backend-error"
    title = "Backend error"


class Unavailable(GatewayError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"


class NoRegionAvailable(Unavailable):
    slug = "no-region"
    title = "No region available"


class BackendTimeout(GatewayError):
    status = 504
    slug = "backend-timeout"
    title = "Backend timeout"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` has one line per problem,
    each ``field.path: why``, ready to print."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
