"""Our token verification against PyJWT's ``jwt.decode``, case by case.

``gateway.auth`` parses the compact form and checks the claims itself (the
signature stays PyJWT's algorithm objects): ``jwt.decode`` spent about 35 us
of its own per token, which a fleet of new devices pays on every request.
This file holds the two to the same answer, accept or refuse and the refusal
reason, on hand-picked cases and on generated ones (valid, tampered,
re-encoded and unusual claims) for Ed25519, P-256 and RSA keys.

Where the gateway is deliberately stricter, the reference below says so and
why: an empty ``sub``, a repeated claim name (RFC 7519 section 4 lets a
parser refuse it), and the time claims, which the gateway checks against its
own clock (PyJWT reads ``datetime.now``, which cannot be injected).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from gateway.auth import Authenticator, KeySet
from gateway.errors import InvalidToken
from gateway.keys import public_jwk

ISSUER = "https://devices.example.com"
AUDIENCE = "firmware-gateway"
NOW = int(time.time())

PRIVATE: dict[str, Any] = {
    "EdDSA": Ed25519PrivateKey.generate(),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
KEYS = KeySet(
    {"keys": [public_jwk(key.public_key(), kid=alg, alg=alg) for alg, key in PRIVATE.items()]}
)
AUTH = Authenticator(
    KEYS,
    issuer=ISSUER,
    audience=AUDIENCE,
    algorithms=list(PRIVATE),
    leeway=60,
    max_token_lifetime=30 * 86400,
    cache_size=0,
)

_MISSING = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(alg: str, claims: dict[str, Any] | bytes) -> str:
    """A token signed with the key for ``alg``; ``claims`` may be raw payload bytes."""
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    header = b64(json.dumps({"alg": alg, "kid": alg, "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(payload)}"
    # PyJWT signs a prepared signing input exactly as RFC 7515 section 5.1 says.
    algorithm = jwt.get_algorithm_by_name(alg)
    signature = algorithm.sign(signing_input.encode(), PRIVATE[alg])
    return f"{signing_input}.{b64(signature)}"


def good_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "device-0001",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": NOW,
        "exp": NOW + 3600,
        "jti": "j-1",
        "product": "acme-x1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not _MISSING}


def ours(tok: str) -> tuple[str, dict[str, Any] | None]:
    try:
        device = AUTH.authenticate(tok)
    except InvalidToken as exc:
        return exc.reason, None
    return "ok", _thaw(device.claims)


def reference(tok: str) -> tuple[str, dict[str, Any] | None]:
    """``jwt.decode`` with the gateway's settings; exceptions named as the gateway names them."""
    try:
        alg = jwt.get_unverified_header(tok)["alg"]
        claims = jwt.decode(
            tok,
            PRIVATE[alg].public_key() if alg in PRIVATE else "",
            algorithms=[alg] if alg in PRIVATE else [],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require": ["exp", "sub"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        return "bad_signature", None
    except jwt.MissingRequiredClaimError as exc:
        return {"iss": "bad_issuer", "aud": "bad_audience"}.get(exc.claim, "missing_claim"), None
    except jwt.InvalidIssuerError:
        return "bad_issuer", None
    except jwt.InvalidAudienceError:
        return "bad_audience", None
    except InvalidSubjectError:
        return "missing_claim", None
    except InvalidJTIError:
        return "malformed", None
    except jwt.PyJWTError:
        return "malformed", None
    # The gateway's own, stricter rule: a device must be someone.
    if claims["sub"] == "":
        return "missing_claim", None
    return "ok", claims


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if hasattr(value, "items"):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def agree(tok: str) -> tuple[str, dict[str, Any] | None]:
    mine, theirs = ours(tok), reference(tok)
    assert mine == theirs, (mine, theirs)
    return mine


# --------------------------------------------------------------------------- chosen cases


@pytest.mark.parametrize("alg", sorted(PRIVATE))
def test_a_good_token_gives_the_same_claims(alg: str) -> None:
    outcome, claims = agree(token(alg, good_claims()))
    assert outcome == "ok"
    assert claims == good_claims()


CLAIM_CASES = [
    ("sub", _MISSING, "missing_claim"),
    ("sub", None, "missing_claim"),
    ("sub", 7, "missing_claim"),
    ("sub", ["a"], "missing_claim"),
    ("sub", "", "missing_claim"),
    ("exp", _MISSING, "missing_claim"),
    ("exp", None, "missing_claim"),
    ("iss", _MISSING, "bad_issuer"),
    ("iss", "https://evil.example", "bad_issuer"),
    ("iss", 1, "bad_issuer"),
    ("iss", [ISSUER], "bad_issuer"),
    ("aud", _MISSING, "bad_audience"),
    ("aud", "", "bad_audience"),
    ("aud", [], "bad_audience"),
    ("aud", "other", "bad_audience"),
    ("aud", ["other"], "bad_audience"),
    ("aud", [AUDIENCE, 1], "bad_audience"),
    ("aud", {"aud": AUDIENCE}, "bad_audience"),
    ("aud", 0, "bad_audience"),
    ("aud", [AUDIENCE, "other"], "ok"),
    ("jti", 5, "malformed"),
    ("jti", None, "malformed"),
    ("jti", _MISSING, "ok"),
]


@pytest.mark.parametrize(("name", "value", "expected"), CLAIM_CASES)
def test_claim_checks_agree(name: str, value: Any, expected: str) -> None:
    outcome, _ = agree(token("ES256", good_claims(**{name: value})))
    assert outcome == expected


def test_the_first_failing_check_decides_the_reason() -> None:
    # PyJWT's order: required claims, iss, aud, sub type, jti type.
    assert agree(token("EdDSA", good_claims(sub=None, iss="x")))[0] == "missing_claim"
    assert agree(token("EdDSA", good_claims(iss="x", aud="y")))[0] == "bad_issuer"
    assert agree(token("EdDSA", good_claims(aud="y", sub=3)))[0] == "bad_audience"
    assert agree(token("EdDSA", good_claims(sub=3, jti=4)))[0] == "missing_claim"


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe", b"", b"{" * 5000],
    ids=["text", "array", "string", "not-utf8", "empty", "deep"],
)
def test_a_signed_payload_that_is_not_a_claims_object_is_malformed(payload: bytes) -> None:
    assert agree(token("RS256", payload))[0] == "malformed"


@pytest.mark.parametrize("alg", sorted(PRIVATE))
def test_tampering_agrees(alg: str) -> None:
    tok = token(alg, good_claims())
    header, payload, signature = tok.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[len(raw) // 2] ^= 1
    assert agree(f"{header}.{payload}.{b64(bytes(raw))}")[0] == "bad_signature"
    other = b64(json.dumps(good_claims(sub="device-0002")).encode())
    assert agree(f"{header}.{other}.{signature}")[0] == "bad_signature"
    assert agree(f"{header}.{payload}.{b64(bytes(raw[:-1]))}")[0] == "bad_signature"


@pytest.mark.parametrize("alg", sorted(PRIVATE))
def test_a_non_canonical_signature_encoding_is_refused(alg: str) -> None:
    # The last character of an unpadded base64url segment carries unused low
    # bits; setting one spells the same bytes differently (RFC 4648 section 3.5).
    tok = token(alg, good_claims())
    signing_input, _, signature = tok.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    assert len(signature) % 4 in (2, 3)  # 64- and 256-byte signatures leave spare bits
    twin = signature[:-1] + alphabet[last | 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(signature + "==")
    assert agree(f"{signing_input}.{twin}")[0] == "malformed"


def test_repeated_claim_names_are_refused_where_pyjwt_takes_the_last() -> None:
    # RFC 7519 section 4: "MUST either reject ... or use a JSON parser that
    # returns only the lexically last duplicate member name". We reject: two
    # parsers reading one token differently is how confusion attacks start.
    payload = json.dumps(good_claims()).encode()[:-1] + b', "sub": "device-9999"}'
    tok = token("ES256", payload)
    assert ours(tok) == ("malformed", None)
    assert reference(tok)[0] == "ok"


# --------------------------------------------------------------------------- generated cases

texts = st.text(max_size=12)
values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), texts, st.lists(texts, max_size=3))


def mostly(valid: Any, *odd: Any, free: bool = True) -> st.SearchStrategy[Any]:
    """The valid value in most draws, so a token usually gets past the earlier
    checks to the one aimed at; else absent, one of ``odd``, or (``free``) any value."""
    picked = st.sampled_from([_MISSING, *odd])
    other = st.one_of(picked, values) if free else picked
    return st.integers(0, 9).flatmap(lambda n: st.just(valid) if n < 7 else other)


claim_sets = st.fixed_dictionaries(
    {
        "sub": mostly("device-0001", "", 7, None),
        "iss": mostly(ISSUER, ISSUER + "/", [ISSUER]),
        "aud": mostly(AUDIENCE, [AUDIENCE, "x"], [AUDIENCE, 1], [], "", [1]),
        "jti": mostly("j-1", 5, None),
        # Only absence here: the time checks are the gateway's own (see the top).
        "exp": mostly(NOW + 3600, None, free=False),
        "product": texts,
    }
).map(lambda claims: {k: v for k, v in claims.items() if v is not _MISSING})
tampering = st.sampled_from(["none", "signature", "payload", "swap-key"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alg=st.sampled_from(sorted(PRIVATE)), claims=claim_sets, tamper=tampering)
def test_generated_tokens_agree(alg: str, claims: dict[str, Any], tamper: str) -> None:
    claims.setdefault("iat", NOW)
    tok = token(alg, claims)
    header, payload, signature = tok.split(".")
    if tamper == "signature":
        tok = f"{header}.{payload}.{signature[1:]}{signature[0]}"
    elif tamper == "payload":
        tok = f"{header}.{b64(json.dumps({**claims, 'product': 'other'}).encode())}.{signature}"
    elif tamper == "swap-key":
        # Same alg, another key of the set cannot be used: kid names the key.
        other = next(a for a in sorted(PRIVATE) if a != alg)
        tok = token(other, claims).rsplit(".", 1)[0] + "." + signature
    agree(tok)
