"""JWT attacks against a live gateway (RFC 8725 "JWT Best Current Practices").

The gateway here takes its JWKS from a URL (a loopback :class:`CountingServer`)
so that "no outbound fetch" is provable: the same server also offers the
attacker's key set at ``/evil/...``, which ``jku``/``x5u`` headers point at,
and the test asserts it was never asked for.

Every refusal is asserted exactly: 401, ``urn:gateway:problem:invalid-token``,
the RFC 6750 challenge, no ``Location``, and the
``gateway_auth_failures_total{reason}`` counter that moved (one reason per
attack, so the operator's dashboard tells the attacks apart).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from gateway.keys import public_jwk
from tests.security import (
    CountingServer,
    RawResponse,
    assert_log_is_clean,
    assert_metrics_are_clean,
    assert_problem,
    assert_refused_token,
    b64json,
    b64url,
    bearer,
    forge,
    http,
    load_private,
    metric,
    sign_hmac,
    sign_jws,
)
from tests.stack import AUDIENCE, ISSUER, KEY, Stack, running_stack

BINARY = f"/v1/binaries/{KEY}"
LEEWAY = 60  # the default auth.leeway
REVOKED_SUB = "device-revoked"
REVOKED_JTI = "jti-revoked-0001"


class Env:
    """The live stack, its issuer keys, an attacker's keys and the counting server."""

    def __init__(self, stack: Stack, counter: CountingServer) -> None:
        self.stack = stack
        self.counter = counter
        self.ed1 = load_private(stack.private_keys["ed1"])
        self.es1 = load_private(stack.private_keys["es1"])
        self.attacker_ed = Ed25519PrivateKey.generate()
        self.attacker_ec = ec.generate_private_key(ec.SECP256R1())

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = time.time()
        claims: dict[str, Any] = {
            "sub": "device-0001",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(now),
            "exp": int(now) + 3600,
            "product": "acme-x1",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def get(self, token: str, *headers: tuple[str, str]) -> RawResponse:
        return http(self.stack.base, BINARY, [bearer(token), *headers])

    def failures(self, reason: str) -> float:
        return metric(self.stack.base, "gateway_auth_failures_total", reason=reason)

    def refused(self, token: str, reason: str) -> str:
        """Send ``token``; assert the exact 401 and that ``reason`` was counted once."""
        before = self.failures(reason)
        evil_before = self.evil_fetches()
        description = assert_refused_token(self.get(token))
        assert self.failures(reason) == before + 1, f"not counted as {reason}"
        assert self.evil_fetches() == evil_before == 0
        return description

    def accepted(self, token: str) -> None:
        response = self.get(token)
        assert response.status == 307, response.body[:300]
        location = response.header("location")
        assert location is not None and location.startswith(self.stack.origins["us-east"] + "/")

    def evil_fetches(self) -> int:
        return sum(1 for path in self.counter.paths if path != "/jwks.json")


_DROP = object()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("sec-jwt")
    attacker = Ed25519PrivateKey.generate()
    evil_jwks = json.dumps(
        {"keys": [public_jwk(attacker.public_key(), kid="ed1", alg="EdDSA")]}
    ).encode()
    routes = {
        "/jwks.json": lambda: (workdir / "keys" / "jwks.json").read_bytes(),
        "/evil/jwks.json": lambda: evil_jwks,
        "/evil/cert.pem": lambda: b"-----BEGIN CERTIFICATE-----\n",
    }
    with CountingServer(routes) as counter:

        def edit(config: dict[str, Any]) -> None:
            revoked = workdir / "revoked.txt"
            revoked.write_text(f"# revoked devices\n{REVOKED_SUB}\n{REVOKED_JTI}\n")
            config["auth"]["jwks"] = f"{counter.base}/jwks.json"
            config["auth"]["revoked"] = str(revoked)

        with running_stack(workdir, edit) as stack:
            env = Env(stack, counter)
            # The remote JWKS loads in the background: wait until a good token passes.
            deadline = time.monotonic() + 10
            while env.get(stack.token()).status != 307:
                assert time.monotonic() < deadline, "the JWKS never loaded"
                time.sleep(0.05)
            yield env


# --------------------------------------------------------------------------- the baseline


def test_a_good_token_is_accepted(env: Env) -> None:
    env.accepted(env.stack.token())
    env.accepted(sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims()))
    env.accepted(sign_jws(env.es1, {"alg": "ES256", "kid": "es1"}, env.claims()))


