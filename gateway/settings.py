"""The configuration file (SPEC §4), read once into typed, frozen settings.

Use :func:`load_settings` (a path) or :func:`parse_settings` (an already-parsed
mapping). Both raise :class:`gateway.errors.ConfigError` whose ``problems``
hold one ``field.path: why`` line per problem, ready to print. Unknown keys
are errors: a typo must never be silently ignored.

Value syntaxes shared by many keys:

- durations: a number of seconds, or ``500ms``, ``30s``, ``15m``, ``1h``, ``7d``;
- sizes: a number of bytes, or ``512B``, ``8KiB``, ``1MiB``, ``1GiB``;
- rates: ``5/s``, ``300/m``, ``1000/h``;
- secrets: ``env:NAME`` (an environment variable), ``file:/path`` (a file's
  content, trailing newline removed), or a literal. This module is the only
  place that reads ``os.environ``. Secrets are ``SecretStr`` and never appear
  in ``repr`` or logs.

Relative file paths are relative to the working directory of the process.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

# --------------------------------------------------------------------------- value types

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from ``30s``-style text or a plain number; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 1h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 30s, 15m, 1h or 7d")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a non-negative duration")
    return seconds


def _parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8KiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ValueError("expected a size such as 8KiB, 1MiB or a number of bytes")
    if size <= 0:
        raise ValueError("expected a positive size")
    return size


def _parse_rate(value: object) -> float:
    if isinstance(value, str) and (m := _RATE.match(value)):
        per = {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
        rate = float(m.group(1)) / per
        if rate > 0:
            return rate
    raise ValueError("expected a rate such as 5/s, 300/m or 1000/h")


def resolve_secret(value: object) -> SecretStr:
    """A secret from ``env:NAME``, ``file:/path`` or a literal; ValueError when unusable."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected a secret: env:NAME, file:/path or a literal")
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        value = os.environ[name]
    elif value.startswith("file:"):
        path = value[5:]
        try:
            value = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError("the secret is empty")
    return SecretStr(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file_path(value: object) -> str:
    """A path to a key file; a ``file:`` prefix is accepted (SPEC §4)."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected a file path")
    return value[5:] if value.startswith("file:") else value


def _network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR such as 10.0.0.0/8")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (CIDR such as 10.0.0.0/8)") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(_parse_size)]
Rate = Annotated[float, BeforeValidator(_parse_rate)]
Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
FilePath = Annotated[str, BeforeValidator(_file_path)]
Network = Annotated[str, BeforeValidator(_network)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class Model(BaseModel):
    """Base of every settings object: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


# --------------------------------------------------------------------------- sections


class ServerSettings(Model):
    trusted_proxies: tuple[Network, ...] = ()
    geo_headers: tuple[Literal["cloudfront", "cloudflare"], ...] = ()
    # Which header the trusted proxies maintain. Only that one is read: a device
    # can send the other one itself, and a proxy that does not know it would
    # pass it through untouched.
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    # Reload when the config file changes (checked every 2 s), besides SIGHUP.
    watch_config: bool = False
    # Repeated identical requests answered from a cache of decisions (0: off).
    decision_cache_size: int = Field(16_384, ge=0)


Algorithm = Literal["EdDSA", "ES256", "ES384", "RS256", "PS256"]
SubjectAttribute = Literal["CN", "O", "OU", "L", "ST", "C", "serialNumber"]


class ClientCertificateSettings(Model):
    """Device identity from a client certificate a trusted load balancer forwards."""

    # AWS ALB: x-amzn-mtls-clientcert; nginx: a header set to $ssl_client_escaped_cert.
    header: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")] = "x-amzn-mtls-clientcert"
    ca: FilePath
    subject: SubjectAttribute = "CN"
    claims: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], SubjectAttribute] = {}
    # alternative: a token or a certificate; required: a certificate always
    # (and a token, if one comes too, must name the same device).
    mode: Literal["alternative", "required"] = "alternative"


