"""Operator tooling for device-token keys: ``gateway keys generate`` and ``gateway token issue``.

Usage::

    kid = generate_key("EdDSA", Path("config/keys"))       # writes <kid>.pem, updates jwks.json
    token = issue_token(Path(f"config/keys/{kid}.pem"), kid, "device-0042",
                        ttl=3600, audience="firmware-gateway",
                        issuer="https://devices.example.com",
                        claims=dict([parse_claim("product=acme-x1")]))

The gateway itself only ever reads ``jwks.json`` (see :class:`gateway.auth.KeySet`);
private keys stay with whoever issues tokens. Every refusal here is a
``ValueError`` with a one-line message fit to print.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "GENERATE_ALGORITHMS",
    "generate_key",
    "issue_token",
    "jwk_thumbprint",
    "parse_claim",
    "public_jwk",
]

#: Algorithms ``generate_key`` can make a key for.
GENERATE_ALGORITHMS = ("EdDSA", "ES256", "RS256")

# NIST SP 800-57 part 1: 3072-bit RSA for use beyond 2030 (2048 is the floor the
# gateway accepts, RFC 7518 section 3.3).
_RSA_BITS = 3072
_MIN_RSA_BITS = 2048

# The kid becomes a file name (<kid>.pem), so keep it to a portable, traversal-free
# alphabet.
_KID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Characters of a base64url thumbprint kept as the default kid: 16 characters are
# 96 bits, plenty to tell a fleet's keys apart and short enough to read aloud.
_KID_LENGTH = 16

_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _b64url(data: bytes) -> str:
    # RFC 7515 section 2: base64url without padding.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    # RFC 7518 section 2 Base64urlUInt: big-endian, minimal length (or a fixed size
    # for EC coordinates, section 6.2.1.2).
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def public_jwk(key: PublicKey, *, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid``, ``alg`` and ``use: "sig"``.

    Ed25519 -> ``OKP`` (RFC 8037 section 2), EC -> ``EC`` with full-size
    coordinates (RFC 7518 section 6.2), RSA -> ``RSA`` ``n``/``e`` (section 6.3).
    """
    jwk: dict[str, Any]
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}
        if key.curve.name not in curves:
            raise ValueError(f"EC curve {key.curve.name} is not supported (P-256, P-384)")
        crv, size = curves[key.curve.name]
        numbers = key.public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": _uint(numbers.x, size), "y": _uint(numbers.y, size)}
    else:
        numbers_rsa = key.public_numbers()
        jwk = {"kty": "RSA", "n": _uint(numbers_rsa.n), "e": _uint(numbers_rsa.e)}
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK."""
    # Section 3.2: only the required members, lexicographic order, no whitespace.
    required = {
        "OKP": ("crv", "kty", "x"),
        "EC": ("crv", "kty", "x", "y"),
        "RSA": ("e", "kty", "n"),
    }
    members = required.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError(f"no thumbprint for key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _new_private_key(alg: str, rsa_bits: int) -> PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(
        f"unsupported algorithm {alg!r}; choose one of {', '.join(GENERATE_ALGORITHMS)}"
    )


def _read_jwks(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f'{path}: not a JWKS (expected a JSON object with a "keys" list)')
    return list(document["keys"])


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # Write-then-rename so the gateway (which may reload at any moment) never
    # reads a half-written JWKS.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_key(
    alg: str, out_dir: str | os.PathLike[str], kid: str | None = None, *, rsa_bits: int = _RSA_BITS
) -> str:
    """Make a signing key pair for device tokens; return its kid.

    Writes the private key as unencrypted PKCS#8 PEM to ``out_dir/<kid>.pem``
    (mode 0600; ``out_dir`` is created) and adds its public JWK to
    ``out_dir/jwks.json`` (created if absent; an entry with the same kid is
    replaced). ``alg`` is one of :data:`GENERATE_ALGORITHMS`; RS256 keys are
    ``rsa_bits`` long (3072 unless asked, at least 2048). Without ``kid`` the
    kid is the first 16 characters of the key's RFC 7638 thumbprint, so it is
    stable for the key and needs no bookkeeping.

    Raises ValueError for an unknown algorithm, too short an RSA key, an unsafe
    kid, an existing ``<kid>.pem`` (a private key is never overwritten) or an
    unreadable jwks.json.
    """
    out = Path(out_dir)
    if rsa_bits < _MIN_RSA_BITS:
        raise ValueError(f"RSA keys must be at least {_MIN_RSA_BITS} bits (RFC 7518 section 3.3)")
    if kid is not None and not _KID.fullmatch(kid):
        raise ValueError(
            f"kid {kid!r} is not usable as a file name "
            "(letters, digits, '.', '_', '-'; at most 128; not starting with a symbol)"
        )
    private = _new_private_key(alg, rsa_bits)
    public = private.public_key()
    if kid is None:
        kid = jwk_thumbprint(public_jwk(public, kid="", alg=alg))[:_KID_LENGTH]
    jwk = public_jwk(public, kid=kid, alg=alg)

    out.mkdir(parents=True, exist_ok=True)
    jwks_path = out / "jwks.json"
    keys = [k for k in _read_jwks(jwks_path) if not (isinstance(k, dict) and k.get("kid") == kid)]
    keys.append(jwk)

    pem_path = out / f"{kid}.pem"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: refusing to overwrite is atomic, no check-then-write race. The mode
    # is set at creation so the key is never readable by others, not even briefly.
    try:
        fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ValueError(
            f"{pem_path} already exists; refusing to overwrite a private key "
            "(choose another kid or remove the file)"
        ) from exc
    try:
        os.fchmod(fd, 0o600)  # the umask may have cleared bits, never adds them; be exact
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        mode = jwks_path.stat().st_mode & 0o777 if jwks_path.exists() else 0o644
        body = json.dumps({"keys": keys}, indent=2) + "\n"
        _write_atomically(jwks_path, body.encode("utf-8"), mode)
    except BaseException:
        # Never leave a private key whose public half was not published.
        pem_path.unlink(missing_ok=True)
        raise
    return kid


def _load_private_key(key_pem: Path) -> tuple[PrivateKey, str]:
    try:
        data = key_pem.read_bytes()
    except OSError as exc:
        raise ValueError(f"{key_pem}: cannot read: {exc.strerror}") from exc
    return _parse_private_key(key_pem, data)


@functools.lru_cache(maxsize=16)
def _parse_private_key(key_pem: Path, data: bytes) -> tuple[PrivateKey, str]:
    # Keyed by the file's bytes, so an edited key file is parsed again. Parsing
    # an RSA key checks it (about 10 ms): minting a fleet's tokens from one key
    # must not pay that per token.
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_pem}: not an unencrypted PEM private key") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "ES256", "secp384r1": "ES384"}
        if key.curve.name in algs:
            return key, algs[key.curve.name]
        raise ValueError(f"{key_pem}: EC curve {key.curve.name} is not supported")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"{key_pem}: RSA key is {key.key_size} bits; at least 2048 required")
        return key, "RS256"
    raise ValueError(f"{key_pem}: key type {type(key).__name__} is not supported")


def issue_token(
    key_pem: str | os.PathLike[str],
    kid: str,
    sub: str,
    *,
    ttl: float = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    claims: Mapping[str, Any] = _NO_CLAIMS,
    now: float | None = None,
) -> str:
    """Sign a device token with the private key in ``key_pem``; return the compact JWT.

    The algorithm follows the key (Ed25519 -> EdDSA, EC P-256 -> ES256,
    P-384 -> ES384, RSA -> RS256). Header: ``alg``, ``kid``, ``typ: "JWT"``.
    Payload: ``sub``, ``iat`` (``now``, default the current time), ``exp``
    (``iat + ttl``), a random ``jti``, ``iss``/``aud`` when given, and ``claims``.
    ``claims`` may add any claim, and may set ``jti`` (to revoke it by name
    later) or ``iss``/``aud`` when the parameters are not given; it may not set
    ``sub``, ``iat`` or ``exp``.
    """
    if not sub:
        raise ValueError("sub must not be empty")
    if not ttl > 0 or not math.isfinite(ttl):
        raise ValueError("ttl must be a positive number of seconds")
    fixed = {"sub", "iat", "exp"} | {
        name for name, value in (("iss", issuer), ("aud", audience)) if value is not None
    }
    clash = sorted(fixed & claims.keys())
    if clash:
        raise ValueError(f"claim {clash[0]!r} is set by its own option, not by a claim")
    private, alg = _load_private_key(Path(key_pem))

    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"jti": secrets.token_urlsafe(16), **claims}
    payload.update(sub=sub, iat=issued, exp=issued + math.ceil(ttl))
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    try:
        return jwt.encode(payload, private, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"claims must be JSON values ({exc})") from exc


def parse_claim(text: str) -> tuple[str, Any]:
    """Parse ``NAME=VALUE`` from ``--claim``.

    VALUE is taken as JSON when it is valid JSON (``3``, ``true``, ``["a","b"]``,
    ``{"k":1}``, ``"1.4"``), else as a plain string (``acme-x1``). Note that
    ``1.4`` is the number 1.4; quote it (``'version="1.4"'``) to keep a string.
    """
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"claim {text!r} is not NAME=VALUE")

    def _no_constants(token: str) -> Any:
        # NaN/Infinity are not JSON (RFC 8259 section 6); keep them as text.
        raise ValueError(token)

    try:
        value: Any = json.loads(raw, parse_constant=_no_constants)
    except ValueError:
        value = raw
    return name.strip(), value
