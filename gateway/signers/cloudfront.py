"""The ``cloudfront`` backend: Amazon CloudFront signed URLs (canned or custom policy).

Configure it with :class:`gateway.settings.CloudFrontBackend`; build it with
:func:`create` (normally through :func:`gateway.signers.build_signer`), which
reads every private key once and refuses, with the field path, any key
CloudFront would not accept. ``sign`` is then CPU only.

URL shapes (CloudFront Developer Guide, "Create a signed URL using a canned
policy" and "... using a custom policy"; parameter order as in their examples)::

    canned: {scheme}://{domain}/{key}?Expires={N}&Signature={S}&Key-Pair-Id={ID}
    custom: {scheme}://{domain}/{key}?Policy={P}&Signature={S}&Key-Pair-Id={ID}

with ``&Hash-Algorithm=SHA256`` appended when the key signs with SHA-256
(Developer Guide, "Code examples for creating a signature for a signed URL":
"When you use SHA-256, include the Hash-Algorithm=SHA256 query parameter").
Without it CloudFront verifies with SHA-1, the classic algorithm.

- ``S`` is the signature of the policy bytes: RSA PKCS#1 v1.5 for RSA-2048
  keys, ECDSA (DER-encoded, as ``openssl dgst -sign`` writes it) for P-256
  keys, over SHA-1 or SHA-256 (API reference, ``PublicKey``: "CloudFront
  supports signed URLs and signed cookies with RSA 2048 or ECDSA 256 key
  signatures").
- ``P`` and ``S`` are in CloudFront-safe base64: standard base64 with ``+``
  → ``-``, ``=`` → ``_``, ``/`` → ``~`` (the "invalid and valid characters"
  table of both guide pages).
- The canned policy is never sent; CloudFront rebuilds it from the URL and
  ``Expires``, so its bytes must be exactly
  ``{"Statement":[{"Resource":"URL","Condition":{"DateLessThan":{"AWS:EpochTime":N}}}]}``.

Determinism (SPEC §4): RSA PKCS#1 v1.5 signatures are deterministic by
construction; ECDSA is made deterministic with RFC 6979 nonces, so every
worker and replica issues the same URL for the same window with either key
type.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.errors import ConfigError
from gateway.signers import KeyRing, SignedURL

if TYPE_CHECKING:
    from gateway.settings import CloudFrontBackend

HashName = Literal["sha1", "sha256"]

# CloudFront accepts RSA-2048 and ECDSA P-256 public keys for signed URLs and
# nothing else (API reference, PublicKey / PublicKeyConfig).
_RSA_BITS = 2048
_ACCEPTED = "CloudFront accepts RSA-2048 or ECDSA P-256 keys"

# "Replace characters that are invalid in a URL query string with characters
# that are valid": + -> -, = -> _, / -> ~ (Developer Guide, canned/custom policy).
_SAFE_B64 = bytes.maketrans(b"+=/", b"-_~")


def cloudfront_b64(data: bytes) -> str:
    """``data`` in CloudFront-safe base64 (``+``→``-``, ``=``→``_``, ``/``→``~``)."""
    return base64.b64encode(data).translate(_SAFE_B64).decode("ascii")


def canned_policy(resource: str, expires_at: int) -> bytes:
    """The canned policy CloudFront rebuilds from a URL and its ``Expires``, byte for byte.

    Developer Guide, "Create a policy statement for a signed URL that uses a
    canned policy": exactly this JSON with all white space removed, the
    ``Resource`` being the URL without the CloudFront parameters.
    """
    statement = {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": expires_at}}}
    return json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()


def custom_policy(
    resource: str,
    expires_at: int,
    *,
    not_before: int | None = None,
    source_ip: str | None = None,
) -> bytes:
    """A custom policy statement, compact JSON (sent as the ``Policy`` parameter).

    ``resource`` may carry the ``*`` / ``?`` wildcards; ``not_before`` becomes
    ``DateGreaterThan`` and ``source_ip`` (an IPv4 CIDR) ``AWS:SourceIp``. The
    guide says condition order does not matter; we use botocore's order
    (DateLessThan, IpAddress, DateGreaterThan) so our bytes equal its
    ``build_policy`` output.
    """
    condition: dict[str, dict[str, int | str]] = {"DateLessThan": {"AWS:EpochTime": expires_at}}
    if source_ip is not None:
        condition["IpAddress"] = {"AWS:SourceIp": source_ip}
    if not_before is not None:
        condition["DateGreaterThan"] = {"AWS:EpochTime": not_before}
    statement = {"Resource": resource, "Condition": condition}
    return json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()


SigningKeyType = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One loaded signing key: the CloudFront public key id and its private key."""

    key_pair_id: str
    private_key: SigningKeyType
    hash_algorithm: HashName

    def sign(self, message: bytes) -> bytes:
        """The raw signature of ``message`` (PKCS#1 v1.5, or DER ECDSA with RFC 6979 nonces)."""
        digest: hashes.HashAlgorithm = (
            hashes.SHA256() if self.hash_algorithm == "sha256" else hashes.SHA1()
        )
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(message, padding.PKCS1v15(), digest)
        return self.private_key.sign(message, ec.ECDSA(digest, deterministic_signing=True))


