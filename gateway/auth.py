"""Device authentication: verify a bearer JWT against the fleet's JWKS.

Usage::

    keys = KeySet.from_file("config/keys/jwks.json")        # ConfigError if unusable
    authn = Authenticator(
        keys,
        issuer="https://devices.example.com",
        audience="firmware-gateway",
        algorithms=["EdDSA", "ES256"],
        leeway=60,
        max_token_lifetime=30 * 86400,
    )
    device = authn.authenticate(bearer_token(authorization_header_value))
    device.sub, device.claims["product"]

Every refusal raises :class:`gateway.errors.InvalidToken` whose ``reason`` is one
of :data:`FAILURE_REASONS` (the ``gateway_auth_failures_total{reason}`` label) and
whose ``detail`` never contains the token or its signature. No PyJWT exception
leaves this module.

Design notes (RFC 8725, "JWT Best Current Practices"):

* The algorithm used to verify is a property of the *key* (its ``kty``/``crv``
  and optional ``alg``), fixed when the JWKS is loaded. The token header's
  ``alg`` must equal it; it is never used to choose how to verify (RFC 8725
  section 2.1 / 3.1: this is what defeats "alg: none" and HS256-signed-with-the-
  public-key confusion).
* Keys come only from the configured JWKS. Header parameters that point at
  keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are ignored (RFC 8725 section 3.10).
* Verified tokens are cached until their ``exp``; revocation is re-checked on
  every cache hit.

Why not ``jwt.decode``: a fleet of new devices makes every request a cache
miss, and there PyJWT's decode spent about 35 us of its own per token on top
of the signature (a per-character alphabet check of each segment, option
merging, a second header parse). That is half again the cost of an ES256
verify. So the compact form is checked once by a regex, the header by
:func:`_json_object`, the signature by PyJWT's own algorithm object for the
key's alg (``jwt.algorithms``: hashing, padding and the JWS signature
encodings stay PyJWT's; Ed25519 by libsodium, see :func:`_ed25519_verifier`),
and the claims here, in the same order and with the
same answers as ``jwt.decode``; ``tests/security/test_jwt_differential.py``
holds the two together on valid, tampered and fuzzed tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import Algorithm, get_default_algorithms
from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_sign_open
from nacl.exceptions import BadSignatureError

from gateway.errors import ConfigError, InvalidToken
from gateway.memo import Memo

__all__ = [
    "FAILURE_REASONS",
    "MAX_TOKEN_LENGTH",
    "MIN_RSA_BITS",
    "SUPPORTED_ALGORITHMS",
    "Authenticator",
    "CacheInfo",
    "Device",
    "KeyEntry",
    "KeySet",
    "VerifyingKey",
    "bearer_token",
]

#: Every ``InvalidToken.reason`` this module raises (metric label values).
FAILURE_REASONS = (
    "missing",
    "malformed",
    "bad_algorithm",
    "unknown_kid",
    "crit",
    "bad_signature",
    "missing_claim",
    "expired",
    "not_yet_valid",
    "bad_issuer",
    "bad_audience",
    "lifetime",
    "revoked",
)

#: JWS algorithms a key in the JWKS may be bound to (RFC 7518 section 3.1, RFC 8037).
#: Symmetric (HS*) and "none" are deliberately absent.
SUPPORTED_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES384", "RS256", "PS256"})

#: Longer tokens are refused before any parsing (a device token is a few hundred
#: bytes; this bounds the work an unauthenticated client can ask for).
MAX_TOKEN_LENGTH = 8192

#: RFC 7518 section 3.3 / 3.5: RSA keys of 2048 bits or larger MUST be used.
MIN_RSA_BITS = 2048

VerifyingKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# RFC 7515 section 7.1 compact serialization: three base64url segments without
# padding (section 2). The payload and signature may be empty ("alg": "none"
# tokens have an empty signature; we want to refuse those as bad_algorithm, not
# as malformed, so the metric tells an attack from line noise).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")

# JWK "crv" -> (curve, JWS alg, coordinate size in bytes); RFC 7518 section 6.2.1.
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
}
_RSA_ALGORITHMS = frozenset({"RS256", "PS256"})

# PyJWT's implementation of each JWS algorithm we allow (RFC 7518 section 3):
# it owns the signature encodings, e.g. ECDSA's raw r||s (section 3.4).
_JWS_ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType(
    {name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS}
)


class KeyEntry(NamedTuple):
    """One JWKS key as the verifier uses it."""

    key: VerifyingKey
    alg: str  # the one JWS alg this key verifies
    verify: Callable[[bytes, bytes], bool]  # (JWS signing input, signature) -> valid


def _ed25519_verifier(public: bytes) -> Callable[[bytes, bytes], bool]:
    """EdDSA (RFC 8037 section 3.1: the JWS signature is the 64-byte Ed25519
    signature of the signing input) checked by libsodium; ``public`` is the
    32-byte key :func:`_parse_jwk` accepted.

    Why not OpenSSL (cryptography, which PyJWT uses): one verification costs
    107 us there and 54 us in libsodium on the benchmark machine, and it is all
    of a new device's first request that the gateway cannot cache. libsodium
    is also the stricter verifier: it refuses a non-canonical S, and an R or
    public key of small order, where a cofactorless check could be fooled.
    """

    def verify(message: bytes, signature: bytes) -> bool:
        # libsodium's combined form is signature || message, so the length is
        # checked here: a short signature must not borrow bytes of the message.
        if len(signature) != 64:
            return False
        try:
            crypto_sign_open(signature + message, public)
        except BadSignatureError:
            return False
        return True

    return verify


def _verifier(key: VerifyingKey, alg: str) -> Callable[[bytes, bytes], bool]:
    if isinstance(key, Ed25519PublicKey):
        return _ed25519_verifier(key.public_bytes_raw())
    algorithm = _JWS_ALGORITHMS[alg]

    def verify(message: bytes, signature: bytes) -> bool:
        return bool(algorithm.verify(message, key, signature))

    return verify


@dataclass(frozen=True, slots=True)
class Device:
    """An authenticated device: what the rest of the pipeline may rely on.

    ``claims`` is the whole verified payload, read-only all the way down (JSON
    objects become read-only mappings, arrays become tuples) because one
    ``Device`` is shared by every request that presents the same token.
    ``exp`` is the token's expiry (seconds since the epoch, rounded down);
    ``jti`` is the token id when the token has one.
    """

    sub: str
    claims: Mapping[str, Any]
    exp: int
    jti: str | None


class CacheInfo(NamedTuple):
    """Verified-token cache statistics, as :func:`functools.lru_cache` reports them."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