def test_no_token_gets_the_bare_challenge(env: Env) -> None:
    before = env.failures("missing")
    assert_refused_token(http(env.stack.base, BINARY), missing=True)
    assert env.failures("missing") == before + 1


# --------------------------------------------------------------------------- alg: none


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("kid", ["ed1", None])
def test_alg_none_is_refused(env: Env, alg: str, kid: str | None) -> None:
    header = {"alg": alg, "typ": "JWT"} | ({"kid": kid} if kid else {})
    env.refused(forge(header, env.claims(), b""), "bad_algorithm")
    # A signature copied from a genuine token does not make it "signed".
    genuine = env.stack.token().rsplit(".", 1)[1]
    env.refused(forge(header, env.claims(), b"") + genuine, "bad_algorithm")


@pytest.mark.parametrize("alg", ["", 0, None, ["EdDSA"], {"alg": "EdDSA"}])
def test_missing_or_odd_alg_is_refused(env: Env, alg: Any) -> None:
    env.refused(sign_jws(env.ed1, {"alg": alg, "kid": "ed1"}, env.claims()), "bad_algorithm")
    env.refused(sign_jws(env.ed1, {"kid": "ed1"}, env.claims()), "bad_algorithm")


# --------------------------------------------------------------------------- key confusion


def _public_forms(env: Env, kid: str) -> dict[str, bytes]:
    """Every way an attacker might feed our public key to an HMAC as its secret."""
    private = env.ed1 if kid == "ed1" else env.es1
    public = private.public_key()
    jwks = json.loads((env.stack.workdir / "keys" / "jwks.json").read_text())
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return {
        "pem": public.public_bytes(serialization.Encoding.PEM, spki),
        "pem-no-newline": public.public_bytes(serialization.Encoding.PEM, spki).rstrip(b"\n"),
        "der": public.public_bytes(serialization.Encoding.DER, spki),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "jwks-document": json.dumps(jwks).encode(),
    }


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("kid", ["ed1", "es1"])
def test_hmac_signed_with_the_public_key_is_refused(env: Env, alg: str, kid: str) -> None:
    for form, secret in _public_forms(env, kid).items():
        token = sign_hmac(secret, {"alg": alg, "kid": kid, "typ": "JWT"}, env.claims())
        assert env.refused(token, "bad_algorithm"), form


def test_an_algorithm_other_than_the_keys_is_refused(env: Env) -> None:
    # ES256-signed by es1 but naming ed1's kid, and the other way round.
    env.refused(sign_jws(env.es1, {"alg": "ES256", "kid": "ed1"}, env.claims()), "bad_algorithm")
    env.refused(sign_jws(env.ed1, {"alg": "EdDSA", "kid": "es1"}, env.claims()), "bad_algorithm")
    for alg in ("RS256", "PS256", "ES384", "ES512", "Ed25519", "EdDSA "):
        env.refused(sign_jws(env.ed1, {"alg": alg, "kid": "ed1"}, env.claims()), "bad_algorithm")


# --------------------------------------------------------------------------- embedded keys


def _attacker_cert(env: Env) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-0001")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(env.attacker_ec.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(env.attacker_ec, hashes.SHA256())
    )
    import base64

    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def test_embedded_jwk_is_ignored(env: Env) -> None:
    jwk_ed = public_jwk(env.attacker_ed.public_key(), kid="attacker", alg="EdDSA")
    for kid, reason in (("ed1", "bad_signature"), ("attacker", "unknown_kid")):
        header = {"alg": "EdDSA", "kid": kid, "jwk": jwk_ed}
        env.refused(sign_jws(env.attacker_ed, header, env.claims()), reason)
    # No kid at all: the embedded key is not a fallback.
    env.refused(
        sign_jws(env.attacker_ed, {"alg": "EdDSA", "jwk": jwk_ed}, env.claims()), "unknown_kid"
    )