def load_private_key(path: str, field: str, hash_algorithm: HashName = "sha1") -> SigningKeyType:
    """The private key in the PEM file at ``path``, if CloudFront can use it.

    Raises :class:`ConfigError` with one ``{field}: why`` line for a file that
    cannot be read, that is not an unencrypted PEM private key, or that holds a
    key other than RSA-2048 or EC P-256.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError([f"{field}: cannot read {path}: {exc.strerror}"]) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when a password is needed.
        raise ConfigError(
            [f"{field}: {path} is an encrypted private key; give it unencrypted (PEM)"]
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError([f"{field}: {path} is not a PEM private key"]) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size != _RSA_BITS:
            raise ConfigError([f"{field}: {path} holds an RSA-{key.key_size} key; {_ACCEPTED}"])
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError([f"{field}: {path} holds an EC {key.curve.name} key; {_ACCEPTED}"])
        try:
            # RFC 6979 needs OpenSSL >= 3.2 (and cryptography >= 44): find out
            # now, at start, rather than at the first download.
            SigningKey("probe", key, hash_algorithm).sign(b"probe")
        except (UnsupportedAlgorithm, TypeError):
            raise ConfigError(
                [
                    f"{field}: this OpenSSL cannot sign ECDSA deterministically (RFC 6979, "
                    "OpenSSL >= 3.2), which identical URLs across replicas need; "
                    "use an RSA-2048 key"
                ]
            ) from None
        return key
    kind = type(key).__name__.removesuffix("PrivateKey")
    raise ConfigError([f"{field}: {path} holds a key of type {kind}; {_ACCEPTED}"])


def create(settings: CloudFrontBackend, field: str) -> CloudFrontSigner:
    """The signer for a ``cloudfront`` backend's settings; every key is loaded here.

    Raises :class:`ConfigError` listing every unusable key (``{field}.private_key``
    or ``{field}.keys.{i}.private_key``) and an IPv6 ``source_ip``.
    """
    problems: list[str] = []
    keys: list[tuple[int | None, SigningKey]] = []
    single = settings.key_pair_id is not None
    for index, version in enumerate(settings.key_versions()):
        where = f"{field}.private_key" if single else f"{field}.keys.{index}.private_key"
        try:
            private = load_private_key(version.private_key, where, settings.hash_algorithm)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        keys.append(
            (
                version.not_before,
                SigningKey(version.key_pair_id, private, settings.hash_algorithm),
            )
        )
    if settings.source_ip is not None and ipaddress.ip_network(settings.source_ip).version != 4:
        # Developer Guide, custom policy values, IpAddress: "IP addresses in
        # IPv6 format ... are not supported".
        problems.append(
            f"{field}.source_ip: CloudFront policies take an IPv4 CIDR only, "
            f"not {settings.source_ip}"
        )
    if problems:
        raise ConfigError(problems)
    start_skew = None if settings.start_skew is None else math.ceil(settings.start_skew)
    return CloudFrontSigner(
        f"{settings.scheme}://{settings.domain}",
        KeyRing(keys),
        policy=settings.policy,
        start_skew=start_skew,
        source_ip=settings.source_ip,
        resource=settings.resource,
    )


class CloudFrontSigner:
    """Signs CloudFront URLs for one distribution.

    ``base`` is ``{scheme}://{domain}``. With several keys (rotation) the key
    whose ``not_before`` is the latest at or before ``signed_at`` signs; put
    every public key still in use in the distribution's key group, and a URL
    signed by a retired key keeps working until it expires.

    Custom policy only: ``start_skew`` seconds make ``DateGreaterThan =
    signed_at - start_skew``; ``source_ip`` adds ``AWS:SourceIp``;
    ``resource="directory"`` signs ``{directory of the object}/*`` so one
    URL's policy also admits the object's siblings.
    """

    kind = "cloudfront"

    def __init__(
        self,
        base: str,
        keys: KeyRing[SigningKey],
        *,
        policy: Literal["canned", "custom"] = "canned",
        start_skew: int | None = None,
        source_ip: str | None = None,
        resource: Literal["object", "directory"] = "object",
    ) -> None:
        self._base = base.rstrip("/")
        self._keys = keys
        self._custom = policy == "custom"
        self._start_skew = start_skew
        self._source_ip = source_ip
        self._directory = resource == "directory"

    def url_for(self, key: str) -> str:
        """The unsigned URL of object ``key`` (the canned policy's ``Resource``)."""
        # Keys are validated to A-Za-z0-9/._-~+=,@ with no wildcard (* ?) that
        # a policy Resource would interpret. Everything but unreserved
        # characters and "/" is percent-encoded: an S3 origin reads a literal
        # "+" in a path as a space, and the Resource must equal the URL the
        # viewer sends, so both use this one encoded form.
        return f"{self._base}/{quote(key, safe='/')}"

    def sign_now(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        """The signed URL, synchronously (what :meth:`sign` does; CPU only)."""
        url = self.url_for(key)
        active = self._keys.active(signed_at)
        if self._custom:
            resource = url.rsplit("/", 1)[0] + "/*" if self._directory else url
            not_before = None if self._start_skew is None else signed_at - self._start_skew
            statement = custom_policy(
                resource, expires_at, not_before=not_before, source_ip=self._source_ip
            )
            first = f"Policy={cloudfront_b64(statement)}"
        else:
            statement = canned_policy(url, expires_at)
            first = f"Expires={expires_at}"
        query = (
            f"{first}&Signature={cloudfront_b64(active.sign(statement))}"
            f"&Key-Pair-Id={active.key_pair_id}"
        )
        if active.hash_algorithm == "sha256":
            query += "&Hash-Algorithm=SHA256"
        return SignedURL(f"{url}?{query}", expires_at)

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        # Inline on the event loop: one signature costs ~260 us (RSA-2048) or
        # ~35 us (P-256) and happens once per key and window (measured in
        # docs/backends/cloudfront.md); a hop to a worker thread alone costs
        # ~70 us, and more under load.
        return self.sign_now(key, signed_at, expires_at)

    async def aclose(self) -> None:
        return None