class AuthSettings(Model):
    jwks: str
    issuer: str
    audience: str
    algorithms: tuple[Algorithm, ...] = ("EdDSA", "ES256")
    leeway: Duration = 60.0
    max_token_lifetime: Duration = 30 * 86400.0
    revoked: FilePath | None = None
    cache_size: int = Field(100_000, ge=1)

    # A JWKS URL is refreshed this often, and its keys dropped when no refresh
    # has succeeded for max_stale (fail closed).
    client_certificates: ClientCertificateSettings | None = None
    jwks_refresh: Duration = 600.0
    jwks_max_stale: Duration = 86400.0
    jwks_timeout: Duration = 5.0

    @field_validator("jwks")
    @classmethod
    def _jwks_source(cls, value: str) -> str:
        if value.startswith("http://"):
            host = urlsplit(value).hostname or ""
            if not _is_loopback(host):
                raise ValueError("a JWKS URL must be https (plain http only for loopback)")
        return value

    @property
    def jwks_is_url(self) -> bool:
        return self.jwks.startswith(("https://", "http://"))

    @field_validator("algorithms")
    @classmethod
    def _some_algorithm(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm")
        return value


_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_CLAIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AccessRule(Model):
    prefix: str
    # Overrides delivery.mode for keys under this prefix.
    delivery: Literal["redirect", "stream"] | None = None

    @field_validator("prefix")
    @classmethod
    def _template(cls, value: str) -> str:
        for name in _TEMPLATE_FIELD.findall(value):
            if not _CLAIM_NAME.match(name):
                raise ValueError(f"{{{name}}} is not a claim name")
        if "{" in _TEMPLATE_FIELD.sub("", value) or "}" in _TEMPLATE_FIELD.sub("", value):
            raise ValueError("unbalanced { } in prefix template")
        return value


class ResidencyRule(Model):
    countries: tuple[Annotated[str, Field(pattern=r"^[A-Z]{2}$")], ...] = ()
    continents: tuple[Literal["AF", "AN", "AS", "EU", "NA", "OC", "SA"], ...] = ()
    regions: tuple[str, ...]

    @model_validator(mode="after")
    def _place(self) -> ResidencyRule:
        if not self.countries and not self.continents:
            raise ValueError("give countries, continents or both")
        if not self.regions:
            raise ValueError("list at least one region")
        return self


class GeoSettings(Model):
    database: FilePath | None = None
    residency: dict[Name, ResidencyRule] = {}
    default_region: str | None = None
    cache_size: int = Field(65_536, ge=1)


def _instant(value: object) -> int:
    """Unix seconds from an RFC 3339 timestamp (YAML may already have parsed it) or a number."""
    if isinstance(value, bool):
        raise ValueError("expected an RFC 3339 time such as 2026-12-01T00:00:00Z")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expected an RFC 3339 time such as 2026-12-01T00:00:00Z") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("give the time zone, e.g. 2026-12-01T00:00:00Z")
        return int(value.timestamp())
    raise ValueError("expected an RFC 3339 time such as 2026-12-01T00:00:00Z")


Instant = Annotated[int, BeforeValidator(_instant)]
URL = Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")]
KeyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class SecretVersion(Model):
    """One of several rotating secrets: the newest whose ``not_before`` has come signs."""

    id: KeyId | None = None
    secret: Secret
    not_before: Instant | None = None


class _SharedSecretBackend(Model):
    url: URL
    secret: Secret | None = None
    secrets: tuple[SecretVersion, ...] = ()

    @model_validator(mode="after")
    def _one_way(self) -> _SharedSecretBackend:
        if (self.secret is None) == (not self.secrets):
            raise ValueError("give secret or secrets (a list for rotation), exactly one of them")
        return self

    def secret_versions(self) -> tuple[SecretVersion, ...]:
        """The configured secrets as a list, whichever way they were given."""
        if self.secret is not None:
            return (SecretVersion(secret=self.secret),)
        return self.secrets


class LocalBackend(_SharedSecretBackend):
    """The built-in origin (``gateway origin``)."""

    type: Literal["local"]


class NginxBackend(_SharedSecretBackend):
    """nginx with ``secure_link`` (``deploy/nginx/``)."""

    type: Literal["nginx"]


class S3Credentials(Model):
    """One way to get AWS credentials; none at all means botocore's default chain."""

    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    profile: str | None = None
    role_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] | None = None
    external_id: str | None = None
    session_name: Annotated[str, Field(pattern=r"^[\w+=,.@-]{2,64}$")] = "gateway"
    duration: Duration = 3600.0

    @model_validator(mode="after")
    def _one_source(self) -> S3Credentials:
        static = self.access_key_id is not None or self.secret_access_key is not None
        if static and (self.access_key_id is None or self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key")
        if self.session_token is not None and not static:
            raise ValueError("session_token goes with access_key_id and secret_access_key")
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id needs role_arn")
        if static and self.profile is not None:
            raise ValueError("give static keys or a profile, not both")
        if not 900 <= self.duration <= 43200:
            raise ValueError("duration must be between 15m and 12h (STS AssumeRole limits)")
        return self


class S3Backend(Model):
    type: Literal["s3"]
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    region: Annotated[str, Field(pattern=r"^[a-z]{2,4}(-[a-z]+)+-\d+$")]
    endpoint: URL | None = None
    addressing: Literal["virtual", "path"] = "virtual"
    credentials: S3Credentials = S3Credentials()


class CloudFrontKey(Model):
    key_pair_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{8,32}$")]
    private_key: FilePath
    not_before: Instant | None = None


class CloudFrontBackend(Model):
    type: Literal["cloudfront"]
    domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+(:\d+)?$")]
    scheme: Literal["https", "http"] = "https"
    key_pair_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{8,32}$")] | None = None
    private_key: FilePath | None = None
    keys: tuple[CloudFrontKey, ...] = ()
    hash_algorithm: Literal["sha1", "sha256"] = "sha1"
    policy: Literal["canned", "custom"] = "canned"
    # Custom policy only: the URL is valid from signing time minus this
    # (DateGreaterThan), for the IP range given (AWS:SourceIp), and for the
    # object alone or every object under its directory (Resource wildcard).
    start_skew: Duration | None = None
    source_ip: Network | None = None
    resource: Literal["object", "directory"] = "object"

    @model_validator(mode="after")
    def _coherent(self) -> CloudFrontBackend:
        single = self.key_pair_id is not None or self.private_key is not None
        if single and (self.key_pair_id is None or self.private_key is None):
            raise ValueError("give both key_pair_id and private_key")
        if single == bool(self.keys):
            raise ValueError("give either key_pair_id + private_key or keys (for rotation)")
        custom_only = self.start_skew is not None or self.source_ip is not None
        if self.policy == "canned" and (custom_only or self.resource != "object"):
            raise ValueError("start_skew, source_ip and resource need policy: custom")
        return self

    def key_versions(self) -> tuple[CloudFrontKey, ...]:
        if self.key_pair_id is not None and self.private_key is not None:
            return (CloudFrontKey(key_pair_id=self.key_pair_id, private_key=self.private_key),)
        return self.keys


class AzureBackend(Model):
    type: Literal["azure"]
    account: Annotated[str, Field(pattern=r"^[a-z0-9]{3,24}$")]
    container: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9]|-[a-z0-9]){1,61}[a-z0-9]?$")]
    account_key: Secret
    endpoint: URL | None = None
    # The SAS start time is backdated by this, for devices and storage whose
    # clocks run behind.
    start_skew: Duration = 300.0