def test_jku_and_x5u_are_never_fetched(env: Env) -> None:
    evil = env.counter.base + "/evil"
    for parameter, url in (("jku", f"{evil}/jwks.json"), ("x5u", f"{evil}/cert.pem")):
        for kid, reason in (("ed1", "bad_signature"), ("attacker", "unknown_kid")):
            header = {"alg": "EdDSA", "kid": kid, parameter: url}
            env.refused(sign_jws(env.attacker_ed, header, env.claims()), reason)
    time.sleep(0.3)  # anything fetched in the background would have arrived by now
    assert env.evil_fetches() == 0
    assert set(env.counter.paths) == {"/jwks.json"}


def test_embedded_x5c_is_ignored(env: Env) -> None:
    x5c = [_attacker_cert(env)]
    for kid, reason in (("es1", "bad_signature"), ("attacker", "unknown_kid")):
        header = {"alg": "ES256", "kid": kid, "x5c": x5c}
        env.refused(sign_jws(env.attacker_ec, header, env.claims()), reason)


def test_a_genuine_token_with_key_pointers_still_verifies_only_with_our_key(env: Env) -> None:
    # jku/x5u/jwk on an otherwise genuine token change nothing (and fetch nothing).
    header = {"alg": "EdDSA", "kid": "ed1", "jku": env.counter.base + "/evil/jwks.json"}
    env.accepted(sign_jws(env.ed1, header, env.claims()))
    assert env.evil_fetches() == 0


# --------------------------------------------------------------------------- hostile kid


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "../../../../../../dev/zero",
        "/dev/random",
        "file:///etc/passwd",
        "' OR '1'='1",
        "ed1' --",
        "ed1\u0000",
        "ed1\u0000../../etc/passwd",
        "ed1\n",
        " ed1",
        "ED1",
        "%65d1",
        "k" * 5000,
        1,
        1.5,
        True,
        ["ed1"],
        {"kid": "ed1"},
        "",
    ],
    ids=lambda kid: repr(kid)[:30],
)
def test_hostile_kid_is_an_unknown_kid(env: Env, kid: Any) -> None:
    started = time.perf_counter()
    description = env.refused(
        sign_jws(env.ed1, {"alg": "EdDSA", "kid": kid}, env.claims()), "unknown_kid"
    )
    assert time.perf_counter() - started < 2  # nothing was opened or read
    # The hostile value is not reflected into the challenge.
    assert "passwd" not in description and "OR" not in description and "kkkk" not in description


def test_a_10kb_kid_is_refused_by_the_header_limit(env: Env) -> None:
    token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "k" * 10240}, env.claims())
    assert_problem(env.get(token), 431, "header-too-large")


# --------------------------------------------------------------------------- crit, nesting, JWE


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"]},
        {"crit": ["b64"], "b64": False},
        {"crit": ["urn:example:unknown"], "urn:example:unknown": 1},
        {"crit": []},
        {"crit": "b64"},
    ],
    ids=str,
)
def test_unknown_crit_is_refused(env: Env, extra: dict[str, Any]) -> None:
    header = {"alg": "EdDSA", "kid": "ed1", **extra}
    env.refused(sign_jws(env.ed1, header, env.claims()), "crit")


def test_nested_jwt_is_not_unwrapped(env: Env) -> None:
    inner = env.stack.token()
    # Outer layer by the attacker around a genuine token: the outer signature counts.
    outer = {"alg": "EdDSA", "kid": "ed1", "cty": "JWT"}
    env.refused(sign_jws(env.attacker_ed, outer, inner.encode()), "bad_signature")
    # Even a genuinely signed outer layer whose payload is a JWT is not a claims set.
    env.refused(sign_jws(env.ed1, outer, inner.encode()), "malformed")