# --------------------------------------------------------------------------- keys


def _b64url_decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise ValueError(f"{what} is not a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64url") from exc


def _parse_jwk(jwk: Mapping[str, Any]) -> tuple[VerifyingKey, str]:
    """Turn one public JWK into (key object, the one JWS alg it verifies).

    Raises ValueError with a short reason for anything we will not use.
    """
    # A private JWK (RFC 7518 section 6.2.2 / 6.3.2, RFC 8037 section 2 all use
    # "d") has no business on an edge server that only verifies.
    if "d" in jwk:
        raise ValueError('contains private key material ("d"); publish only the public key')
    kty = jwk.get("kty")
    declared = jwk.get("alg")
    if declared is not None and not isinstance(declared, str):
        raise ValueError('"alg" is not a string')

    key: VerifyingKey
    if kty == "OKP":
        # RFC 8037 section 2: Ed25519 public key is "x", 32 bytes.
        if jwk.get("crv") != "Ed25519":
            raise ValueError(f"OKP curve {jwk.get('crv')!r} is not supported (only Ed25519)")
        x = _b64url_decode(jwk.get("x"), '"x"')
        if len(x) != 32:
            raise ValueError('"x" is not a 32-byte Ed25519 public key')
        # A point off the curve, not canonically encoded, or of small order is no
        # one's public key, and for a small-order one signatures can be forged.
        if not crypto_core_ed25519_is_valid_point(x):
            raise ValueError('"x" is not a valid Ed25519 public key (a point of small order?)')
        key, alg = Ed25519PublicKey.from_public_bytes(x), "EdDSA"
    elif kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _EC_CURVES:
            raise ValueError(f"EC curve {crv!r} is not supported (P-256, P-384)")
        curve, alg, size = _EC_CURVES[crv]
        x = _b64url_decode(jwk.get("x"), '"x"')
        y = _b64url_decode(jwk.get("y"), '"y"')
        # RFC 7518 section 6.2.1.2/6.2.1.3: coordinates MUST be the full size.
        if len(x) != size or len(y) != size:
            raise ValueError(f'"x"/"y" must be {size} bytes each for {crv}')
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        )
        # public_key() refuses a point that is not on the curve (invalid-curve attacks).
        key = numbers.public_key()
    elif kty == "RSA":
        n = int.from_bytes(_b64url_decode(jwk.get("n"), '"n"'), "big")
        e = int.from_bytes(_b64url_decode(jwk.get("e"), '"e"'), "big")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key is {n.bit_length()} bits; at least {MIN_RSA_BITS} are required "
                "(RFC 7518 section 3.3)"
            )
        if declared is not None and declared not in _RSA_ALGORITHMS:
            raise ValueError(f'"alg" {declared!r} is not supported for RSA keys (RS256, PS256)')
        key = rsa.RSAPublicNumbers(e, n).public_key()
        # kty alone cannot tell PKCS#1 v1.5 from PSS: RS256 unless the JWK says PS256.
        alg = declared or "RS256"
    else:
        raise ValueError(f"key type {kty!r} is not supported (OKP, EC, RSA)")

    if declared is not None and declared != alg:
        raise ValueError(f'"alg" {declared!r} does not match the key (expected {alg!r})')
    return key, alg


