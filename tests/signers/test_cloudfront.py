"""The ``cloudfront`` backend: URLs CloudFront would accept.

No real CloudFront runs here (and none can be emulated locally), so every URL
is proved two independent ways:

1. byte equality with botocore's ``CloudFrontSigner`` (RSA-2048, SHA-1: the
   only combination it implements), canned and custom policies;
2. :func:`verify`, a verifier written here from the CloudFront Developer Guide
   ("Create a signed URL using a canned policy / a custom policy", "Code
   examples for creating a signature"): it rebuilds or decodes the policy,
   checks its JSON shape and values, and verifies the signature with the
   PUBLIC key for RSA and ECDSA, SHA-1 and SHA-256; any tampered parameter
   fails.

The end-to-end test runs the real gateway and checks its 307 ``Location``
with the same verifier.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from botocore.signers import CloudFrontSigner as BotocoreCloudFrontSigner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.errors import ConfigError
from gateway.keys import generate_key
from gateway.settings import CloudFrontBackend, parse_settings
from gateway.signers import Signer, build_signer
from gateway.signers.cloudfront import CloudFrontSigner, canned_policy, cloudfront_b64
from tests.stack import running_gateway

DOMAIN = "d111111abcdef8.cloudfront.net"
KEY = "firmware/acme-x1/1.0.0/app.bin"
OLD_ID = "K2JCJMDEHXQW5F"
NEW_ID = "K3NEWKEYROTATE7"
EC_ID = "KECDSAP256KEY01"
SIGNED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z
EXPIRES_AT = SIGNED_AT + 900

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Keys:
    rsa_old: Path
    rsa_new: Path
    ec: Path
    private: dict[Path, PrivateKey]

    def public(self, path: Path) -> PublicKey:
        return self.private[path].public_key()


def _write(path: Path, key: Any, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("cloudfront-keys")
    rsa_old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    paths = (
        _write(root / "rsa-old.pem", rsa_old),
        _write(root / "rsa-new.pem", rsa_new),
        _write(root / "ec.pem", p256),
    )
    return Keys(*paths, private=dict(zip(paths, (rsa_old, rsa_new, p256), strict=True)))


def config(regions: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth": {"jwks": "/unused/jwks.json", "issuer": "https://i.test", "audience": "fw"},
        "access": [{"prefix": "firmware/{product}/"}],
        "regions": regions,
    }


def backend(**fields: Any) -> CloudFrontBackend:
    """A validated ``cloudfront`` backend, through the real settings parser."""
    settings = parse_settings(
        config({"cdn": {"location": [39.04, -77.49], "backend": {"type": "cloudfront", **fields}}})
    )
    result = settings.regions["cdn"].backend
    assert isinstance(result, CloudFrontBackend)
    return result


def signer(**fields: Any) -> Signer:
    return build_signer(backend(domain=DOMAIN, **fields), "regions.cdn.backend")


def sign(
    s: Signer, key: str = KEY, signed_at: int = SIGNED_AT, expires_at: int = EXPIRES_AT
) -> str:
    result = asyncio.run(s.sign(key, signed_at, expires_at))
    assert result.expires_at == expires_at
    return result.url


# --------------------------------------------------------------------------- the verifier


class Rejected(Exception):
    """CloudFront would answer 403 to this URL."""


@dataclass(frozen=True)
class Accepted:
    key_pair_id: str
    hash_algorithm: str  # "SHA1" or "SHA256"
    policy: dict[str, Any]  # the decoded (custom) or rebuilt (canned) statement
    canned: bool

    @property
    def condition(self) -> dict[str, Any]:
        return dict(self.policy["Statement"][0]["Condition"])


_UNSAFE = str.maketrans("-_~", "+=/")


def _b64decode_cloudfront(value: str) -> bytes:
    """CloudFront-safe base64 back to bytes: - -> +, _ -> =, ~ -> /."""
    try:
        return base64.b64decode(value.translate(_UNSAFE), validate=True)
    except ValueError:
        raise Rejected(f"not CloudFront base64: {value!r}") from None


def _wildcard(resource: str) -> re.Pattern[str]:
    """A policy Resource as a regex: * is zero or more characters, ? exactly one."""
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in resource)
    return re.compile("".join(parts), re.DOTALL)


def verify(
    url: str,
    public_keys: dict[str, PublicKey],
    *,
    now: float | None = None,
    client_ip: str | None = None,
) -> Accepted:
    """Check ``url`` the way the Developer Guide says CloudFront does.

    ``now`` and ``client_ip``, when given, are also checked against
    DateLessThan/DateGreaterThan and AWS:SourceIp.
    """
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    pairs = [p.split("=", 1) for p in parts.query.split("&")]
    if any(len(p) != 2 for p in pairs):
        raise Rejected("malformed query")
    names = [name for name, _ in pairs]
    values = {name: value for name, value in pairs}
    if len(values) != len(names):
        raise Rejected("repeated parameter")
    # Parameter order exactly as in the guide's example URLs.
    if names[:3] not in (
        ["Expires", "Signature", "Key-Pair-Id"],
        ["Policy", "Signature", "Key-Pair-Id"],
    ) or names[3:] not in ([], ["Hash-Algorithm"]):
        raise Rejected(f"unexpected parameters {names}")
    algorithm = values.get("Hash-Algorithm", "SHA1")
    if algorithm not in ("SHA1", "SHA256"):
        raise Rejected(f"unknown Hash-Algorithm {algorithm}")
    public = public_keys.get(values["Key-Pair-Id"])
    if public is None:
        raise Rejected("Key-Pair-Id is not in the key group")

    canned = "Expires" in values
    if canned:
        if not re.fullmatch(r"[0-9]+", values["Expires"]):
            raise Rejected("Expires is not epoch seconds")
        # The guide's canned policy, written out literally (no serializer).
        statement = (
            '{"Statement":[{"Resource":"' + base + '","Condition":{"DateLessThan":'
            '{"AWS:EpochTime":' + values["Expires"] + "}}}]}"
        ).encode()
    else:
        statement = _b64decode_cloudfront(values["Policy"])
        if re.search(rb"\s", statement):
            raise Rejected("policy has white space")
    signature = _b64decode_cloudfront(values["Signature"])
    digest: hashes.HashAlgorithm = hashes.SHA256() if algorithm == "SHA256" else hashes.SHA1()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, statement, padding.PKCS1v15(), digest)
        else:
            public.verify(signature, statement, ec.ECDSA(digest))
    except InvalidSignature:
        raise Rejected("bad signature") from None

    policy = json.loads(statement)
    if set(policy) != {"Statement"} or len(policy["Statement"]) != 1:
        raise Rejected("a policy has exactly one statement")
    entry = policy["Statement"][0]
    if set(entry) != {"Resource", "Condition"}:
        raise Rejected(f"unexpected statement keys {sorted(entry)}")
    if not _wildcard(entry["Resource"]).fullmatch(base):
        raise Rejected(f"{base} is not covered by {entry['Resource']}")
    condition = entry["Condition"]
    if not set(condition) <= {"DateLessThan", "DateGreaterThan", "IpAddress"}:
        raise Rejected(f"unexpected conditions {sorted(condition)}")
    less_than = condition["DateLessThan"]["AWS:EpochTime"]
    if type(less_than) is not int:
        raise Rejected("DateLessThan is not an integer")
    if now is not None:
        if now >= less_than:
            raise Rejected("expired")
        if "DateGreaterThan" in condition and now <= condition["DateGreaterThan"]["AWS:EpochTime"]:
            raise Rejected("not valid yet")
    if "IpAddress" in condition:
        network = ipaddress.ip_network(condition["IpAddress"]["AWS:SourceIp"])
        if network.version != 4:
            raise Rejected("CloudFront policies take IPv4 only")
        if client_ip is not None and ipaddress.ip_address(client_ip) not in network:
            raise Rejected("client address not allowed")
    return Accepted(values["Key-Pair-Id"], algorithm, policy, canned)


# --------------------------------------------------------------------------- formats


def test_canned_policy_bytes_are_exactly_the_documented_statement() -> None:
    assert canned_policy(f"https://{DOMAIN}/a/b.bin", 1357034400) == (
        b'{"Statement":[{"Resource":"https://d111111abcdef8.cloudfront.net/a/b.bin",'
        b'"Condition":{"DateLessThan":{"AWS:EpochTime":1357034400}}}]}'
    )


def test_cloudfront_base64_replaces_plus_equals_and_slash() -> None:
    # b64(fb ff) = "+/8=": every one of the three replaced characters at once.
    assert cloudfront_b64(b"\xfb\xff") == "-~8_"
    assert cloudfront_b64(b"\xfb\xef\xbe") == "----"


# --------------------------------------------------------------------------- botocore


def _botocore(keys: Keys) -> BotocoreCloudFrontSigner:
    private = keys.private[keys.rsa_old]
    assert isinstance(private, rsa.RSAPrivateKey)
    return BotocoreCloudFrontSigner(
        OLD_ID, lambda message: private.sign(message, padding.PKCS1v15(), hashes.SHA1())
    )


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def test_canned_url_is_byte_equal_to_botocore(keys: Keys) -> None:
    ours = sign(signer(key_pair_id=OLD_ID, private_key=str(keys.rsa_old)))
    url = f"https://{DOMAIN}/{KEY}"
    assert ours == _botocore(keys).generate_presigned_url(url, date_less_than=_at(EXPIRES_AT))
    assert ours.startswith(f"{url}?Expires={EXPIRES_AT}&Signature=")
    assert ours.endswith(f"&Key-Pair-Id={OLD_ID}")


def test_key_is_percent_encoded_the_same_in_url_and_policy(keys: Keys) -> None:
    # "+" must reach an S3 origin as %2B (a literal "+" in an S3 path is a
    # space); "~" is unreserved and stays. The Resource is this same string.
    key = "firmware/acme-x1/1.0.0+build=7,a@b~c/app.bin"
    ours = sign(signer(key_pair_id=OLD_ID, private_key=str(keys.rsa_old)), key=key)
    url = f"https://{DOMAIN}/firmware/acme-x1/1.0.0%2Bbuild%3D7%2Ca%40b~c/app.bin"
    assert ours == _botocore(keys).generate_presigned_url(url, date_less_than=_at(EXPIRES_AT))


@pytest.mark.parametrize(
    ("extra", "resource", "skew", "ip"),
    [
        ({}, "object", None, None),
        ({"start_skew": "5m"}, "object", 300, None),
        ({"source_ip": "192.0.2.0/24"}, "object", None, "192.0.2.0/24"),
        ({"source_ip": "192.0.2.7", "start_skew": 60}, "object", 60, "192.0.2.7/32"),
        ({"resource": "directory"}, "directory", None, None),
        (
            {"resource": "directory", "source_ip": "10.0.0.0/8", "start_skew": "1m"},
            "directory",
            60,
            "10.0.0.0/8",
        ),
    ],
    ids=["plain", "start-skew", "source-ip", "ip-and-skew", "directory", "directory-all"],
)
def test_custom_url_is_byte_equal_to_botocore(
    keys: Keys, extra: dict[str, Any], resource: str, skew: int | None, ip: str | None
) -> None:
    ours = sign(signer(key_pair_id=OLD_ID, private_key=str(keys.rsa_old), policy="custom", **extra))
    url = f"https://{DOMAIN}/{KEY}"
    policy_resource = (
        f"https://{DOMAIN}/firmware/acme-x1/1.0.0/*" if resource == "directory" else url
    )
    boto = _botocore(keys)
    policy = boto.build_policy(
        policy_resource,
        _at(EXPIRES_AT),
        date_greater_than=None if skew is None else _at(SIGNED_AT - skew),
        ip_address=ip,
    )
    assert ours == boto.generate_presigned_url(url, policy=policy)
    accepted = verify(ours, {OLD_ID: keys.public(keys.rsa_old)})
    assert accepted.policy["Statement"][0]["Resource"] == policy_resource
    assert accepted.condition["DateLessThan"] == {"AWS:EpochTime": EXPIRES_AT}
    if skew is None:
        assert "DateGreaterThan" not in accepted.condition
    else:
        assert accepted.condition["DateGreaterThan"] == {"AWS:EpochTime": SIGNED_AT - skew}
    if ip is None:
        assert "IpAddress" not in accepted.condition
    else:
        assert accepted.condition["IpAddress"] == {"AWS:SourceIp": ip}


# --------------------------------------------------------------------------- the verifier's view


@pytest.mark.parametrize("policy", ["canned", "custom"])
@pytest.mark.parametrize("hash_algorithm", ["sha1", "sha256"])
@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_signature_verifies_with_the_public_key(
    keys: Keys, key_type: str, hash_algorithm: str, policy: str
) -> None:
    path, key_id = (keys.rsa_old, OLD_ID) if key_type == "rsa" else (keys.ec, EC_ID)
    url = sign(
        signer(
            key_pair_id=key_id,
            private_key=str(path),
            hash_algorithm=hash_algorithm,
            policy=policy,
        )
    )
    accepted = verify(url, {key_id: keys.public(path)})
    assert accepted.canned == (policy == "canned")
    assert accepted.key_pair_id == key_id
    assert accepted.hash_algorithm == hash_algorithm.upper()
    assert accepted.condition == {"DateLessThan": {"AWS:EpochTime": EXPIRES_AT}}
    assert accepted.policy["Statement"][0]["Resource"] == f"https://{DOMAIN}/{KEY}"
    assert url.endswith("&Hash-Algorithm=SHA256") == (hash_algorithm == "sha256")
    # The other key type's public key (or another RSA key) does not verify it.
    other = keys.public(keys.rsa_new)
    with pytest.raises(Rejected, match="bad signature"):
        verify(url, {key_id: other})


def _replace(url: str, name: str, value: str) -> str:
    return re.sub(rf"([?&]){re.escape(name)}=[^&]*", lambda m: f"{m.group(1)}{name}={value}", url)


def _flip(value: str) -> str:
    """One base64 character changed, in the middle of the value."""
    i = len(value) // 2
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


def _param(url: str, name: str) -> str:
    match = re.search(rf"[?&]{re.escape(name)}=([^&]*)", url)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_tampering_with_any_part_of_a_canned_url_fails(keys: Keys, key_type: str) -> None:
    path, key_id = (keys.rsa_old, OLD_ID) if key_type == "rsa" else (keys.ec, EC_ID)
    url = sign(signer(key_pair_id=key_id, private_key=str(path), hash_algorithm="sha256"))
    publics = {key_id: keys.public(path), NEW_ID: keys.public(keys.rsa_new)}
    assert verify(url, publics, now=SIGNED_AT + 1).key_pair_id == key_id
    tampered = {
        "later expiry": _replace(url, "Expires", str(EXPIRES_AT + 3600)),
        "signature": _replace(url, "Signature", _flip(_param(url, "Signature"))),
        "other key id": _replace(url, "Key-Pair-Id", NEW_ID),
        "SHA-1 claimed": url.replace("&Hash-Algorithm=SHA256", ""),
        "other object": url.replace("/1.0.0/", "/1.0.1/"),
        "other host": url.replace(DOMAIN, "d222222abcdef8.cloudfront.net"),
        "other scheme": url.replace("https://", "http://"),
    }
    for what, bad in tampered.items():
        assert bad != url, what
        with pytest.raises(Rejected):
            verify(bad, publics)
    with pytest.raises(Rejected, match="expired"):
        verify(url, publics, now=EXPIRES_AT)


def test_tampering_with_a_custom_policy_fails(keys: Keys) -> None:
    url = sign(
        signer(
            key_pair_id=EC_ID,
            private_key=str(keys.ec),
            policy="custom",
            source_ip="192.0.2.0/24",
            start_skew="5m",
            resource="directory",
        )
    )
    publics = {EC_ID: keys.public(keys.ec)}
    accepted = verify(url, publics, now=SIGNED_AT, client_ip="192.0.2.55")
    # The directory wildcard admits a sibling object with the same parameters.
    sibling = url.replace("/app.bin?", "/bootloader.bin?")
    assert verify(sibling, publics, now=SIGNED_AT, client_ip="192.0.2.55") == accepted
    with pytest.raises(Rejected, match="not covered"):
        verify(url.replace("/1.0.0/", "/1.0.1/"), publics)

    policy = json.loads(_b64decode_cloudfront(_param(url, "Policy")))
    changes: list[Callable[[dict[str, Any]], object]] = [
        lambda s: s["Condition"]["DateLessThan"].update({"AWS:EpochTime": EXPIRES_AT + 1}),
        lambda s: s["Condition"]["IpAddress"].update({"AWS:SourceIp": "0.0.0.0/0"}),
        lambda s: s["Condition"].pop("DateGreaterThan"),
        lambda s: s.update({"Resource": f"https://{DOMAIN}/*"}),
    ]
    for change in changes:
        forged = json.loads(json.dumps(policy))
        change(forged["Statement"][0])
        encoded = cloudfront_b64(json.dumps(forged, separators=(",", ":")).encode())
        with pytest.raises(Rejected, match="bad signature"):
            verify(_replace(url, "Policy", encoded), publics)
    with pytest.raises(Rejected, match="not valid yet"):
        verify(url, publics, now=SIGNED_AT - 300)
    with pytest.raises(Rejected, match="client address"):
        verify(url, publics, now=SIGNED_AT, client_ip="198.51.100.1")


# ------------------------------------------------------------------ rotation and determinism


def test_rotation_switches_key_at_not_before_and_old_urls_live_on(keys: Keys) -> None:
    switch = SIGNED_AT + 3600
    s = signer(
        keys=[
            {
                "key_pair_id": OLD_ID,
                "private_key": str(keys.rsa_old),
                "not_before": SIGNED_AT - 86400,
            },
            # The next key may sit in the config long before it signs.
            {
                "key_pair_id": NEW_ID,
                "private_key": str(keys.rsa_new),
                "not_before": "2026-01-01T01:00:00Z",
            },
        ]
    )
    old_public = {OLD_ID: keys.public(keys.rsa_old)}
    new_public = {NEW_ID: keys.public(keys.rsa_new)}
    for signed_at, publics, other in (
        (switch - 1, old_public, new_public),
        (switch, new_public, old_public),
        (switch + 1, new_public, old_public),
    ):
        url = sign(s, signed_at=signed_at, expires_at=signed_at + 900)
        assert _param(url, "Key-Pair-Id") == next(iter(publics))
        assert verify(url, publics).condition["DateLessThan"]["AWS:EpochTime"] == signed_at + 900
        with pytest.raises(Rejected):
            verify(url, other)
    # Signed by the old key just before the switch: still good after it with
    # the old public key left in the key group, until its own expiry.
    last_old = sign(s, signed_at=switch - 1, expires_at=switch + 899)
    assert verify(last_old, old_public, now=switch + 898).key_pair_id == OLD_ID
    with pytest.raises(Rejected, match="expired"):
        verify(last_old, old_public, now=switch + 899)


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_same_inputs_give_the_same_url_in_every_replica(keys: Keys, key_type: str) -> None:
    path, key_id = (keys.rsa_old, OLD_ID) if key_type == "rsa" else (keys.ec, EC_ID)
    fields = {"key_pair_id": key_id, "private_key": str(path), "hash_algorithm": "sha256"}
    # Two signers built separately stand for two replicas; ECDSA is
    # randomized unless nonces are derived (RFC 6979), so this is the test that
    # catches a random nonce.
    replica_a, replica_b = signer(**fields), signer(**fields)
    first = sign(replica_a)
    assert sign(replica_a) == first
    assert sign(replica_b) == first
    assert sign(replica_a, expires_at=EXPIRES_AT + 1) != first
    custom = {**fields, "policy": "custom", "start_skew": 30}
    assert sign(signer(**custom)) == sign(signer(**custom))


def test_http_scheme_and_a_domain_with_port(keys: Keys) -> None:
    s = build_signer(
        backend(
            domain="cdn.example.com:8443",
            scheme="http",
            key_pair_id=OLD_ID,
            private_key=str(keys.rsa_old),
        ),
        "regions.cdn.backend",
    )
    assert isinstance(s, CloudFrontSigner)
    assert s.kind == "cloudfront"
    url = sign(s)
    assert url.startswith(f"http://cdn.example.com:8443/{KEY}?Expires={EXPIRES_AT}&")
    assert verify(url, {OLD_ID: keys.public(keys.rsa_old)}).canned


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "extra",
    [
        {"key_pair_id": OLD_ID, "private": "rsa_old"},
        {
            "key_pair_id": EC_ID,
            "private": "ec",
            "hash_algorithm": "sha256",
            "policy": "custom",
            "start_skew": "2m",
            "source_ip": "127.0.0.0/8",
            "resource": "directory",
        },
    ],
    ids=["rsa-canned-sha1", "ec-custom-sha256"],
)
def test_gateway_redirects_to_a_url_cloudfront_accepts(
    keys: Keys, tmp_path: Path, extra: dict[str, Any]
) -> None:
    """Gateway → 307 → the verifier (standing in for CloudFront, not reachable here)."""
    path: Path = getattr(keys, extra.pop("private"))
    key_id = extra["key_pair_id"]
    regions = {
        "cdn": {
            "location": [39.04, -77.49],
            "backend": {"type": "cloudfront", "domain": DOMAIN, "private_key": str(path), **extra},
        }
    }
    with running_gateway(tmp_path, regions, signing={"ttl": "15m", "min_remaining": "60s"}) as gw:
        assert gw.app.runtime is not None
        cache = gw.app.runtime.urls
        before = time.time()
        first = gw.get(KEY)
        after = time.time()
        second = gw.get(KEY)
    assert first.status_code == 307
    location = first.headers["location"]
    # Same window, same URL (SPEC §4); a window boundary between the two
    # requests is allowed for.
    starts = {cache.window_of(KEY, before)[1], cache.window_of(KEY, after)[1]}
    if cache.window_of(KEY, time.time())[1] == cache.window_of(KEY, before)[1]:
        assert second.headers["location"] == location
    accepted = verify(location, {key_id: keys.public(path)}, now=time.time(), client_ip="127.0.0.1")
    expiry = accepted.condition["DateLessThan"]["AWS:EpochTime"]
    assert expiry in {start + 900 for start in starts}
    assert location.startswith(f"https://{DOMAIN}/{KEY}?")
    if extra.get("policy") == "custom":
        assert accepted.condition["DateGreaterThan"] == {"AWS:EpochTime": expiry - 900 - 120}
        assert accepted.condition["IpAddress"] == {"AWS:SourceIp": "127.0.0.0/8"}
        assert (
            accepted.policy["Statement"][0]["Resource"]
            == f"https://{DOMAIN}/firmware/acme-x1/1.0.0/*"
        )
        assert location.endswith(f"&Key-Pair-Id={EC_ID}&Hash-Algorithm=SHA256")
    else:
        assert _param(location, "Expires") == str(expiry)
        assert location.endswith(f"&Key-Pair-Id={OLD_ID}")


# --------------------------------------------------------------------------- config errors


@pytest.fixture(scope="module")
def bad_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cloudfront-bad-keys")
    (root / "garbage.pem").write_text("not a key\n")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "public.pem").write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (root / "a-directory").mkdir()
    return {
        "missing": root / "missing.pem",
        "directory": root / "a-directory",
        "garbage": root / "garbage.pem",
        "public": root / "public.pem",
        "encrypted": _write(root / "encrypted.pem", rsa_key, password=b"hunter2"),
        "rsa1024": _write(
            root / "rsa1024.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024)
        ),
        "p384": _write(root / "p384.pem", ec.generate_private_key(ec.SECP384R1())),
        "ed25519": _write(root / "ed25519.pem", ed25519.Ed25519PrivateKey.generate()),
    }


ACCEPTED = "CloudFront accepts RSA-2048 or ECDSA P-256 keys"
BAD_KEY_REASONS = {
    "missing": "cannot read {path}: No such file or directory",
    "directory": "cannot read {path}: Is a directory",
    "garbage": "{path} is not a PEM private key",
    "public": "{path} is not a PEM private key",
    "encrypted": "{path} is an encrypted private key; give it unencrypted (PEM)",
    "rsa1024": "{path} holds an RSA-1024 key; " + ACCEPTED,
    "p384": "{path} holds an EC secp384r1 key; " + ACCEPTED,
    "ed25519": "{path} holds a key of type Ed25519; " + ACCEPTED,
}


@pytest.mark.parametrize("case", sorted(BAD_KEY_REASONS))
def test_unusable_key_is_a_config_error_with_the_field_path(
    bad_keys: dict[str, Path], case: str
) -> None:
    path = bad_keys[case]
    with pytest.raises(ConfigError) as raised:
        signer(key_pair_id=OLD_ID, private_key=f"file:{path}")
    reason = BAD_KEY_REASONS[case].format(path=path)
    assert raised.value.problems == [f"regions.cdn.backend.private_key: {reason}"]


def test_every_bad_rotation_key_is_reported_with_its_index(
    keys: Keys, bad_keys: dict[str, Path]
) -> None:
    with pytest.raises(ConfigError) as raised:
        signer(
            keys=[
                {"key_pair_id": OLD_ID, "private_key": str(keys.rsa_old)},
                {"key_pair_id": NEW_ID, "private_key": str(bad_keys["p384"]), "not_before": 1},
                {"key_pair_id": EC_ID, "private_key": str(bad_keys["missing"]), "not_before": 2},
            ],
            policy="custom",
            source_ip="2001:db8::/32",
        )
    assert raised.value.problems == [
        f"regions.cdn.backend.keys.1.private_key: {bad_keys['p384']} holds an EC secp384r1 key; "
        "CloudFront accepts RSA-2048 or ECDSA P-256 keys",
        f"regions.cdn.backend.keys.2.private_key: cannot read {bad_keys['missing']}: "
        "No such file or directory",
        "regions.cdn.backend.source_ip: CloudFront policies take an IPv4 CIDR only, "
        "not 2001:db8::/32",
    ]


def test_check_config_reports_a_bad_key_at_start(bad_keys: dict[str, Path], tmp_path: Path) -> None:
    """``gateway check-config`` (a real process) finds the key problem, not the first download."""
    generate_key("EdDSA", tmp_path / "keys", "ed1")
    data = config(
        {
            "cdn": {
                "location": [39.04, -77.49],
                "backend": {
                    "type": "cloudfront",
                    "domain": DOMAIN,
                    "key_pair_id": OLD_ID,
                    "private_key": f"file:{bad_keys['encrypted']}",
                },
            }
        }
    )
    data["auth"]["jwks"] = str(tmp_path / "keys" / "jwks.json")
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(tmp_path / "gateway.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"regions.cdn.backend.private_key: {bad_keys['encrypted']} is an encrypted private key; "
        "give it unencrypted (PEM)"
    ]
