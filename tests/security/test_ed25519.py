"""EdDSA tokens are verified by libsodium (PyNaCl), not OpenSSL: same answers
for every honest or tampered signature, and stricter where OpenSSL can be fooled.

RFC 8032 section 5.1.7 leaves the verifier a choice the two libraries make
differently: OpenSSL checks ``[S]B = R + [k]A`` as written (cofactorless),
which a public key of small order turns into a universal forgery; libsodium
refuses such keys and such R. The gateway also refuses a small-order key
when the JWKS is loaded, so an operator learns of it at once.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import Authenticator, KeySet
from gateway.errors import ConfigError, InvalidToken
from gateway.keys import public_jwk

# RFC 8032 section 5.1: the group order L, and the encodings of the neutral
# element (y = 1) and of the base point B (y = 4/5).
L = 2**252 + 27742317777372353535851937790883648493
IDENTITY = bytes([1]) + bytes(31)
BASE_POINT = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")
# A point of order 2 (y = -1) and one of order 4 (x = sqrt(-1), y = 0), also small.
ORDER_2 = bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
ORDER_4 = bytes(32)

PRIVATE = Ed25519PrivateKey.generate()
KEYS = KeySet({"keys": [public_jwk(PRIVATE.public_key(), kid="k", alg="EdDSA")]})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def openssl_accepts(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def ours(message: bytes, signature: bytes) -> bool:
    entry = KEYS.get("k")
    assert entry is not None and entry.alg == "EdDSA"
    return entry.verify(message, signature)


@settings(max_examples=300, deadline=None)
@given(
    message=st.binary(max_size=600),
    flip=st.one_of(st.none(), st.integers(0, 64 * 8 - 1)),
    cut=st.integers(0, 3),
)
def test_libsodium_and_openssl_agree_on_honest_and_tampered_signatures(
    message: bytes, flip: int | None, cut: int
) -> None:
    signature = bytearray(PRIVATE.sign(message))
    if flip is not None:
        signature[flip // 8] ^= 1 << (flip % 8)
    signature = signature[: len(signature) - cut]
    public = PRIVATE.public_key().public_bytes_raw()
    expected = len(signature) == 64 and openssl_accepts(public, message, bytes(signature))
    assert ours(message, bytes(signature)) is expected
    if flip is None and cut == 0:
        assert expected  # the honest case is in the sample


def test_a_short_signature_does_not_borrow_bytes_of_the_message() -> None:
    """libsodium reads signature || message; 48 bytes of signature followed by
    a message that starts with the other 16 must still be refused."""
    message = b"firmware/acme-x1/1.4.2/rootfs.img"
    signature = PRIVATE.sign(message)
    assert ours(message, signature)
    assert not ours(signature[48:] + message, signature[:48])


def test_a_non_canonical_s_is_refused() -> None:
    message = b"firmware"
    signature = PRIVATE.sign(message)
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + L).to_bytes(32, "little")  # the same point, S >= L
    assert ours(message, signature)
    assert not ours(message, malleated)


def test_openssl_would_accept_a_forgery_for_a_small_order_key() -> None:
    """Why the JWKS refuses such keys: with A the neutral element, R = B and
    S = 1 satisfy the cofactorless equation for every message."""
    forged = BASE_POINT + (1).to_bytes(32, "little")
    assert openssl_accepts(IDENTITY, b"any firmware at all", forged)
    assert openssl_accepts(IDENTITY, b"another one", forged)


@pytest.mark.parametrize("point", [IDENTITY, ORDER_2, ORDER_4], ids=["neutral", "order2", "order4"])
def test_a_jwks_key_of_small_order_is_refused_with_one_line(point: bytes) -> None:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(point), "kid": "weak", "alg": "EdDSA"}
    with pytest.raises(ConfigError) as raised:
        KeySet({"keys": [jwk]})
    assert raised.value.problems == [
        "auth.jwks: keys[0] (kid 'weak'): "
        '"x" is not a valid Ed25519 public key (a point of small order?)'
    ]


def test_a_token_with_a_short_ed25519_signature_is_bad_signature() -> None:
    now = int(time.time())
    header = b64(json.dumps({"alg": "EdDSA", "kid": "k"}).encode())
    claims = {"sub": "d", "iss": "i", "aud": "a", "iat": now, "exp": now + 60}
    payload = b64(json.dumps(claims).encode())
    signature = PRIVATE.sign(f"{header}.{payload}".encode())
    auth = Authenticator(
        KEYS,
        issuer="i",
        audience="a",
        algorithms=["EdDSA"],
        leeway=60,
        max_token_lifetime=3600,
        cache_size=0,
    )
    assert auth.authenticate(f"{header}.{payload}.{b64(signature)}").sub == "d"
    with pytest.raises(InvalidToken) as raised:
        auth.authenticate(f"{header}.{payload}.{b64(signature[:48])}")
    assert raised.value.reason == "bad_signature"
