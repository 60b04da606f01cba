"""Device-token verification: every hostile token gets a 401 with the right reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import (
    _HEADER_CACHE_SIZE,
    FAILURE_REASONS,
    MAX_TOKEN_LENGTH,
    Authenticator,
    Device,
    KeySet,
    _segment,
    bearer_token,
)
from gateway.errors import ConfigError, InvalidToken
from gateway.keys import generate_key, public_jwk

NOW = 1_800_000_000  # a fixed instant (2027-01-15); the authenticator's clock starts here
ISS = "https://devices.example.com"
AUD = "firmware-gateway"
DAY = 86400
ALL_ALGS = ("EdDSA", "ES256", "ES384", "RS256", "PS256")


class Clock:
    """A settable clock, injected into the Authenticator."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Signer:
    kid: str
    alg: str
    private: Any  # a cryptography private key
    public_pem: bytes


@dataclass(frozen=True)
class Keys:
    dir: Path
    jwks: Path
    signers: Mapping[str, Signer]  # by alg


def _load_pem(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _public_pem(private: Any) -> bytes:
    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """EdDSA, ES256 and RS256 keys made by gateway.keys, plus ES384 and PS256 keys
    added to the same jwks.json by hand (generate_key does not offer those)."""
    out = tmp_path_factory.mktemp("keys")
    signers: dict[str, Signer] = {}
    for alg in ("EdDSA", "ES256", "RS256"):
        kid = generate_key(alg, out, kid=f"k-{alg.lower()}")
        private = _load_pem(out / f"{kid}.pem")
        signers[alg] = Signer(kid, alg, private, _public_pem(private))
    jwks_path = out / "jwks.json"
    document = json.loads(jwks_path.read_text())
    extra: list[tuple[str, Any]] = [
        ("ES384", ec.generate_private_key(ec.SECP384R1())),
        ("PS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ]
    for alg, private in extra:
        kid = f"k-{alg.lower()}"
        document["keys"].append(public_jwk(private.public_key(), kid=kid, alg=alg))
        signers[alg] = Signer(kid, alg, private, _public_pem(private))
    jwks_path.write_text(json.dumps(document))
    return Keys(out, jwks_path, signers)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def make_authn(keys: Keys, clock: Clock) -> Callable[..., Authenticator]:
    def make(**overrides: Any) -> Authenticator:
        options: dict[str, Any] = {
            "issuer": ISS,
            "audience": AUD,
            "algorithms": ALL_ALGS,
            "leeway": 60,
            "max_token_lifetime": 30 * DAY,
            "clock": clock,
        }
        options.update(overrides)
        return Authenticator(KeySet.from_file(keys.jwks), **options)

    return make


@pytest.fixture
def authn(make_authn: Callable[..., Authenticator]) -> Authenticator:
    return make_authn()


def claims(**overrides: Any) -> dict[str, Any]:
    """Good claims; pass NAME=None to drop one."""
    base: dict[str, Any] = {
        "sub": "device-0042",
        "iss": ISS,
        "aud": AUD,
        "iat": NOW,
        "exp": NOW + 3600,
        "jti": "jti-0001",
        "product": "acme-x1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(signer: Signer, payload: Mapping[str, Any], **header: Any) -> str:
    """A token really signed by ``signer`` (header kid defaults to the signer's).

    PyJWS rather than PyJWT, so that claims PyJWT would refuse to encode can be sent.
    """
    headers = {"typ": "JWT", "kid": signer.kid, **header}
    body = json.dumps(dict(payload)).encode()
    return jwt.api_jws.PyJWS().encode(body, signer.private, algorithm=signer.alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, e.g. unsigned or HMAC'd, which PyJWT refuses to make."""
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(payload).encode())
    return f"{h}.{p}.{b64(signature)}"


def refused(authn: Authenticator, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        authn.authenticate(token)
    error = info.value
    assert error.reason in FAILURE_REASONS
    # The detail goes to logs and to WWW-Authenticate: never the token or signature.
    signature = token.rsplit(".", 1)[-1]
    assert not token or token not in error.detail
    assert len(signature) < 8 or signature not in error.detail
    assert error.status == 401
    return error


def reason(authn: Authenticator, token: str) -> str:
    return refused(authn, token).reason


# --------------------------------------------------------------------------- good tokens


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_good_token_of_each_algorithm(authn: Authenticator, keys: Keys, alg: str) -> None:
    token = sign(keys.signers[alg], claims(groups=["beta"], meta={"hw": 3}))
    device = authn.authenticate(token)
    assert isinstance(device, Device)
    assert device.sub == "device-0042"
    assert device.exp == NOW + 3600
    assert device.jti == "jti-0001"
    assert device.claims["product"] == "acme-x1"
    assert device.claims["iss"] == ISS
    # Read-only all the way down: the Device is shared between requests.
    assert device.claims["groups"] == ("beta",)
    with pytest.raises(TypeError):
        device.claims["meta"]["hw"] = 4
    with pytest.raises(TypeError):
        device.claims["sub"] = "other"  # type: ignore[index]


def test_device_without_jti(authn: Authenticator, keys: Keys) -> None:
    device = authn.authenticate(sign(keys.signers["EdDSA"], claims(jti=None)))
    assert device.jti is None


def test_fractional_exp_is_rounded_down(authn: Authenticator, keys: Keys) -> None:
    device = authn.authenticate(sign(keys.signers["EdDSA"], claims(exp=NOW + 100.7)))
    assert device.exp == NOW + 100


# --------------------------------------------------------------------------- algorithm attacks


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(authn: Authenticator, keys: Keys, alg: str) -> None:
    token = forge({"alg": alg, "kid": keys.signers["EdDSA"].kid, "typ": "JWT"}, claims())
    assert token.endswith(".")
    assert reason(authn, token) == "bad_algorithm"


def test_alg_none_with_a_copied_signature_is_refused(authn: Authenticator, keys: Keys) -> None:
    good = sign(keys.signers["EdDSA"], claims())
    token = forge({"alg": "none", "kid": keys.signers["EdDSA"].kid}, claims())
    token += good.rsplit(".", 1)[1]
    assert reason(authn, token) == "bad_algorithm"


@pytest.mark.parametrize("header", [{}, {"alg": ""}, {"alg": None}, {"alg": 256}])
def test_missing_or_odd_alg_is_refused(
    authn: Authenticator, keys: Keys, header: dict[str, Any]
) -> None:
    token = forge({**header, "kid": keys.signers["EdDSA"].kid}, claims(), b"x" * 64)
    assert reason(authn, token) == "bad_algorithm"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_hs256_signed_with_the_public_key_is_refused(
    authn: Authenticator, keys: Keys, alg: str
) -> None:
    # The classic confusion attack (RFC 8725 section 2.1): the attacker knows the
    # public key and uses its PEM bytes as an HMAC secret.
    signer = keys.signers[alg]
    header = {"alg": "HS256", "kid": signer.kid, "typ": "JWT"}
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(claims()).encode())
    mac = hmac.new(signer.public_pem, f"{h}.{p}".encode(), hashlib.sha256).digest()
    token = f"{h}.{p}.{b64(mac)}"
    assert reason(authn, token) == "bad_algorithm"


def test_header_alg_es256_on_an_ed25519_key_is_refused(authn: Authenticator, keys: Keys) -> None:
    # Really ES256-signed (by the ES256 key) but claiming the Ed25519 key's kid.
    es = keys.signers["ES256"]
    token = sign(es, claims(), kid=keys.signers["EdDSA"].kid)
    assert reason(authn, token) == "bad_algorithm"


def test_header_alg_ps256_on_an_rs256_key_is_refused(authn: Authenticator, keys: Keys) -> None:
    rs = keys.signers["RS256"]
    token = jwt.encode(claims(), rs.private, algorithm="PS256", headers={"kid": rs.kid})
    assert reason(authn, token) == "bad_algorithm"


def test_algorithm_allow_list(make_authn: Callable[..., Authenticator], keys: Keys) -> None:
    authn = make_authn(algorithms=["EdDSA"])
    assert authn.authenticate(sign(keys.signers["EdDSA"], claims())).sub == "device-0042"
    # The ES256 key is in the JWKS, its token is well signed, but ES256 is not allowed.
    error = refused(authn, sign(keys.signers["ES256"], claims()))
    assert error.reason == "bad_algorithm"
    assert "ES256" in error.detail


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["EdDSA", "RS512"], []])
def test_unsupported_algorithms_are_a_config_error(
    make_authn: Callable[..., Authenticator], algorithms: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_authn(algorithms=algorithms)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("auth.algorithms: ")


# --------------------------------------------------------------------------- kid and crit


def test_unknown_kid(authn: Authenticator, keys: Keys) -> None:
    token = sign(keys.signers["EdDSA"], claims(), kid="no-such-key")
    assert reason(authn, token) == "unknown_kid"


@pytest.mark.parametrize("kid", [None, "", 7, ["k-eddsa"]])
def test_missing_or_odd_kid(authn: Authenticator, keys: Keys, kid: Any) -> None:
    header: dict[str, Any] = {"alg": "EdDSA"}
    if kid is not None:
        header["kid"] = kid
    assert reason(authn, forge(header, claims(), b"s" * 64)) == "unknown_kid"


def test_signed_by_a_key_outside_the_jwks_with_a_known_kid(
    authn: Authenticator, keys: Keys
) -> None:
    for alg, private in [
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ]:
        impostor = Signer(keys.signers[alg].kid, alg, private, b"")
        assert reason(authn, sign(impostor, claims())) == "bad_signature"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "exp"])
def test_crit_header_is_refused(authn: Authenticator, keys: Keys, crit: Any) -> None:
    signer = keys.signers["EdDSA"]
    token = jwt.api_jws.PyJWS().encode(
        json.dumps(claims()).encode(),
        signer.private,
        algorithm="EdDSA",
        headers={"kid": signer.kid, "crit": crit, "exp": NOW},
    )
    assert reason(authn, token) == "crit"


def test_duplicate_header_parameter_is_malformed(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    h = b64(b'{"alg":"EdDSA","kid":"k-eddsa","kid":"other"}')
    p = b64(json.dumps(claims()).encode())
    sig = signer.private.sign(f"{h}.{p}".encode())
    assert reason(authn, f"{h}.{p}.{b64(sig)}") == "malformed"


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_tampered_payload(authn: Authenticator, keys: Keys, alg: str) -> None:
    h, _, s = sign(keys.signers[alg], claims()).split(".")
    p = b64(json.dumps(claims(sub="device-9999")).encode())
    assert reason(authn, f"{h}.{p}.{s}") == "bad_signature"


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_tampered_signature(authn: Authenticator, keys: Keys, alg: str) -> None:
    h, p, s = sign(keys.signers[alg], claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[len(raw) // 2] ^= 0x01
    assert reason(authn, f"{h}.{p}.{b64(bytes(raw))}") == "bad_signature"
    assert reason(authn, f"{h}.{p}.") == "bad_signature"  # signature removed
    assert reason(authn, f"{h}.{p}.{b64(bytes(raw[:-1]))}") == "bad_signature"  # truncated


def test_payload_that_is_not_a_json_object(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    for payload in (b"[1,2]", b"not json", b'"text"'):
        token = jwt.api_jws.PyJWS().encode(
            payload, signer.private, algorithm="EdDSA", headers={"kid": signer.kid}
        )
        assert reason(authn, token) == "malformed"


# --------------------------------------------------------------------------- time claims


def test_expired(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    # Leeway 60 s: exp 59 s ago still passes; exp 60 s or more ago is expired.
    assert authn.authenticate(sign(signer, claims(iat=NOW - 3600, exp=NOW - 59)))
    assert reason(authn, sign(signer, claims(iat=NOW - 3600, exp=NOW - 60))) == "expired"
    assert reason(authn, sign(signer, claims(iat=NOW - 7200, exp=NOW - 3600))) == "expired"


def test_nbf_in_the_future(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    assert authn.authenticate(sign(signer, claims(nbf=NOW + 60)))
    assert reason(authn, sign(signer, claims(nbf=NOW + 61))) == "not_yet_valid"


def test_iat_in_the_future(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    assert authn.authenticate(sign(signer, claims(iat=NOW + 60)))
    assert reason(authn, sign(signer, claims(iat=NOW + 61))) == "not_yet_valid"


def test_leeway_zero(make_authn: Callable[..., Authenticator], keys: Keys) -> None:
    authn = make_authn(leeway=0)
    signer = keys.signers["EdDSA"]
    assert authn.authenticate(sign(signer, claims(exp=NOW + 1)))
    assert reason(authn, sign(signer, claims(exp=NOW))) == "expired"
    assert authn.authenticate(sign(signer, claims(nbf=NOW)))
    assert reason(authn, sign(signer, claims(nbf=NOW + 1))) == "not_yet_valid"
    assert reason(authn, sign(signer, claims(iat=NOW + 1))) == "not_yet_valid"


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["soon", True, [NOW]])
def test_time_claims_must_be_numbers(
    authn: Authenticator, keys: Keys, name: str, value: Any
) -> None:
    token = sign(keys.signers["EdDSA"], claims(**{name: value}))
    assert reason(authn, token) == "malformed"


def test_lifetime(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    # exp - iat: exactly the maximum passes, one second more does not.
    assert authn.authenticate(sign(signer, claims(exp=NOW + 30 * DAY)))
    assert reason(authn, sign(signer, claims(exp=NOW + 30 * DAY + 1))) == "lifetime"
    # Counted from iat even when most of it has passed.
    old = claims(iat=NOW - 20 * DAY, exp=NOW + 20 * DAY)
    assert reason(authn, sign(signer, old)) == "lifetime"
    # Without iat, counted from now.
    assert authn.authenticate(sign(signer, claims(iat=None, exp=NOW + 30 * DAY)))
    assert reason(authn, sign(signer, claims(iat=None, exp=NOW + 31 * DAY))) == "lifetime"


# --------------------------------------------------------------------------- other claims


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"sub": ""}, "missing_claim"),
        ({"sub": 42}, "missing_claim"),
        ({"iss": "https://evil.example.com"}, "bad_issuer"),
        ({"iss": ISS + "/"}, "bad_issuer"),
        ({"iss": None}, "bad_issuer"),
        ({"iss": [ISS]}, "bad_issuer"),
        ({"aud": "another-service"}, "bad_audience"),
        ({"aud": None}, "bad_audience"),
        ({"aud": []}, "bad_audience"),
        ({"aud": ["a", "b"]}, "bad_audience"),
        ({"aud": [AUD, 7]}, "bad_audience"),
        ({"aud": {"x": AUD}}, "bad_audience"),
        ({"jti": 7}, "malformed"),
    ],
)
def test_claims_refused(
    authn: Authenticator, keys: Keys, overrides: dict[str, Any], expected: str
) -> None:
    payload = claims()
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    assert reason(authn, sign(keys.signers["ES256"], payload)) == expected


def test_exp_null_is_missing(authn: Authenticator, keys: Keys) -> None:
    payload = claims()
    payload["exp"] = None
    assert reason(authn, sign(keys.signers["EdDSA"], payload)) == "missing_claim"


def test_aud_as_a_list(authn: Authenticator, keys: Keys) -> None:
    token = sign(keys.signers["EdDSA"], claims(aud=["other", AUD]))
    assert authn.authenticate(token).claims["aud"] == ("other", AUD)


# --------------------------------------------------------------------------- revocation


def test_revoked_sub_and_jti(make_authn: Callable[..., Authenticator], keys: Keys) -> None:
    authn = make_authn(revoked=frozenset({"device-0666", "jti-stolen"}))
    signer = keys.signers["EdDSA"]
    assert reason(authn, sign(signer, claims(sub="device-0666"))) == "revoked"
    assert reason(authn, sign(signer, claims(jti="jti-stolen"))) == "revoked"
    assert authn.authenticate(sign(signer, claims())).sub == "device-0042"
    assert authn.cache_info().currsize == 1  # refused tokens are not cached


def test_revocation_applies_to_cached_tokens(authn: Authenticator, keys: Keys) -> None:
    signer = keys.signers["EdDSA"]
    by_sub = sign(signer, claims(sub="device-0666", jti="a"))
    by_jti = sign(signer, claims(sub="device-0777", jti="jti-stolen"))
    authn.authenticate(by_sub)
    authn.authenticate(by_jti)
    assert authn.cache_info().currsize == 2

    authn.set_revoked(frozenset({"device-0666", "jti-stolen"}))
    assert reason(authn, by_sub) == "revoked"
    assert reason(authn, by_jti) == "revoked"
    assert authn.cache_info().hits == 2  # refused from the cache, no re-verification

    authn.set_revoked(frozenset())
    assert authn.authenticate(by_sub).sub == "device-0666"


def test_revoked_sub_is_not_revealed_without_a_valid_signature(
    make_authn: Callable[..., Authenticator], keys: Keys
) -> None:
    authn = make_authn(revoked=frozenset({"device-0666"}))
    h, _, s = sign(keys.signers["EdDSA"], claims()).split(".")
    p = b64(json.dumps(claims(sub="device-0666")).encode())
    assert reason(authn, f"{h}.{p}.{s}") == "bad_signature"


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        ".e30.",
        "!!!.###.$$$",
        "eyJ.eyJ.",
        " eyJhbGciOiJFZERTQSJ9.e30.AAAA",
        "eyJhbGciOiJFZERTQSJ9.e30.AAAA\n",
        "eyJhbGciOiJFZERTQSJ9=.e30.AAAA",
        "é.a.b",
        b64(b"not json") + ".e30.AAAA",
        b64(b"[1,2,3]") + ".e30.AAAA",
        b64(b'"text"') + ".e30.AAAA",
        b64(b"[" * 5000) + ".e30.",
        "A" + ".e30.AAAA",  # 1 base64 char cannot encode anything
    ],
)
def test_garbage_is_malformed(authn: Authenticator, token: str) -> None:
    assert reason(authn, token) == "malformed"


def test_over_long_token_is_malformed(authn: Authenticator, keys: Keys) -> None:
    token = sign(keys.signers["EdDSA"], claims(padding="x" * MAX_TOKEN_LENGTH))
    assert len(token) > MAX_TOKEN_LENGTH
    error = refused(authn, token)
    assert error.reason == "malformed"
    assert str(MAX_TOKEN_LENGTH) in error.detail
    # Just under the limit is fine.
    fits = sign(keys.signers["EdDSA"], claims(padding="x" * 5000))
    assert len(fits) <= MAX_TOKEN_LENGTH
    assert authn.authenticate(fits).sub == "device-0042"


def test_every_single_character_mutation_is_an_invalid_token(
    authn: Authenticator, keys: Keys
) -> None:
    # No PyJWT (or other) exception may escape, whatever byte an attacker flips.
    good = sign(keys.signers["ES256"], claims())
    seen: set[str] = set()
    for i, char in enumerate(good):
        for replacement in {"A", "_", ".", "!"} - {char}:
            seen.add(reason(authn, good[:i] + replacement + good[i + 1 :]))
    assert seen <= set(FAILURE_REASONS)
    assert {"malformed", "bad_signature"} <= seen


# --------------------------------------------------------------------------- cache


def test_second_authenticate_hits_the_cache(authn: Authenticator, keys: Keys) -> None:
    token = sign(keys.signers["RS256"], claims())
    first = authn.authenticate(token)
    info = authn.cache_info()
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (0, 1, 1, 100_000)
    second = authn.authenticate(token)
    assert second is first
    assert authn.cache_info().hits == 1
    assert authn.cached_tokens == 1


def test_cache_entry_expires_at_exp(authn: Authenticator, keys: Keys, clock: Clock) -> None:
    token = sign(keys.signers["EdDSA"], claims(exp=NOW + 100))
    authn.authenticate(token)
    clock.now = NOW + 99.9
    authn.authenticate(token)
    assert authn.cache_info()[:2] == (1, 1)

    clock.now = NOW + 100  # at exp the entry is gone...
    assert authn.cached_tokens == 0
    # ...and the token is verified again; still inside the leeway, so accepted,
    # but not cached (its exp has passed).
    assert authn.authenticate(token).sub == "device-0042"
    assert authn.cache_info()[:2] == (1, 2)
    assert authn.cached_tokens == 0

    clock.now = NOW + 160
    assert reason(authn, token) == "expired"
    assert authn.cache_info()[:2] == (1, 3)


def test_failures_are_not_cached(authn: Authenticator, keys: Keys) -> None:
    token = sign(keys.signers["EdDSA"], claims(iss="https://evil.example.com"))
    for _ in range(3):
        assert reason(authn, token) == "bad_issuer"
    info = authn.cache_info()
    assert (info.hits, info.misses, info.currsize) == (0, 3, 0)


def test_cache_is_bounded(make_authn: Callable[..., Authenticator], keys: Keys) -> None:
    authn = make_authn(cache_size=2)
    tokens = [sign(keys.signers["EdDSA"], claims(jti=f"j{i}")) for i in range(3)]
    for token in tokens:
        authn.authenticate(token)
    assert authn.cached_tokens == 2
    authn.authenticate(tokens[0])  # evicted (least recently used): verified again
    assert authn.cache_info().hits == 0


def test_cache_keeps_the_recently_used(
    make_authn: Callable[..., Authenticator], keys: Keys
) -> None:
    authn = make_authn(cache_size=2)
    first, second, third = (sign(keys.signers["EdDSA"], claims(jti=f"j{i}")) for i in range(3))
    authn.authenticate(first)
    authn.authenticate(second)
    authn.authenticate(first)  # a hit: now the most recently used
    authn.authenticate(third)  # full: the least recently used (second) leaves
    assert authn.cache_info()[:2] == (1, 3)
    authn.authenticate(first)
    assert authn.cache_info()[:2] == (2, 3)
    authn.authenticate(second)
    assert authn.cache_info()[:2] == (2, 4)


def test_parsed_headers_are_remembered_within_a_bound(authn: Authenticator, keys: Keys) -> None:
    # Each distinct header is parsed once; a client sending many cannot grow the memory.
    signer = keys.signers["ES256"]
    for i in range(3 * _HEADER_CACHE_SIZE):
        assert authn.authenticate(sign(signer, claims(), x=i)).sub == "device-0042"
        assert len(authn._headers) <= _HEADER_CACHE_SIZE
    # A remembered header does not outlive its key.
    token = sign(signer, claims(jti="late"))
    authn.authenticate(token)
    document = json.loads(keys.jwks.read_text())
    document["keys"] = [k for k in document["keys"] if k["kid"] != signer.kid]
    authn.set_keys(KeySet(document))
    assert reason(authn, sign(signer, claims(jti="later"))) == "unknown_kid"


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _segment_by_the_rfc(text: str) -> bytes | None:
    # RFC 7515 section 2 / RFC 4648 section 5, the slow way: decode with the
    # padding put back, and accept only if encoding gives the same text.
    if len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text else None


@pytest.mark.parametrize("size", range(0, 13))
def test_segments_decode_only_in_their_canonical_spelling(size: int) -> None:
    data = hashlib.sha256(bytes([size])).digest()[:size]
    text = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert _segment(text) == data
    spellings = [text[:-1] + last for last in _ALPHABET] if text else [""]
    for spelling in [*spellings, text + "A"]:
        assert _segment(spelling) == _segment_by_the_rfc(spelling), spelling


def test_cache_can_be_disabled(make_authn: Callable[..., Authenticator], keys: Keys) -> None:
    authn = make_authn(cache_size=0)
    token = sign(keys.signers["EdDSA"], claims())
    authn.authenticate(token)
    authn.authenticate(token)
    assert authn.cache_info()[:4] == (0, 2, 0, 0)


def test_set_keys_drops_the_cache_only_when_keys_change(authn: Authenticator, keys: Keys) -> None:
    token = sign(keys.signers["EdDSA"], claims())
    authn.authenticate(token)
    authn.set_keys(KeySet.from_file(keys.jwks))  # same keys: cache kept
    assert authn.cached_tokens == 1

    document = json.loads(keys.jwks.read_text())
    document["keys"] = [k for k in document["keys"] if k["kid"] != keys.signers["EdDSA"].kid]
    authn.set_keys(KeySet(document))
    assert authn.cached_tokens == 0
    assert reason(authn, token) == "unknown_kid"


# --------------------------------------------------------------------------- bearer_token


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER abc.def.ghi", "abc.def.ghi"),
        ("Bearer   abc.def.ghi ", "abc.def.ghi"),
        ("Bearer mF_9.B5f-4.1JqM", "mF_9.B5f-4.1JqM"),  # RFC 6750 section 2.1 example
        ("Bearer abc==", "abc=="),
    ],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


def test_bearer_token_missing() -> None:
    with pytest.raises(InvalidToken) as info:
        bearer_token(None)
    assert info.value.reason == "missing"
    # RFC 6750 section 3.1: no error code for a request without credentials.
    assert dict(info.value.extra_headers())[b"www-authenticate"] == b'Bearer realm="gateway"'


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearerabc.def.ghi",
        "Bearer abc def",
        "Bearer abc,def",
        'Bearer "abc"',
        "Bearer =abc",
    ],
)
def test_bearer_token_malformed(header: str) -> None:
    with pytest.raises(InvalidToken) as info:
        bearer_token(header)
    assert info.value.reason == "malformed"
    assert b'error="invalid_token"' in dict(info.value.extra_headers())[b"www-authenticate"]


