"""Leak scans: after downloads of every kind and a mix of attacks, no secret is
anywhere an operator's tooling collects -- the access log, /metrics, and the
gateway's own log records (SPEC §5, §6: never a token, a signature or a signed
URL; metric labels never carry a device id, key or URL).

Unlike the pattern scans at the end of each attack module, this one also
knows the exact secrets: every token sent, every signature the gateway issued
(read from the Location headers and /v1/urls bodies), the origins' HMAC
secrets and the issuer's private keys.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.security import (
    assert_log_is_clean,
    assert_metrics_are_clean,
    assert_problem,
    assert_refused_token,
    bearer,
    forge,
    http,
    load_private,
    sign_jws,
)
from tests.stack import KEY, Stack, running_stack

STREAM_KEY = "firmware/acme-x1/1.0.1/app.bin"


class Collect(logging.Handler):
    """Keeps every record of the loggers it is attached to, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Env:
    stack: Stack
    logs: Collect
    secrets: set[str] = field(default_factory=set)

    def token(self, sub: str = "device-0001", **kwargs: Any) -> str:
        token = self.stack.token(sub, **kwargs)
        self.secrets.update({token, token.rsplit(".", 1)[1]})
        return token

    def issued(self, url: str) -> None:
        """Remember the signature of a signed URL the gateway handed out."""
        query = parse_qs(urlsplit(url).query)
        assert "sig" in query
        self.secrets.update(query["sig"])
        self.secrets.add(url)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    def edit(config: dict[str, Any]) -> None:
        config["access"].insert(0, {"prefix": "firmware/{product}/1.0.1/", "delivery": "stream"})

    logs = Collect()
    loggers = [logging.getLogger(name) for name in ("gateway", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(logs)
    try:
        with running_stack(tmp_path_factory.mktemp("sec-leaks"), edit) as stack:
            env = Env(stack, logs)
            env.secrets.update(secret.decode() for secret in stack.secrets.values())
            for path in stack.private_keys.values():
                pem = path.read_text()
                env.secrets.update(line for line in pem.splitlines() if len(line) > 40)
            yield env
    finally:
        for logger in loggers:
            logger.removeHandler(logs)


def test_downloads_of_every_kind(env: Env) -> None:
    stack = env.stack
    for method in ("GET", "HEAD"):
        response = http(stack.base, f"/v1/binaries/{KEY}", [bearer(env.token())], method=method)
        assert response.status == 307
        location = response.header("location")
        assert location is not None
        env.issued(location)
    response = http(stack.base, f"/v1/urls/{KEY}", [bearer(env.token())])
    assert response.status == 200
    env.issued(response.json()["url"])
    # Stream mode: the gateway fetches the signed URL itself; the device never sees it.
    streamed = http(stack.base, f"/v1/binaries/{STREAM_KEY}", [bearer(env.token())])
    assert streamed.status == 200 and b"sig=" not in streamed.head
    part = http(
        stack.base, f"/v1/binaries/{STREAM_KEY}", [bearer(env.token()), ("Range", "bytes=0-9")]
    )
    assert part.status == 206
    missing = http(stack.base, "/v1/binaries/firmware/acme-x1/1.0.1/x.bin", [bearer(env.token())])
    assert_problem(missing, 404, "not-found")
    assert b"sig=" not in missing.body and b"expires=" not in missing.body


def test_attacks_of_every_kind(env: Env) -> None:
    stack = env.stack
    ed1 = load_private(stack.private_keys["ed1"])
    good = env.token()
    now = int(time.time())
    claims = {"sub": "device-0001", "aud": "firmware-gateway", "exp": now + 60}
    hostile = [
        forge({"alg": "none", "kid": "ed1"}, claims, b""),
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        env.token(ttl=1, now=now - 3600),
        sign_jws(ed1, {"alg": "EdDSA", "kid": "ed1"}, {**claims, "iss": "x"}),
        sign_jws(ed1, {"alg": "EdDSA", "kid": "../../etc/passwd"}, claims),
        env.token(claims={"product": "acme-x2"}),
    ]
    for token in hostile:
        env.secrets.update({token, token.rsplit(".", 1)[1]})
        response = http(stack.base, f"/v1/binaries/{KEY}", [bearer(token)])
        assert response.status in (401, 403)
        if response.status == 401:
            assert_refused_token(response)
        assert good not in response.body.decode() and token not in response.body.decode()
    assert_problem(http(stack.base, "/v1/binaries/firmware/../x"), 400, "invalid-key")
    assert_problem(
        http(stack.base, f"/v1/binaries/{KEY}", [bearer("eyJ" + "A" * 20_000)]),
        431,
        "header-too-large",
    )


def upstream_requests(stack: Stack) -> float:
    text = http(stack.base, "/metrics").body.decode()
    samples = re.findall(r"^gateway_upstream_requests_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in samples)


def test_refused_requests_fetch_nothing_upstream(env: Env) -> None:
    """Stream mode: a request refused for its token or key never reaches the storage."""
    stack = env.stack
    ed1 = load_private(stack.private_keys["ed1"])
    target = f"/v1/binaries/{STREAM_KEY}"
    assert http(stack.base, target, [bearer(env.token())]).status == 200
    before = upstream_requests(stack)
    assert before >= 1
    now = int(time.time())
    claims = {"sub": "device-0001", "aud": "firmware-gateway", "exp": now + 60}
    for token in (
        forge({"alg": "none", "kid": "ed1"}, claims, b""),
        sign_jws(ed1, {"alg": "EdDSA", "kid": "ed1", "jku": "http://127.0.0.1:9/"}, claims),
        env.token(ttl=1, now=now - 3600),
    ):
        env.secrets.add(token)
        assert_refused_token(http(stack.base, target, [bearer(token)]))
    assert_problem(
        http(stack.base, "/v1/binaries/firmware/acme-x1/1.0.1/%2e%2e"), 400, "invalid-key"
    )
    other = http(stack.base, "/v1/binaries/firmware/acme-x2/2.0.0/app.bin", [bearer(env.token())])
    assert_problem(other, 403, "not-entitled")
    assert upstream_requests(stack) == before


def test_no_secret_is_logged_or_exported(env: Env) -> None:
    time.sleep(0.3)  # the access log is flushed every 0.2 s
    lines = env.stack.log.lines()
    assert len(lines) >= 14
    secrets = sorted(s for s in env.secrets if len(s) >= 16)
    assert len(secrets) > 20
    assert_log_is_clean(lines, secrets)
    metrics = http(env.stack.base, "/metrics").body.decode()
    assert_metrics_are_clean(metrics, secrets)
    # Labels carry regions, codes, reasons and backend kinds, nothing per device.
    labels = set(re.findall(r'[a-z_]+="([^"]*)"', metrics))
    assert not {label for label in labels if "device" in label or "/" in label}
    # The gateway's own log records (warnings, tracebacks) too.
    text = "\n".join(env.logs.lines)
    for secret in secrets:
        assert secret not in text, "a secret is in the gateway's log records"
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}|sig=|X-Amz-Signature", text)
