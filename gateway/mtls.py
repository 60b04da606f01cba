"""Device identity from a client certificate forwarded by a trusted load balancer.

Many fleets identify devices by X.509 certificates and terminate mutual TLS
at the load balancer, which forwards the verified client certificate in a
header: AWS ALB ``X-Amzn-Mtls-Clientcert`` and nginx's
``$ssl_client_escaped_cert`` both send the URL-encoded PEM. The gateway
believes that header only from a peer in ``server.trusted_proxies`` (a device
could send it itself), verifies the certificate again against the configured
CA bundle (the gateway does not take the balancer's word for the chain: RFC
5280 path validation with ``cryptography.x509.verification``, client-auth
policy, at the current time), and derives the device:

- ``sub`` from a subject attribute (default ``CN``);
- claims for the ``access`` templates from subject attributes
  (``claims: {product: OU}`` fills ``firmware/{product}/``).

Configured under ``auth.client_certificates``; ``mode: alternative`` lets a
device present either a token or a certificate (the token wins when both
come), ``mode: required`` makes the certificate mandatory and, when a token is
presented too, its ``sub`` must name the same device.
Verified certificates are cached by the header's bytes until they expire.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from cachetools import TLRUCache
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.auth import Device
from gateway.errors import ConfigError, InvalidToken

ATTRIBUTES = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
MAX_HEADER_BYTES = 16 * 1024


def _expiry(_key: bytes, device: Device, _now: float) -> float:
    return float(device.exp)


class ClientCertificates:
    """Verifies forwarded client certificates and turns them into devices."""

    def __init__(
        self,
        ca_file: str,
        *,
        subject: str = "CN",
        claims: Mapping[str, str] | None = None,
        cache_size: int = 100_000,
        clock: Any = time.time,
        field: str = "auth.client_certificates",
    ) -> None:
        try:
            with open(ca_file, "rb") as f:
                roots = x509.load_pem_x509_certificates(f.read())
        except OSError as exc:
            raise ConfigError([f"{field}.ca: cannot read {ca_file}: {exc.strerror}"]) from None
        except ValueError:
            raise ConfigError([f"{field}.ca: {ca_file} holds no PEM certificate"]) from None
        self._store = Store(roots)
        self._subject = ATTRIBUTES[subject]
        self._claims = {name: ATTRIBUTES[attr] for name, attr in (claims or {}).items()}
        self._clock = clock
        self._cache: TLRUCache[bytes, Device] = TLRUCache(
            maxsize=cache_size, ttu=_expiry, timer=clock
        )

    def device(self, header: bytes) -> Device:
        """The device the forwarded certificate header names; InvalidToken when unusable."""
        cached = self._cache.get(header)
        if cached is not None:
            return cached
        if len(header) > MAX_HEADER_BYTES:
            raise InvalidToken("bad_certificate", "the client certificate header is too large")
        try:
            pem = unquote(header.decode("ascii")).encode("ascii")
            chain = x509.load_pem_x509_certificates(pem)
        except (UnicodeError, ValueError):
            raise InvalidToken(
                "bad_certificate", "the client certificate header holds no PEM certificate"
            ) from None
        leaf, intermediates = chain[0], chain[1:]
        now = datetime.datetime.fromtimestamp(self._clock(), tz=datetime.UTC)
        verifier = PolicyBuilder().store(self._store).time(now).build_client_verifier()
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError:
            raise InvalidToken(
                "bad_certificate", "the client certificate does not verify against the CA"
            ) from None
        sub = _attribute(leaf, self._subject)
        if not sub:
            raise InvalidToken("bad_certificate", "the client certificate names no device")
        claims: dict[str, Any] = {"sub": sub}
        for name, oid in self._claims.items():
            value = _attribute(leaf, oid)
            if value:
                claims[name] = value
        device = Device(
            sub=sub,
            claims=MappingProxyType(claims),
            exp=int(leaf.not_valid_after_utc.timestamp()),
            jti=None,
        )
        self._cache[header] = device
        return device


def _attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