def _fingerprint(key: VerifyingKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class KeySet:
    """The public keys tokens may be signed with, by ``kid``, each bound to one algorithm.

    Build it from a JWKS document (RFC 7517 section 5)::

        KeySet({"keys": [...]})            # a parsed document
        KeySet.from_json(body)             # bytes/str, e.g. fetched from a URL
        KeySet.from_file("jwks.json")

    Keys whose ``use`` is not ``sig`` (or whose ``key_ops`` lack ``verify``) are
    skipped. Every other key must be usable: it needs a ``kid`` unique in the set,
    a supported type (OKP Ed25519 -> EdDSA, EC P-256 -> ES256, EC P-384 -> ES384,
    RSA >= 2048 bits -> RS256, or PS256 when its ``alg`` says so), and an ``alg``,
    if present, that agrees with the key. Otherwise :class:`ConfigError` lists
    every problem, one ``auth.jwks: ...`` line each (a key the operator expects
    to work must never be dropped silently). A set with no usable signing key is
    an error too.

    ``field`` is the config path used as the prefix of those lines.
    """

    __slots__ = ("_fingerprints", "_keys")

    def __init__(self, document: Mapping[str, Any], *, field: str = "auth.jwks") -> None:
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise ConfigError([f'{field}: not a JWKS (expected a JSON object with a "keys" list)'])
        keys: dict[str, KeyEntry] = {}
        problems: list[str] = []
        for index, jwk in enumerate(document["keys"]):
            where = f"{field}: keys[{index}]"
            if not isinstance(jwk, Mapping):
                problems.append(f"{where}: not a JSON object")
                continue
            kid = jwk.get("kid")
            if isinstance(kid, str) and kid:
                where = f"{where} (kid {kid!r})"
            # RFC 7517 section 4.2/4.3: a key meant for encryption is not ours to use.
            use = jwk.get("use")
            ops = jwk.get("key_ops")
            if (use is not None and use != "sig") or (
                isinstance(ops, list) and "verify" not in ops
            ):
                continue
            if not isinstance(kid, str) or not kid:
                problems.append(f'{where}: has no "kid" (tokens select their key by kid)')
                continue
            if kid in keys:
                problems.append(f"{where}: duplicate kid")
                continue
            try:
                key, alg = _parse_jwk(jwk)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            keys[kid] = KeyEntry(key, alg, _verifier(key, alg))
        if not problems and not keys:
            problems.append(f"{field}: no usable signing keys")
        if problems:
            raise ConfigError(problems)
        self._keys: Mapping[str, KeyEntry] = MappingProxyType(keys)
        self._fingerprints = frozenset(
            (kid, entry.alg, _fingerprint(entry.key)) for kid, entry in keys.items()
        )

    @classmethod
    def empty(cls) -> KeySet:
        """A set with no keys: every token is refused (before a remote JWKS loads)."""
        keys = cls.__new__(cls)
        keys._keys = MappingProxyType({})
        keys._fingerprints = frozenset()
        return keys

    @classmethod
    def from_json(
        cls, data: str | bytes, *, source: str = "JWKS", field: str = "auth.jwks"
    ) -> KeySet:
        """Parse a JWKS from JSON text; ``source`` names it in the error line."""
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ConfigError([f"{field}: {source} is not valid JSON ({exc})"]) from exc
        return cls(document, field=field)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, field: str = "auth.jwks") -> KeySet:
        """Read a JWKS file; any failure is a :class:`ConfigError` with one clear line."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError([f"{field}: cannot read {os.fspath(path)}: {exc.strerror}"]) from exc
        return cls.from_json(data, source=os.fspath(path), field=field)

    def get(self, kid: str) -> KeyEntry | None:
        """The key, its JWS alg and its verifier for ``kid``; None when the set has no such key."""
        return self._keys.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        """The key ids in the set."""
        return frozenset(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        # Same kids, algorithms and key material: lets a JWKS refresh that changed
        # nothing keep the verified-token cache.
        if not isinstance(other, KeySet):
            return NotImplemented
        return self._fingerprints == other._fingerprints

    def __hash__(self) -> int:
        return hash(self._fingerprints)

    def __repr__(self) -> str:
        return f"KeySet({sorted(self._keys)!r})"


# --------------------------------------------------------------------------- tokens


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an ``Authorization`` header value.

    ``Bearer <token>`` with the scheme matched case-insensitively (RFC 6750
    section 2.1, RFC 9110 section 11.1). No header -> ``InvalidToken("missing")``;
    another scheme, no token or a token with characters outside ``b64token`` ->
    ``InvalidToken("malformed")``.
    """
    if authorization is None:
        raise InvalidToken("missing", "no bearer token (send Authorization: Bearer <token>)")
    scheme, _, rest = authorization.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken("malformed", "the Authorization scheme is not Bearer")
    token = rest.lstrip(" ")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken("malformed", "the Bearer credentials are empty or not a token")
    return token


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a member name is repeated")
    return result


