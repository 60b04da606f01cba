"""Operator key tooling: generated keys and issued tokens work with the gateway."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import Authenticator, KeySet
from gateway.errors import InvalidToken
from gateway.keys import generate_key, issue_token, jwk_thumbprint, parse_claim, public_jwk

ISS = "https://devices.example.com"
AUD = "firmware-gateway"
NOW = 1_800_000_000


def jwks(directory: Path) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = json.loads((directory / "jwks.json").read_text())["keys"]
    return keys


def authenticator(directory: Path, now: float = NOW) -> Authenticator:
    return Authenticator(
        KeySet.from_file(directory / "jwks.json"),
        issuer=ISS,
        audience=AUD,
        algorithms=["EdDSA", "ES256", "RS256"],
        leeway=60,
        max_token_lifetime=30 * 86400,
        clock=lambda: now,
    )


def test_generate_two_keys_into_one_directory(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "fleet"  # created, parents too
    first = generate_key("EdDSA", out)
    second = generate_key("ES256", out)
    assert first != second

    published = jwks(out)
    assert [k["kid"] for k in published] == [first, second]
    ed, p256 = published
    assert {k: ed[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert {k: p256[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
    }
    assert {"x", "y"} <= p256.keys()
    # Only public halves are published.
    assert all("d" not in k for k in published)

    for kid in (first, second):
        pem = out / f"{kid}.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert stat.S_IMODE((out / "jwks.json").stat().st_mode) == 0o644
    # No temporary files left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["jwks.json", f"{first}.pem", f"{second}.pem"]
    )
    # The gateway loads what the tool wrote.
    assert KeySet.from_file(out / "jwks.json").kids == {first, second}


def test_default_kid_is_the_truncated_thumbprint(tmp_path: Path) -> None:
    kid = generate_key("EdDSA", tmp_path)
    [jwk] = jwks(tmp_path)
    assert len(kid) == 16
    assert kid == jwk_thumbprint(jwk)[:16]


def test_thumbprint_matches_rfc_7638_example() -> None:
    # RFC 7638 section 3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGj"
        "QR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
        "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rs256_key(tmp_path: Path) -> None:
    kid = generate_key("RS256", tmp_path, kid="rsa-1")
    assert kid == "rsa-1"
    [jwk] = jwks(tmp_path)
    assert (jwk["kty"], jwk["alg"], jwk["e"]) == ("RSA", "RS256", "AQAB")
    key = serialization.load_pem_private_key((tmp_path / "rsa-1.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072


def test_refuses_to_overwrite_a_private_key(tmp_path: Path) -> None:
    generate_key("EdDSA", tmp_path, kid="k1")
    before_pem = (tmp_path / "k1.pem").read_bytes()
    before_jwks = (tmp_path / "jwks.json").read_bytes()
    with pytest.raises(ValueError, match=r"k1\.pem already exists; refusing to overwrite"):
        generate_key("ES256", tmp_path, kid="k1")
    assert (tmp_path / "k1.pem").read_bytes() == before_pem
    assert (tmp_path / "jwks.json").read_bytes() == before_jwks


def test_same_kid_replaces_the_published_key(tmp_path: Path) -> None:
    generate_key("EdDSA", tmp_path, kid="k1")
    generate_key("EdDSA", tmp_path, kid="k2")
    (tmp_path / "k1.pem").unlink()  # the operator retires the old private key
    generate_key("ES256", tmp_path, kid="k1")
    assert [(k["kid"], k["alg"]) for k in jwks(tmp_path)] == [("k2", "EdDSA"), ("k1", "ES256")]


@pytest.mark.parametrize("kid", ["../evil", "a/b", ".hidden", "", "x" * 129, "k 1", "é"])
def test_unsafe_kid_is_refused(tmp_path: Path, kid: str) -> None:
    with pytest.raises(ValueError, match="not usable as a file name"):
        generate_key("EdDSA", tmp_path / "keys", kid=kid)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("alg", ["HS256", "none", "ES384", "eddsa"])
def test_unsupported_algorithm(tmp_path: Path, alg: str) -> None:
    with pytest.raises(ValueError, match="unsupported algorithm"):
        generate_key(alg, tmp_path)


def test_broken_jwks_is_not_clobbered(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"jwks\.json: not valid JSON"):
        generate_key("EdDSA", tmp_path, kid="k1")
    assert (tmp_path / "jwks.json").read_text() == "{not json"
    assert not (tmp_path / "k1.pem").exists()


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_issue_token_round_trips_through_the_authenticator(tmp_path: Path, alg: str) -> None:
    kid = generate_key(alg, tmp_path)
    token = issue_token(
        tmp_path / f"{kid}.pem",
        kid,
        "device-0042",
        ttl=3600,
        audience=AUD,
        issuer=ISS,
        claims={"product": "acme-x1", "channels": ["stable", "beta"]},
        now=NOW,
    )
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": kid, "typ": "JWT"}

    device = authenticator(tmp_path).authenticate(token)
    assert device.sub == "device-0042"
    assert device.exp == NOW + 3600
    assert device.claims["iat"] == NOW
    assert device.claims["iss"] == ISS
    assert device.claims["aud"] == AUD
    assert device.claims["product"] == "acme-x1"
    assert device.claims["channels"] == ("stable", "beta")
    assert isinstance(device.jti, str)
    assert len(device.jti) >= 16


def test_issued_tokens_have_distinct_jti(tmp_path: Path) -> None:
    kid = generate_key("EdDSA", tmp_path)
    pem = tmp_path / f"{kid}.pem"
    tokens = [issue_token(pem, kid, "d", audience=AUD, issuer=ISS, now=NOW) for _ in range(2)]
    authn = authenticator(tmp_path)
    assert authn.authenticate(tokens[0]).jti != authn.authenticate(tokens[1]).jti


def test_issue_token_with_a_chosen_jti_can_be_revoked(tmp_path: Path) -> None:
    kid = generate_key("ES256", tmp_path)
    token = issue_token(
        tmp_path / f"{kid}.pem", kid, "d", audience=AUD, issuer=ISS, claims={"jti": "t-1"}, now=NOW
    )
    authn = authenticator(tmp_path)
    assert authn.authenticate(token).jti == "t-1"
    authn.set_revoked(frozenset({"t-1"}))
    with pytest.raises(InvalidToken) as info:
        authn.authenticate(token)
    assert info.value.reason == "revoked"


def test_issue_token_defaults_to_the_current_time(tmp_path: Path) -> None:
    kid = generate_key("EdDSA", tmp_path)
    token = issue_token(tmp_path / f"{kid}.pem", kid, "d", ttl=60, audience=AUD, issuer=ISS)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60
    assert "aud" in claims
    # Without the expected issuer/audience the gateway refuses it.
    bare = issue_token(tmp_path / f"{kid}.pem", kid, "d", now=NOW)
    assert set(jwt.decode(bare, options={"verify_signature": False})) == {
        "sub",
        "iat",
        "exp",
        "jti",
    }
    with pytest.raises(InvalidToken) as info:
        authenticator(tmp_path).authenticate(bare)
    assert info.value.reason == "bad_issuer"


@pytest.mark.parametrize("name", ["sub", "iat", "exp", "iss", "aud"])
def test_issue_token_refuses_claims_that_have_their_own_option(tmp_path: Path, name: str) -> None:
    kid = generate_key("EdDSA", tmp_path)
    with pytest.raises(ValueError, match=f"claim '{name}' is set by its own option"):
        issue_token(tmp_path / f"{kid}.pem", kid, "d", audience=AUD, issuer=ISS, claims={name: "x"})


def test_issue_token_bad_inputs(tmp_path: Path) -> None:
    kid = generate_key("EdDSA", tmp_path)
    pem = tmp_path / f"{kid}.pem"
    with pytest.raises(ValueError, match="cannot read"):
        issue_token(tmp_path / "absent.pem", kid, "d")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        issue_token(tmp_path / "jwks.json", kid, "d")
    with pytest.raises(ValueError, match="ttl must be a positive"):
        issue_token(pem, kid, "d", ttl=0)
    with pytest.raises(ValueError, match="sub must not be empty"):
        issue_token(pem, kid, "")
    with pytest.raises(ValueError, match="JSON values"):
        issue_token(pem, kid, "d", claims={"when": object()})
    weak = tmp_path / "weak.pem"
    weak.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="1024 bits"):
        issue_token(weak, "weak", "d")


def test_public_jwk_of_other_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    jwk = public_jwk(p384, kid="p", alg="ES384")
    assert jwk["crv"] == "P-384"
    assert len(jwk["x"]) == len(jwk["y"]) == 64  # 48 bytes, full size even with leading zeros
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    assert len(public_jwk(ed, kid="e", alg="EdDSA")["x"]) == 43


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("product=acme-x1", ("product", "acme-x1")),
        ("n=3", ("n", 3)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("beta=true", ("beta", True)),
        ("nothing=null", ("nothing", None)),
        ('groups=["a","b"]', ("groups", ["a", "b"])),
        ('hw={"rev":2}', ("hw", {"rev": 2})),
        ('version="1.4"', ("version", "1.4")),
        ("version=1.4.2", ("version", "1.4.2")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
        ("nan=NaN", ("nan", "NaN")),
        ("inf=Infinity", ("inf", "Infinity")),
        ("text=[not json", ("text", "[not json")),
    ],
)
def test_parse_claim(text: str, expected: tuple[str, Any]) -> None:
    assert parse_claim(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=value", " =x", ""])
def test_parse_claim_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not NAME=VALUE"):
        parse_claim(text)


def test_rsa_key_size_can_be_chosen_but_not_below_2048(tmp_path: Path) -> None:
    generate_key("RS256", tmp_path, "small", rsa_bits=2048)
    key = serialization.load_pem_private_key((tmp_path / "small.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    generate_key("RS256", tmp_path, "default")
    key = serialization.load_pem_private_key((tmp_path / "default.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    with pytest.raises(ValueError, match="at least 2048 bits"):
        generate_key("RS256", tmp_path, "weak", rsa_bits=1024)
    assert not (tmp_path / "weak.pem").exists()
