"""The OpenAPI 3.1 document of the HTTP interface (SPEC §3), served at /openapi.json."""

from __future__ import annotations

import json
from typing import Any

from gateway import __version__

_C = "A-Za-z0-9_~+=,@-"
_SEGMENT = rf"(?:[{_C}][.{_C}]*|\.[{_C}][.{_C}]*|\.\.[.{_C}]+)"
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "Object key, e.g. firmware/acme-x1/1.4.2/rootfs.img (slashes allowed).",
    # SPEC §3: "/"-separated segments of A-Z a-z 0-9 . _ ~ + = , @ -, none empty,
    # "." or ".." (a segment may start with a dot only if more than dots follow,
    # or with ".." if anything follows). No lookarounds: any JSON Schema engine.
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 1024,
        "pattern": "^" + _SEGMENT + "(?:/" + _SEGMENT + ")*$",
    },
}
_PROBLEM = {"$ref": "#/components/responses/Problem"}
_ERRORS = {str(code): _PROBLEM for code in (400, 401, 403, 405, 414, 429, 431, 502, 503, 504)}
# Stream mode (delivery.mode: stream, or per access rule): the bytes themselves.
_STREAM = {
    "200": {"description": "Stream mode: the whole binary."},
    "206": {"description": "Stream mode: the requested byte range (Content-Range)."},
    "304": {"description": "Stream mode: not modified (If-None-Match / If-Modified-Since)."},
    "404": _PROBLEM,
    "416": _PROBLEM,
}
_DECISION_HEADERS = {
    "X-Gateway-Region": {"schema": {"type": "string"}, "description": "The chosen region."},
    "X-Request-ID": {"schema": {"type": "string"}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "gateway", "version": __version__},
    "components": {
        "securitySchemes": {"device": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details.",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
                "required": ["type", "title", "status", "detail"],
            },
            "SignedUrl": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "format": "uri"},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "region": {"type": "string"},
                    "backend": {"type": "string"},
                },
                "required": ["url", "expires_at", "region", "backend"],
            },
        },
        "responses": {
            "Problem": {
                "description": "An error, as RFC 9457 problem details.",
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }
        },
    },
    "paths": {
        "/v1/binaries/{key}": {
            "parameters": [_KEY],
            "get": {
                "summary": "Download a binary: 307 to a signed URL of the chosen region.",
                "security": [{"device": []}],
                "responses": {
                    "307": {
                        "description": "Redirect to a time-limited signed URL; empty body.",
                        "headers": {
                            "Location": {"schema": {"type": "string", "format": "uri"}},
                            **_DECISION_HEADERS,
                        },
                    },
                    **_STREAM,
                    **_ERRORS,
                },
            },
            "head": {
                "summary": "As GET, without a body.",
                "security": [{"device": []}],
                "responses": {"307": {"description": "Redirect."}, **_STREAM, **_ERRORS},
            },
        },
        "/v1/urls/{key}": {
            "parameters": [_KEY],
            "get": {
                "summary": "The signed URL as JSON, for clients that fetch themselves.",
                "security": [{"device": []}],
                "responses": {
                    "200": {
                        "description": "The signed URL.",
                        "headers": _DECISION_HEADERS,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SignedUrl"}
                            }
                        },
                    },
                    **_ERRORS,
                },
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition.",
                "responses": {"200": {"description": "Metrics."}},
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness.", "responses": {"200": {"description": "Serving."}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness.",
                "responses": {
                    "200": {"description": "Ready."},
                    "503": {"description": "Not ready or draining."},
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI."}}}
        },
    },
}

OPENAPI_JSON = json.dumps(DOCUMENT, separators=(",", ":")).encode()