class GCSBackend(Model):
    type: Literal["gcs"]
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")]
    service_account: FilePath
    endpoint: URL = "https://storage.googleapis.com"


BackendSettings = Annotated[
    LocalBackend | NginxBackend | S3Backend | CloudFrontBackend | AzureBackend | GCSBackend,
    Field(discriminator="type"),
]


def _location(value: object) -> tuple[float, float]:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and -90 <= value[0] <= 90
        and -180 <= value[1] <= 180
    ):
        return (float(value[0]), float(value[1]))
    raise ValueError("expected [latitude, longitude]")


class RegionSettings(Model):
    location: Annotated[tuple[float, float], BeforeValidator(_location)]
    backend: BackendSettings


class SigningSettings(Model):
    ttl: Duration = 900.0
    min_remaining: Duration = 60.0
    # Length of the time window within which every worker and replica issues the
    # same URL for a key; at most ttl - min_remaining. Default: a third of ttl.
    window: Duration | None = None
    cache_size: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _coherent(self) -> SigningSettings:
        # URLs carry whole seconds (S3 X-Amz-Expires, CloudFront epoch time), so
        # the checks use the whole seconds the signers will see.
        if self.ttl_seconds < 2:
            raise ValueError("ttl must be at least 2s")
        room = self.ttl_seconds - self.min_remaining_seconds
        if room < 1:
            raise ValueError("min_remaining must be at least 1s shorter than ttl")
        if self.window is not None and not 1 <= self.window <= room:
            raise ValueError(f"window must be between 1s and ttl - min_remaining ({room}s)")
        return self

    @property
    def ttl_seconds(self) -> int:
        """``ttl`` in whole seconds (rounded down: a URL never lives longer than asked)."""
        return int(self.ttl)

    @property
    def min_remaining_seconds(self) -> int:
        """``min_remaining`` in whole seconds (rounded up: never less life than asked)."""
        return math.ceil(self.min_remaining)

    @property
    def window_seconds(self) -> int:
        """The URL window actually used, in whole seconds: 1 <= window <= ttl - min_remaining."""
        room = self.ttl_seconds - self.min_remaining_seconds
        if self.window is not None:
            return max(1, min(int(self.window), room))
        return max(1, min(self.ttl_seconds // 3, room))


class UpstreamSettings(Model):
    """Stream mode's client towards the storage."""

    connect_timeout: Duration = 5.0
    read_timeout: Duration = 30.0
    pool_size: int = Field(100, ge=1)
    # Extra upstream requests one download may make (failover and resume).
    retry_budget: int = Field(2, ge=0, le=10)


class DeliverySettings(Model):
    mode: Literal["redirect", "stream"] = "redirect"
    upstream: UpstreamSettings = UpstreamSettings()


class HealthSettings(Model):
    # Active checks: a HEAD of a signed URL for ``path`` in every region each
    # interval; any status below 500 within timeout is up (SPEC §4).
    active: bool = True
    interval: Duration = 5.0
    timeout: Duration = 2.0
    unhealthy_after: int = Field(2, ge=1)
    healthy_after: int = Field(2, ge=1)
    path: Annotated[str, Field(pattern=r"^[A-Za-z0-9/._~+=,@-]{1,1024}$")] = "healthcheck"
    # Passive ejection (stream mode: upstream errors, timeouts, 5xx, cut bodies).
    ejection_base: Duration = 30.0
    ejection_max: Duration = 300.0
    max_ejected_share: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _coherent(self) -> HealthSettings:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.ejection_max < self.ejection_base:
            raise ValueError("ejection_max must be at least ejection_base")
        return self


class LimitsSettings(Model):
    rate_per_device: Rate | None = None
    burst_per_device: int = Field(20, ge=1)
    rate_limit_entries: int = Field(1_000_000, ge=1)
    max_concurrent_requests: int = Field(2000, ge=1)
    header_timeout: Duration = 10.0
    max_header_bytes: ByteSize = 8192
    drain_timeout: Duration = 30.0
    # SIGTERM: how long readiness is 503 before the listeners close, so load
    # balancers stop sending new connections first.
    drain_delay: Duration = 0.0


class Settings(Model):
    """The whole configuration. Region order is significant: it breaks ties."""

    server: ServerSettings = ServerSettings()
    auth: AuthSettings
    access: tuple[AccessRule, ...]
    geo: GeoSettings = GeoSettings()
    regions: dict[Name, RegionSettings]
    signing: SigningSettings = SigningSettings()
    delivery: DeliverySettings = DeliverySettings()
    health: HealthSettings = HealthSettings()
    limits: LimitsSettings = LimitsSettings()

    @model_validator(mode="after")
    def _url_lifetime(self) -> Settings:
        # S3 SigV4 and GCS V4 presigned URLs live at most 7 days (X-Amz-Expires /
        # X-Goog-Expires <= 604800): a longer ttl would produce URLs the store refuses.
        capped = [n for n, r in self.regions.items() if r.backend.type in ("s3", "gcs")]
        if capped and self.signing.ttl_seconds > MAX_PRESIGNED_SECONDS:
            raise ValueError(
                f"signing.ttl: at most 7d for s3 and gcs backends (regions {', '.join(capped)})"
            )
        return self

    @property
    def default_region(self) -> str:
        """``geo.default_region``, or the first region in the file."""
        return self.geo.default_region or next(iter(self.regions))


# --------------------------------------------------------------------------- loading


MAX_PRESIGNED_SECONDS = 7 * 86400


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a YAML configuration file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        reason = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: invalid YAML{at}: {reason}"]) from None
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: expected a mapping of sections at the top level"])
    return parse_settings(data)


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Validate an already-parsed configuration mapping."""
    problems: list[str] = []
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = _format(exc)
    # Cross-references are checked on the raw mapping too, so that an operator
    # sees them together with every field problem in one run.
    problems += [p for p in _reference_problems(data) if p not in problems]
    if problems:
        raise ConfigError(problems)
    return settings


def _reference_problems(data: Mapping[str, Any]) -> list[str]:
    """Names that must refer to configured regions, checked defensively on raw data."""
    regions = data.get("regions")
    names = set(regions) if isinstance(regions, Mapping) else None
    problems: list[str] = []
    if isinstance(regions, Mapping) and not regions:
        problems.append("regions: configure at least one region")
    access = data.get("access")
    if isinstance(access, list | tuple) and not access:
        problems.append("access: configure at least one prefix")
    geo = data.get("geo")
    if names is None or not isinstance(geo, Mapping):
        return problems
    default = geo.get("default_region")
    if isinstance(default, str) and default not in names:
        problems.append(f"geo.default_region: {default!r} is not a configured region")
    residency = geo.get("residency")
    if isinstance(residency, Mapping):
        for name, rule in residency.items():
            listed = rule.get("regions") if isinstance(rule, Mapping) else None
            for region in listed if isinstance(listed, list | tuple) else ():
                if isinstance(region, str) and region not in names:
                    problems.append(
                        f"geo.residency.{name}.regions: {region!r} is not a configured region"
                    )
    return problems


_TAGS = {"local", "nginx", "s3", "cloudfront", "azure", "gcs"}
_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
}


def _format(exc: ValidationError) -> list[str]:
    """One ``field.path: why`` line per problem."""
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        # The backend union puts its tag in the path (regions.X.backend.local.url): drop it.
        if len(loc) >= 4 and loc[0] == "regions" and loc[2] == "backend" and loc[3] in _TAGS:
            del loc[3]
        path = ".".join(loc)
        kind = error["type"]
        if kind in _MESSAGES:
            message = _MESSAGES[kind]
        elif kind == "value_error":
            message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        elif kind == "union_tag_invalid":
            message = f"unknown backend type; expected one of: {error['ctx']['expected_tags']}"
        elif kind == "union_tag_not_found":
            message = "missing 'type' (the backend type)"
        else:
            message = error["msg"][0].lower() + error["msg"][1:]
        for line in message.splitlines():
            # Model-level validators report their own full paths.
            lines.append(line if ": " in line and not path else f"{path}: {line}")
    return lines