# One decoder, built once: json.loads would build one per call. RFC 8259
# section 8.1: JSON text exchanged between systems is UTF-8.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_reject_duplicates)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """The JSON object in a base64url segment (``what``: "header" or "payload")."""
    raw = _segment(segment)
    if raw is None:
        raise InvalidToken("malformed", f"the token {what} is not base64url")
    try:
        # Repeated names are refused (RFC 7515 section 4 for the header, RFC
        # 7519 section 4 for claims): no two parsers can then read one token
        # differently.
        value = _STRICT_JSON.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSON errors too
        raise InvalidToken("malformed", f"the token {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("malformed", f"the token {what} is not a JSON object")
    return value


# RFC 4648 section 5 is section 4's alphabet with "-" and "_" for "+" and "/".
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# The padding a segment of each length (mod 4) leaves out (RFC 7515 section 2).
_PADDING = {0: b"", 2: b"==", 3: b"="}
# RFC 4648 section 3.5: the last character of a segment 2 (or 3) characters past
# a 4-character boundary carries 4 (or 2) unused low bits; canonical means zero.
_CANONICAL_LAST = {
    0: None,
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}


def _segment(text: str) -> bytes | None:
    """Decode one base64url segment of a compact JWS, or None when it is not one.

    ``text`` has passed the ``_COMPACT_JWS`` match, so it is all base64url
    alphabet. RFC 7515 section 2: no padding. Only the canonical spelling is
    accepted (the unused low bits of the last character must be zero), so one
    signature has exactly one token string, as PyJWT also insists.
    """
    rest = len(text) % 4
    if rest == 1:
        return None
    last = _CANONICAL_LAST[rest]
    if last is not None and text[-1] not in last:
        return None
    return binascii.a2b_base64(
        text.encode("ascii").translate(_URLSAFE_TO_STANDARD) + _PADDING[rest]
    )


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    # RFC 7519 section 2: NumericDate is a JSON number of seconds since the epoch.
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("malformed", f"the {name} claim is not a NumericDate")
    try:
        number = float(value)  # an int beyond float range raises OverflowError
    except OverflowError:
        raise InvalidToken("malformed", f"the {name} claim is not a NumericDate") from None
    if not math.isfinite(number):
        raise InvalidToken("malformed", f"the {name} claim is not a NumericDate")
    return number


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _freeze_claims(claims: dict[str, Any]) -> Mapping[str, Any]:
    # The payload dict was just parsed and nobody else holds it: the top level
    # is wrapped in place rather than copied; nested values are frozen copies.
    for name, value in claims.items():
        if isinstance(value, dict | list):
            claims[name] = _freeze(value)  # same keys: iterating stays valid
    return MappingProxyType(claims)


# A fleet's tokens share a few headers (one per signing key), so each distinct
# header segment is parsed once; the bound keeps junk headers from growing it.
_HEADER_CACHE_SIZE = 64


class Authenticator:
    """Verifies device tokens; one per worker process, built from the ``auth`` config.

    ``algorithms`` is the allow-list of JWS algorithms (a subset of
    :data:`SUPPORTED_ALGORITHMS`); ``leeway`` (seconds) absorbs clock skew for
    ``exp``/``nbf``/``iat``; ``max_token_lifetime`` (seconds) bounds ``exp - iat``
    (``exp - now`` without ``iat``); ``revoked`` holds device ids (``sub``) and
    token ids (``jti``); ``clock`` returns the time in seconds since the epoch
    and drives both the claim checks and the cache expiry.

    :meth:`authenticate` is synchronous and cheap on a cache hit (a dict lookup
    and two set lookups). The object is not thread-safe: call it from the event
    loop thread only. A bad configuration raises :class:`ConfigError`.
    """

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        leeway: float,
        max_token_lifetime: float,
        revoked: frozenset[str] = frozenset(),
        cache_size: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems: list[str] = []
        if not issuer:
            problems.append("auth.issuer: must not be empty")
        if not audience:
            problems.append("auth.audience: must not be empty")
        unsupported = [a for a in algorithms if a not in SUPPORTED_ALGORITHMS]
        if unsupported:
            problems.append(
                f"auth.algorithms: unsupported {', '.join(map(repr, unsupported))} "
                f"(supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))})"
            )
        elif not algorithms:
            problems.append("auth.algorithms: list at least one algorithm")
        if not leeway >= 0:
            problems.append("auth.leeway: must not be negative")
        if not max_token_lifetime > 0:
            problems.append("auth.max_token_lifetime: must be positive")
        if cache_size < 0:
            problems.append("auth.cache_size: must not be negative")
        if problems:
            raise ConfigError(problems)

        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._leeway = float(leeway)
        self._max_lifetime = float(max_token_lifetime)
        self._revoked = frozenset(revoked)
        # Bumped whenever keys or revocations change: callers that cache
        # anything derived from a verification compare it.
        self.generation = 0
        self._clock = clock
        # Verified tokens, least recently used first; an entry is good while
        # clock() < device.exp (RFC 7519 section 4.1.4: never on or after exp).
        # An OrderedDict rather than cachetools' TLRUCache: with every request a
        # new device, its insert (a heap push and a linked node in Python) was
        # a measurable share of a cold request.
        self._cache: OrderedDict[str, Device] = OrderedDict()
        self._cache_size = cache_size
        self._headers: Memo[str, dict[str, Any]] = Memo(_HEADER_CACHE_SIZE)
        self._hits = 0
        self._misses = 0

    # -- configuration that may change at reload without losing the cache

    @property
    def keys(self) -> KeySet:
        """The key set tokens are verified against."""
        return self._keys

    def set_keys(self, keys: KeySet) -> None:
        """Swap in a new key set (JWKS reload). The cache is dropped unless nothing changed,
        so a token signed by a removed key stops working at once."""
        if keys != self._keys:
            self._cache.clear()
            self.generation += 1
        self._keys = keys

    @property
    def revoked(self) -> frozenset[str]:
        """The revoked ``sub`` and ``jti`` values."""
        return self._revoked

    def set_revoked(self, revoked: frozenset[str]) -> None:
        """Replace the revocation list; applies to cached tokens too (checked on every hit)."""
        self._revoked = frozenset(revoked)
        self.generation += 1

    # -- the hot path

    def authenticate(self, token: str) -> Device:
        """Verify ``token`` (the bare JWT, see :func:`bearer_token`) and return its device.

        Raises :class:`InvalidToken`; its ``reason`` is one of :data:`FAILURE_REASONS`.
        """
        cache = self._cache
        device = cache.get(token)
        if device is not None:
            if self._clock() < device.exp:
                cache.move_to_end(token)
                self._hits += 1
                self._check_revoked(device)
                return device
            del cache[token]
        self._misses += 1
        device = self._verify(token)
        self._check_revoked(device)
        # Only successes are cached, and only before their exp; an entry leaves
        # at the token's exp, or earlier (least recently used) when full.
        if self._cache_size and self._clock() < device.exp:
            if len(cache) >= self._cache_size:
                cache.popitem(last=False)
            cache[token] = device
        return device

    def seen(self, token: str) -> bool:
        """Whether ``token`` is in the verified-token cache (expired or not); no side effects."""
        return token in self._cache

    def _check_revoked(self, device: Device) -> None:
        # Checked only after the signature: an unauthenticated client must not be
        # able to learn which device ids are revoked.
        revoked = self._revoked
        if device.sub in revoked or (device.jti is not None and device.jti in revoked):
            raise InvalidToken("revoked", "the device or token has been revoked")

    def _verify(self, token: str) -> Device:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed", f"the token exceeds {MAX_TOKEN_LENGTH} characters")
        if not _COMPACT_JWS.fullmatch(token):
            raise InvalidToken("malformed", "not a JWT (three base64url segments)")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = self._headers.get(header_b64)
        if header is None:
            header = self._headers.remember(header_b64, _json_object(header_b64, "header"))

        # RFC 8725 section 3.1: never accept "none", whatever its spelling.
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg or alg.lower() == "none":
            raise InvalidToken("bad_algorithm", "the token is unsigned or names no algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("unknown_kid", "the token header has no kid")
        entry = self._keys.get(kid)
        if entry is None:
            raise InvalidToken("unknown_kid", "the token's kid is not in the key set")
        _, key_alg, verify = entry
        # RFC 8725 section 2.1: the key decides the algorithm; a header naming any
        # other (e.g. HS256 "signed" with our public key as HMAC secret) is refused.
        if key_alg not in self._algorithms:
            raise InvalidToken("bad_algorithm", f"algorithm {key_alg} is not allowed")
        if alg != key_alg:
            raise InvalidToken("bad_algorithm", f"the token's alg is not the key's ({key_alg})")
        # RFC 7515 section 4.1.11: a recipient MUST reject a JWS with a critical
        # extension it does not understand; we understand none.
        if "crit" in header:
            raise InvalidToken("crit", "the token has critical header parameters")

        # RFC 7515 section 5.2: the signature covers the ASCII of the first two
        # segments, so it is checked before the payload is even decoded; an
        # unauthenticated client cannot make us parse its claims.
        signature = _segment(signature_b64)
        if signature is None:
            raise InvalidToken("malformed", "the token signature is not base64url")
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        try:
            valid = verify(signing_input, signature)
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise InvalidToken("bad_signature", "signature verification failed")
        claims = _json_object(payload_b64, "payload")

        # The claim checks, in the order PyJWT's decode makes them (the
        # differential test in tests/security/test_jwt_differential.py holds
        # the two to the same answers); RFC 7519 section 4.1.
        sub = claims.get("sub")
        if claims.get("exp") is None or sub is None:
            raise InvalidToken("missing_claim", "the exp or sub claim is missing")
        if claims.get("iss") != self._issuer:
            raise InvalidToken("bad_issuer", "iss is missing or not the configured issuer")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if (
            not isinstance(audiences, list)
            or not all(isinstance(a, str) for a in audiences)
            or self._audience not in audiences
        ):
            raise InvalidToken("bad_audience", "aud does not contain this gateway")
        if not isinstance(sub, str):
            raise InvalidToken("missing_claim", "the sub claim is not a string")
        if "jti" in claims and not isinstance(claims["jti"], str):
            raise InvalidToken("malformed", "jti is not a string")
        # Stricter than PyJWT from here on: a device must be someone.
        if not sub:
            raise InvalidToken("missing_claim", "the sub claim is empty")
        exp = _numeric_date(claims, "exp")
        if exp is None:  # refused above already; kept for the type checker
            raise InvalidToken("missing_claim", "the exp claim is missing")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")

        # RFC 7519 sections 4.1.4-4.1.6, with a small leeway for clock skew.
        now = self._clock()
        if exp <= now - self._leeway:
            raise InvalidToken("expired", f"the token expired {now - exp:.0f} s ago")
        if nbf is not None and nbf > now + self._leeway:
            raise InvalidToken("not_yet_valid", "the token is not valid yet (nbf)")
        if iat is not None and iat > now + self._leeway:
            raise InvalidToken("not_yet_valid", "the token is issued in the future (iat)")
        # A long-lived bearer token is a standing credential (a stolen one works
        # until exp), so the operator caps how long any one token may live.
        lifetime = exp - (iat if iat is not None else now)
        if lifetime > self._max_lifetime:
            raise InvalidToken(
                "lifetime",
                f"the token lives {lifetime:.0f} s; at most {self._max_lifetime:.0f} s allowed",
            )

        jti = claims.get("jti")
        try:
            frozen = _freeze_claims(claims)
        except RecursionError as exc:
            raise InvalidToken("malformed", "the token's claims are nested too deeply") from exc
        return Device(
            sub=sub,
            claims=frozen,
            exp=math.floor(exp),
            jti=jti if isinstance(jti, str) else None,
        )

    # -- introspection

    def cache_info(self) -> CacheInfo:
        """Hits, misses, capacity and current number of cached (unexpired) tokens."""
        now = self._clock()
        cache = self._cache
        for token in [t for t, device in cache.items() if not now < device.exp]:
            del cache[token]
        return CacheInfo(self._hits, self._misses, self._cache_size, len(cache))

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are cached and not yet expired."""
        return self.cache_info().currsize

    def clear_cache(self) -> None:
        """Forget every verified token (the next request of each is verified again)."""
        self._cache.clear()