# --------------------------------------------------------------------------- KeySet


def config_problems(document: Any = None, *, text: str | None = None, tmp: Path) -> list[str]:
    path = tmp / "jwks.json"
    path.write_text(text if text is not None else json.dumps(document))
    with pytest.raises(ConfigError) as info:
        KeySet.from_file(path)
    problems = info.value.problems
    for line in problems:
        assert line.startswith("auth.jwks: ")
        assert "\n" not in line
    return problems


def test_keyset_loads_all_supported_types(keys: Keys) -> None:
    keyset = KeySet.from_file(keys.jwks)
    assert len(keyset) == 5
    for alg, signer in keys.signers.items():
        entry = keyset.get(signer.kid)
        assert entry is not None
        assert entry.alg == alg
    assert keyset.get("nope") is None
    assert "k-eddsa" in keyset
    assert keyset.kids == {s.kid for s in keys.signers.values()}


def test_keyset_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        KeySet.from_file(tmp_path / "absent.json")
    assert info.value.problems == [
        f"auth.jwks: cannot read {tmp_path / 'absent.json'}: No such file or directory"
    ]


def test_keyset_invalid_json(tmp_path: Path) -> None:
    [line] = config_problems(text='{"keys": [', tmp=tmp_path)
    assert "is not valid JSON" in line


