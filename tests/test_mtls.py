"""Device identity from a client certificate forwarded by a trusted load balancer."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.stack import KEY, running_gateway

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


def make_ca(cn: str = "Fleet CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_device(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    cn: str,
    ou: str = "acme-x1",
    *,
    days: int = 365,
    start_days: int = -1,
) -> x509.Certificate:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn, ou))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + datetime.timedelta(days=start_days))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"{cn}.devices.invalid")]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def header(cert: x509.Certificate) -> str:
    """What an ALB or nginx ($ssl_client_escaped_cert) forwards: URL-encoded PEM."""
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


REGIONS = {
    "eu": {
        "location": [50.1, 8.7],
        "backend": {"type": "local", "url": "http://127.0.0.1:9", "secret": "s"},
    }
}


def gateway(tmp_path: Path, ca_cert: x509.Certificate, mode: str, trusted: list[str]) -> Any:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    from tests.stack import AUDIENCE, ISSUER

    return running_gateway(
        tmp_path / "gw",
        REGIONS,
        server={"trusted_proxies": trusted},
        auth={
            "jwks": str(tmp_path / "gw" / "keys" / "jwks.json"),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "client_certificates": {"ca": str(ca_file), "claims": {"product": "OU"}, "mode": mode},
        },
    )


def get(base: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/binaries/{KEY}", headers=headers, timeout=10)


def _prepare_keys(tmp_path: Path) -> None:
    from gateway.keys import generate_key

    generate_key("EdDSA", tmp_path / "gw" / "keys", "ed1")


def test_a_forwarded_certificate_identifies_the_device(tmp_path: Path) -> None:
    _prepare_keys(tmp_path)
    ca = make_ca()
    rogue = make_ca("Rogue CA")
    with gateway(tmp_path, ca[1], "alternative", ["127.0.0.1/32"]) as gw:
        good = get(gw.base, **{"X-Amzn-Mtls-Clientcert": header(make_device(ca, "device-42"))})
        assert good.status_code == 307
        # Another product's certificate is not entitled to acme-x1's firmware.
        other = get(
            gw.base, **{"X-Amzn-Mtls-Clientcert": header(make_device(ca, "d-7", "acme-x2"))}
        )
        forged = get(gw.base, **{"X-Amzn-Mtls-Clientcert": header(make_device(rogue, "device-42"))})
        expired = get(
            gw.base,
            **{"X-Amzn-Mtls-Clientcert": header(make_device(ca, "old", days=-1, start_days=-30))},
        )
        garbage = get(gw.base, **{"X-Amzn-Mtls-Clientcert": "not-a-certificate"})
        nothing = get(gw.base)
        # A token still works in alternative mode.
        token = get(gw.base, Authorization=f"Bearer {gw.token()}")
        metrics = httpx.get(f"{gw.base}/metrics", timeout=5).text
    assert other.status_code == 403
    for refused in (forged, expired, garbage):
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert nothing.status_code == 401
    assert token.status_code == 307
    assert 'gateway_auth_failures_total{reason="bad_certificate"} 3.0' in metrics
    assert "device-42" not in metrics
    # The certificate's subject is the device in the access log (flushed at shutdown).
    assert any('"sub":"device-42"' in line for line in gw.log.lines())


def test_the_header_is_believed_only_from_a_trusted_peer(tmp_path: Path) -> None:
    _prepare_keys(tmp_path)
    ca = make_ca()
    with gateway(tmp_path, ca[1], "alternative", []) as gw:
        response = get(gw.base, **{"X-Amzn-Mtls-Clientcert": header(make_device(ca, "device-42"))})
    assert response.status_code == 401


@pytest.mark.parametrize("matching", [True, False])
def test_required_mode_wants_a_certificate_that_matches_the_token(
    tmp_path: Path, matching: bool
) -> None:
    _prepare_keys(tmp_path)
    ca = make_ca()
    with gateway(tmp_path, ca[1], "required", ["127.0.0.1/32"]) as gw:
        cert = header(make_device(ca, "device-0001" if matching else "device-9999"))
        both = get(
            gw.base, Authorization=f"Bearer {gw.token()}", **{"X-Amzn-Mtls-Clientcert": cert}
        )
        token_only = get(gw.base, Authorization=f"Bearer {gw.token()}")
    assert both.status_code == (307 if matching else 401)
    assert token_only.status_code == 401


def test_a_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from gateway.mtls import ClientCertificates

    with pytest.raises(ConfigError) as info:
        ClientCertificates(str(tmp_path / "none.pem"))
    assert info.value.problems[0].startswith("auth.client_certificates.ca: cannot read")
    (tmp_path / "bad.pem").write_text("nothing here")
    with pytest.raises(ConfigError) as info:
        ClientCertificates(str(tmp_path / "bad.pem"))
    assert info.value.problems == [
        f"auth.client_certificates.ca: {tmp_path / 'bad.pem'} holds no PEM certificate"
    ]