def test_jwe_shaped_tokens_are_malformed(env: Env) -> None:
    jwe_header = b64json({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "ed1"})
    parts = [
        jwe_header,
        b64url(b"k" * 256),
        b64url(b"iv" * 6),
        b64url(b"c" * 64),
        b64url(b"t" * 16),
    ]
    env.refused(".".join(parts), "malformed")
    env.refused("a.b.c.d.e", "malformed")
    # JWS JSON serialization (RFC 7515 section 7.2) is not a Bearer token.
    general = json.dumps({"payload": "e30", "signatures": [{"protected": "e30", "signature": ""}]})
    env.refused(b64url(general.encode()), "malformed")


@pytest.mark.parametrize(
    "value",
    [
        "Basic ZGV2aWNlOnNlY3JldA==",
        "Bearer",
        "Bearer ",
        "Bearer a.b.c extra",
        "Bearer a.b.c,",
        "Token a.b.c",
        "Bearer\ta.b.c",
    ],
)
def test_malformed_authorization_values(env: Env, value: str) -> None:
    before = env.failures("malformed")
    assert_refused_token(http(env.stack.base, BINARY, [("Authorization", value)]))
    assert env.failures("malformed") == before + 1


# --------------------------------------------------------------------------- size


def test_a_100kb_token_is_refused_by_the_header_limit(env: Env) -> None:
    before = env.stack.metrics()
    response = env.get("eyJ" + "A" * 100_000)
    assert_problem(response, 431, "header-too-large")
    assert response.header("www-authenticate") is None
    after = env.stack.metrics()
    failures = [k for k in after if k[0] == "gateway_auth_failures_total"]
    assert all(after[k] == before.get(k, 0.0) for k in failures)  # never parsed


def test_an_8kb_token_is_malformed(env: Env) -> None:
    env.refused("eyJ" + "A" * 8100, "malformed")


def test_the_header_limit_is_exact(env: Env) -> None:
    # "Bearer " + 8185 characters is an 8192-byte field: allowed, and parsed.
    env.refused("A" * (8192 - len("Bearer ")), "malformed")
    assert_problem(env.get("A" * (8193 - len("Bearer "))), 431, "header-too-large")


# --------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize(
    "order",
    [
        ("garbage", "good"),
        ("good", "garbage"),
        ("good", "good"),
        ("good", "other-product"),
        ("basic", "good"),
        ("good", "basic"),
    ],
    ids="-".join,
)
def test_duplicate_authorization_headers_are_refused(env: Env, order: tuple[str, str]) -> None:
    """RFC 9110 section 5.3: Authorization is a singleton field; two lines make
    the request malformed, and neither credential may be used."""
    values = {
        "good": f"Bearer {env.stack.token()}",
        "other-product": f"Bearer {env.stack.token(claims={'product': 'acme-x2'})}",
        "garbage": "Bearer garbage",
        "basic": "Basic ZGV2aWNlOnNlY3JldA==",
    }
    before = env.failures("malformed")
    response = http(env.stack.base, BINARY, [("Authorization", values[name]) for name in order])
    assert response.status < 500
    assert response.header("location") is None
    assert_refused_token(response)
    assert env.failures("malformed") == before + 1


# --------------------------------------------------------------------------- time claims


def test_exp_one_second_past_the_leeway_is_expired(env: Env) -> None:
    now = time.time()
    env.refused(
        sign_jws(
            env.ed1,
            {"alg": "EdDSA", "kid": "ed1"},
            env.claims(iat=now - 3600, exp=now - LEEWAY - 1),
        ),
        "expired",
    )


def test_exp_inside_the_leeway_is_accepted(env: Env) -> None:
    now = time.time()
    env.accepted(
        sign_jws(
            env.ed1,
            {"alg": "EdDSA", "kid": "ed1"},
            env.claims(iat=now - 3600, exp=now - LEEWAY + 5),
        )
    )


def test_nbf_one_second_past_the_leeway_is_not_yet_valid(env: Env) -> None:
    now = time.time()
    token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(nbf=now + LEEWAY + 1))
    env.refused(token, "not_yet_valid")


def test_nbf_inside_the_leeway_is_accepted(env: Env) -> None:
    now = time.time()
    env.accepted(
        sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(nbf=now + LEEWAY - 5))
    )