@pytest.mark.parametrize("document", [[], {"keys": {}}, {}, "keys"])
def test_keyset_not_a_jwks(tmp_path: Path, document: Any) -> None:
    [line] = config_problems(document, tmp=tmp_path)
    assert "not a JWKS" in line


def test_keyset_weak_rsa_key(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    [line] = config_problems({"keys": [public_jwk(weak, kid="weak", alg="RS256")]}, tmp=tmp_path)
    assert line == (
        "auth.jwks: keys[0] (kid 'weak'): RSA key is 1024 bits; at least 2048 are required "
        "(RFC 7518 section 3.3)"
    )


@pytest.mark.parametrize(
    "document",
    [
        {"keys": []},
        {"keys": [{"kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB"}]},
        {"keys": [{"kty": "OKP", "key_ops": ["encrypt"], "kid": "e", "crv": "Ed25519"}]},
    ],
)
def test_keyset_no_usable_keys(tmp_path: Path, document: Any) -> None:
    assert config_problems(document, tmp=tmp_path) == ["auth.jwks: no usable signing keys"]


def test_keyset_skips_encryption_keys_next_to_signing_keys(keys: Keys) -> None:
    document = json.loads(keys.jwks.read_text())
    document["keys"].append({"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB"})
    keyset = KeySet(document)
    assert "enc-1" not in keyset
    assert len(keyset) == 5


def test_keyset_reports_every_bad_key(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    good = public_jwk(ed, kid="good", alg="EdDSA")
    no_kid = {k: v for k, v in good.items() if k != "kid"}
    wrong_alg = public_jwk(p256, kid="wrong-alg", alg="ES384")
    off_curve = {**public_jwk(p256, kid="off-curve", alg="ES256"), "y": good["x"]}
    private = {**good, "kid": "private", "d": good["x"]}
    problems = config_problems(
        {
            "keys": [
                good,
                no_kid,
                {**good},  # duplicate kid
                wrong_alg,
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {"kty": "OKP", "crv": "X25519", "kid": "x", "x": good["x"]},
                off_curve,
                private,
                "not an object",
                {**good, "kid": "short", "x": "AAAA"},
            ]
        },
        tmp=tmp_path,
    )
    assert len(problems) == 9
    text = "\n".join(problems)
    assert 'keys[1]: has no "kid"' in text
    assert "keys[2] (kid 'good'): duplicate kid" in text
    assert "'ES384' does not match the key (expected 'ES256')" in text
    assert "key type 'oct' is not supported" in text
    assert "OKP curve 'X25519' is not supported" in text
    assert "keys[6] (kid 'off-curve'): " in text
    assert "private key material" in text
    assert "keys[8]: not a JSON object" in text
    assert "32-byte" in text


def test_keyset_equality(keys: Keys) -> None:
    assert KeySet.from_file(keys.jwks) == KeySet.from_file(keys.jwks)
    document = json.loads(keys.jwks.read_text())
    document["keys"] = document["keys"][:2]
    assert KeySet(document) != KeySet.from_file(keys.jwks)
