"""Property-based fuzzing (Hypothesis) of the parsers that see attacker input first.

* :func:`gateway.access.object_key`: any bytes give a key in the SPEC §3
  grammar or :class:`InvalidObjectKey`, never another exception;
* :func:`gateway.auth.bearer_token` and :meth:`Authenticator.authenticate`: any
  string, and structurally plausible JWTs with random headers and payloads
  (signed with the real key, another key or not at all), give a
  :class:`Device` or :class:`InvalidToken`; only a token signed by a key of
  the set, naming that key's algorithm, ever passes;
* :func:`gateway.stream.single_range`: any string gives None or one
  well-formed byte range;
* a bounded live run: random keys and header values against a running
  gateway never yield a 5xx.

Every run is derandomized (the same examples on every machine, so CI is
deterministic) and keeps no example database.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.access import MAX_KEY_BYTES, object_key
from gateway.auth import FAILURE_REASONS, Authenticator, Device, KeySet, bearer_token
from gateway.errors import InvalidObjectKey, InvalidToken
from gateway.keys import generate_key
from gateway.stream import single_range
from tests.security import b64url, bearer, forge, http, load_private, sign_jws
from tests.stack import AUDIENCE, FILES, ISSUER, Stack, running_stack

FAST = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
LIVE = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

KEY_GRAMMAR = re.compile(rb"[A-Za-z0-9/._~+=,@-]{1,1024}")
B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
RANGE = re.compile(r"bytes=(?:([0-9]+)-([0-9]*)|-([0-9]+))")


# --------------------------------------------------------------------------- object keys

# Pieces that make the interesting paths likely: dots, encoded dots and slashes,
# double and overlong encodings, controls, separators and plain text.
KEY_PIECES = [
    "a", "Z", "9", "firmware", "acme-x1", "/", ".", "..", "%", "%2e", "%2E", "%2f", "%2F",
    "%25", "%252e", "%5c", "\\", "%00", "%0d%0a", "%c0%ae", "%ef%bc%8e", "%20", " ", "~",
    "+", "=", ",", "@", "-", "_", ":", ";", "?", "#", "%41", "%7e", "%ff", "%e2%80%ae",
]  # fmt: skip
key_bytes = st.one_of(
    st.binary(max_size=1100),
    st.lists(st.sampled_from(KEY_PIECES), max_size=40).map(lambda p: "".join(p).encode()),
    st.text(alphabet="ab./%2e", max_size=30).map(str.encode),
)


@FAST
@given(raw=key_bytes)
@example(raw=b"a" * MAX_KEY_BYTES)
@example(raw=b"a" * (MAX_KEY_BYTES + 1))
@example(raw=b"%2e%2e")
def test_object_key_is_in_the_grammar_or_refused(raw: bytes) -> None:
    try:
        key = object_key(raw)
    except InvalidObjectKey as exc:
        assert exc.status == 400
        return
    encoded = key.encode("ascii")
    assert KEY_GRAMMAR.fullmatch(encoded)
    assert len(encoded) <= MAX_KEY_BYTES
    assert all(segment not in ("", ".", "..") for segment in key.split("/"))
    assert encoded == unquote_to_bytes(raw)  # exactly one percent-decoding
    assert object_key(encoded) == key  # a valid key is its own encoding


# --------------------------------------------------------------------------- bearer_token


@FAST
@given(value=st.one_of(st.none(), st.text(max_size=300), st.text().map(lambda t: "Bearer " + t)))
def test_bearer_token_returns_a_b64token_or_refuses(value: str | None) -> None:
    try:
        token = bearer_token(value)
    except InvalidToken as exc:
        assert exc.reason == ("missing" if value is None else "malformed")
        assert exc.status == 401
        return
    assert value is not None and token in value
    assert B64TOKEN.fullmatch(token)
    assert value.strip(" \t").split(" ", 1)[0].lower() == "bearer"


# --------------------------------------------------------------------------- authenticate


class Keys:
    def __init__(self, directory: Path) -> None:
        generate_key("EdDSA", directory, "ed1")
        generate_key("ES256", directory, "es1")
        self.ed1 = load_private(directory / "ed1.pem")
        self.es1 = load_private(directory / "es1.pem")
        self.authn = Authenticator(
            KeySet.from_file(directory / "jwks.json"),
            issuer=ISSUER,
            audience=AUDIENCE,
            algorithms=["EdDSA", "ES256"],
            leeway=60,
            max_token_lifetime=30 * 86400,
            revoked=frozenset({"device-revoked"}),
        )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("fuzz-keys"))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
NOW = int(time.time())
# Time claims near now, and integers of any size (beyond float range too).
time_claims = st.one_of(
    st.integers(NOW - 90 * 86400, NOW + 90 * 86400),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    json_values,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.one_of(
            st.sampled_from(["EdDSA", "ES256", "none", "NONE", "HS256", "RS256", "ES384"]),
            json_values,
        ),
        "kid": st.one_of(st.sampled_from(["ed1", "es1", "../ed1", "ed1\x00"]), json_values),
        "typ": st.sampled_from(["JWT", "at+jwt", "JOSE"]),
        "cty": st.sampled_from(["JWT", "json"]),
        "crit": st.one_of(st.lists(st.text(max_size=5), max_size=2), json_values),
        "b64": st.booleans(),
        "jku": st.just("http://127.0.0.1:9/jwks.json"),
        "x5u": st.just("http://127.0.0.1:9/cert.pem"),
        "jwk": st.dictionaries(st.sampled_from(["kty", "crv", "x", "kid"]), st.text(max_size=8)),
        "x5c": st.lists(st.text(max_size=10), max_size=2),
        "zip": st.just("DEF"),
        "enc": st.just("A256GCM"),
    },
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(st.sampled_from(["device-0001", "device-revoked", ""]), json_values),
        "exp": time_claims,
        "nbf": time_claims,
        "iat": time_claims,
        "iss": st.one_of(st.just(ISSUER), json_values),
        "aud": st.one_of(st.just(AUDIENCE), st.just([AUDIENCE, "x"]), json_values),
        "jti": st.one_of(st.text(max_size=8), json_values),
        "product": json_values,
        "residency": json_values,
    },
)
signers = st.sampled_from(["ed1", "es1", "random", "empty", "garbage-b64"])


def jwt_from(keys: Keys, header: dict[str, Any], payload: dict[str, Any] | bytes, how: str) -> str:
    """A compact JWS of ``header`` and ``payload``: signed by ed1 or es1 (whatever the
    header claims), or with random, empty or undecodable signature bytes."""
    if how in ("ed1", "es1"):
        return sign_jws(keys.ed1 if how == "ed1" else keys.es1, header, payload)
    if how == "random":
        return forge(header, payload, b"\x01" * 64)
    if how == "garbage-b64":
        return forge(header, payload, b"") + "A"
    return forge(header, payload, b"")


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def check_authenticate(keys: Keys, token: str) -> None:
    try:
        device = keys.authn.authenticate(token)
    except InvalidToken as exc:
        assert exc.reason in FAILURE_REASONS
        assert exc.status == 401
        assert len(token) < 8 or token not in exc.detail
        return
    assert isinstance(device, Device)
    assert isinstance(device.sub, str) and device.sub and device.sub != "device-revoked"
    # Only a genuine signature with the key's own algorithm passes.
    header = json.loads(b64decode(token.split(".")[0]))
    assert (header.get("alg"), header.get("kid")) in {("EdDSA", "ed1"), ("ES256", "es1")}
    assert "crit" not in header


def b64decode(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@FAST
@given(token=st.text(max_size=400))
def test_authenticate_refuses_arbitrary_strings(keys: Keys, token: str) -> None:
    check_authenticate(keys, token)


@FAST
@given(
    header=headers,
    payload=st.one_of(payloads, json_values.map(_dumps), st.binary(max_size=64)),
    how=signers,
)
def test_authenticate_on_plausible_jwts(
    keys: Keys, header: dict[str, Any], payload: Any, how: str
) -> None:
    check_authenticate(keys, jwt_from(keys, header, payload, how))


@FAST
@given(payload=payloads, kid=st.sampled_from(["ed1", "es1"]))
def test_authenticate_on_genuinely_signed_random_claims(
    keys: Keys, payload: dict[str, Any], kid: str
) -> None:
    # The right key and algorithm: the claims alone decide.
    alg = "EdDSA" if kid == "ed1" else "ES256"
    check_authenticate(keys, jwt_from(keys, {"alg": alg, "kid": kid}, payload, kid))


@FAST
@given(token=st.text(alphabet="AZaz09-_.", max_size=200))
def test_authenticate_on_base64url_soup(keys: Keys, token: str) -> None:
    check_authenticate(keys, token)
    check_authenticate(keys, b64url(b'{"alg":"EdDSA","kid":"ed1"}') + "." + token)


# --------------------------------------------------------------------------- single_range


@FAST
@given(
    value=st.one_of(
        st.none(),
        st.text(max_size=80),
        st.from_regex(r"\Abytes ?= ?[0-9]{0,22} ?- ?[0-9]{0,22}(,[0-9]{0,3}-[0-9]{0,3})*\Z"),
    )
)
def test_single_range_is_one_wellformed_range_or_none(value: str | None) -> None:
    forwarded = single_range(value)
    if forwarded is None:
        return
    match = RANGE.fullmatch(forwarded)
    assert match is not None, forwarded
    first, last, suffix = match.groups()
    if suffix is None and last:
        assert int(first) <= int(last)
    assert all(len(n) <= 19 for n in match.groups() if n)
    assert single_range(forwarded) == forwarded


# --------------------------------------------------------------------------- live


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def edit(config: dict[str, Any]) -> None:
        # One prefix streams, the rest redirects: both delivery paths get fuzzed.
        config["access"].insert(0, {"prefix": "firmware/{product}/1.0.1/", "delivery": "stream"})

    with running_stack(tmp_path_factory.mktemp("sec-fuzz"), edit) as s:
        yield s


# What a request target may carry without the HTTP parser refusing it.
TARGET_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
).map(str.strip)
# The conditional headers stream mode forwards upstream, obs-text (0x80-0xFF) included.
conditional_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
).map(str.strip)
live_keys = st.one_of(
    st.sampled_from([*FILES, "firmware/acme-x1/1.0.1/nope.bin"]),
    st.lists(st.sampled_from(KEY_PIECES), max_size=12)
    .map("".join)
    .filter(lambda k: all(0x21 <= ord(c) < 0x7F for c in k)),
    st.text(alphabet=TARGET_CHARS, max_size=60),
)
live_headers = st.fixed_dictionaries(
    {},
    optional={
        "Range": st.one_of(header_text, st.from_regex(r"\Abytes=[0-9]{0,6}-[0-9]{0,6}\Z")),
        "If-Range": conditional_header_text,
        "If-None-Match": conditional_header_text,
        "If-Modified-Since": st.one_of(
            conditional_header_text, st.just("Thu, 01 Jan 2026 00:00:00 GMT")
        ),
        "X-Request-ID": header_text,
        "X-Forwarded-For": st.one_of(
            header_text, st.sampled_from(["89.160.20.112", "2001:218::1, 127.0.0.1", "::ffff:1.2"])
        ),
        "User-Agent": header_text,
        "CloudFront-Viewer-Latitude": st.one_of(
            header_text, st.sampled_from(["nan", "1e999", "-91"])
        ),
        "CloudFront-Viewer-Longitude": header_text,
        "CloudFront-Viewer-Country": st.one_of(header_text, st.sampled_from(["SE", "XX", "T1"])),
        "CF-IPCountry": header_text,
    },
)


@LIVE
@given(
    route=st.sampled_from(["/v1/binaries/", "/v1/urls/"]),
    method=st.sampled_from(["GET", "HEAD"]),
    key=live_keys,
    auth=st.one_of(st.just("valid"), st.just("none"), header_text),
    extra=live_headers,
)
def test_random_requests_never_get_a_5xx(
    stack: Stack, route: str, method: str, key: str, auth: str, extra: dict[str, str]
) -> None:
    sent: list[tuple[str, str | bytes]] = [
        (name, value.encode("latin-1")) for name, value in extra.items()
    ]
    if auth == "valid":
        sent.append(bearer(stack.token()))
    elif auth != "none":
        sent.append(("Authorization", auth.encode("latin-1")))
    response = http(stack.base, route + key, sent, method=method)
    assert response.status < 500, (response.status, response.body[:300])