def test_iat_in_the_future_is_not_yet_valid(env: Env) -> None:
    now = time.time()
    token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(iat=now + LEEWAY + 1))
    env.refused(token, "not_yet_valid")
    env.accepted(
        sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(iat=now + LEEWAY - 5))
    )


def test_time_claims_must_be_numbers(env: Env) -> None:
    for name in ("exp", "nbf", "iat"):
        for value in ("9999999999", True, [1], {"t": 1}):
            token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(**{name: value}))
            env.refused(token, "malformed")


def test_missing_exp_is_refused(env: Env) -> None:
    token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(exp=_DROP))
    env.refused(token, "missing_claim")


def test_a_token_living_longer_than_allowed_is_refused(env: Env) -> None:
    now = int(time.time())
    token = sign_jws(
        env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(iat=now, exp=now + 31 * 86400)
    )
    env.refused(token, "lifetime")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_a_time_claim_beyond_float_range_is_malformed(env: Env, name: str) -> None:
    token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(**{name: 10**400}))
    env.refused(token, "malformed")


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "another-service"}, "bad_audience"),
        ({"aud": ["another-service", "and-another"]}, "bad_audience"),
        ({"aud": _DROP}, "bad_audience"),
        ({"aud": {"aud": AUDIENCE}}, "bad_audience"),
        ({"iss": "https://evil.example"}, "bad_issuer"),
        ({"iss": ISSUER + "/"}, "bad_issuer"),
        ({"iss": [ISSUER]}, "bad_issuer"),
        ({"iss": _DROP}, "bad_issuer"),
    ],
    ids=str,
)
def test_another_audience_or_issuer_is_refused(
    env: Env, claims: dict[str, Any], reason: str
) -> None:
    env.refused(sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(**claims)), reason)


def test_an_audience_list_holding_ours_is_accepted(env: Env) -> None:
    token = sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(aud=["x", AUDIENCE]))
    env.accepted(token)


@pytest.mark.parametrize("sub", [123, 1.5, True, None, "", ["device-0001"], {"id": 1}], ids=repr)
def test_a_sub_that_is_not_a_string_is_refused(env: Env, sub: Any) -> None:
    env.refused(
        sign_jws(env.ed1, {"alg": "EdDSA", "kid": "ed1"}, env.claims(sub=sub)), "missing_claim"
    )


def test_a_revoked_sub_or_jti_is_refused(env: Env) -> None:
    env.refused(env.stack.token(REVOKED_SUB), "revoked")
    env.refused(env.stack.token(claims={"product": "acme-x1", "jti": REVOKED_JTI}), "revoked")
    # The revocation is checked again on a cache hit (the token was verified before).
    env.refused(env.stack.token(REVOKED_SUB), "revoked")


def test_a_forged_token_for_a_revoked_sub_does_not_reveal_the_revocation(env: Env) -> None:
    token = sign_jws(env.attacker_ed, {"alg": "EdDSA", "kid": "ed1"}, env.claims(sub=REVOKED_SUB))
    env.refused(token, "bad_signature")


def test_a_tampered_payload_is_refused(env: Env) -> None:
    header, _, sig = env.stack.token().split(".")
    payload = b64json(env.claims(product="acme-x2"))
    env.refused(f"{header}.{payload}.{sig}", "bad_signature")


# --------------------------------------------------------------------------- the scan


def test_nothing_leaked_and_nothing_fetched(env: Env) -> None:
    """After every attack above: no key pointer fetched, and nothing secret logged."""
    env.stack.app.access_log.flush()
    time.sleep(0.3)
    lines = env.stack.log.lines()
    assert len(lines) > 100
    token = env.stack.token()
    assert_log_is_clean(lines, secrets=[token, token.rsplit(".", 1)[1]])
    for line in lines:
        record = json.loads(line)
        if record["status"] == 401:
            assert record["sub"] is None  # an unverified sub is never believed
    metrics = http(env.stack.base, "/metrics").body.decode()
    assert_metrics_are_clean(metrics, secrets=[token])
    assert set(env.counter.paths) == {"/jwks.json"}
    # The start, plus at most one unknown-kid refetch per 30 s: forged kids
    # cannot turn the gateway into a load generator against the issuer.
    assert len(env.counter.paths) <= 5
