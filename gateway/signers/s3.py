"""The ``s3`` backend: SigV4 presigned GET URLs for Amazon S3 and S3-compatible stores.

Format (Amazon S3 API Reference, "Authenticating Requests: Using Query
Parameters (AWS Signature Version 4)")::

    https://{bucket}.s3.{region}.amazonaws.com/{key}            addressing: virtual
    https://s3.{region}.amazonaws.com/{bucket}/{key}            addressing: path
    {endpoint}/{bucket}/{key}, {scheme}://{bucket}.{endpoint host}/{key}   with endpoint
        ?X-Amz-Algorithm=AWS4-HMAC-SHA256
        &X-Amz-Credential={access key id}%2F{YYYYMMDD}%2F{region}%2Fs3%2Faws4_request
        &X-Amz-Date={signed_at as YYYYMMDDThhmmssZ}
        &X-Amz-Expires={expires_at - signed_at}
        &X-Amz-SignedHeaders=host
        [&X-Amz-Security-Token={session token}]      temporary credentials only
        &X-Amz-Signature={hex HMAC-SHA256}

The object key is percent-encoded as S3 wants it in the canonical URI
(``UriEncode``, slashes kept: ``+ = , @`` become ``%2B %3D %2C %40``, ``~``
stays). The signature itself is botocore's (``S3SigV4QueryAuth``: canonical
request with ``UNSIGNED-PAYLOAD`` and the ``host`` header, string to sign,
derived key) with one change: the signing time is ``signed_at`` instead of the
wall clock, so every worker and replica issues the same URL within a window
(SPEC §4). The bytes equal ``generate_presigned_url("get_object", ...)`` of a
botocore S3 client (``signature_version="s3v4"``) at the same clock; the tests
check that, and check the URLs with a verifier written from the AWS document.

Credentials come from botocore, resolved off the event loop (a worker thread)
the first time they are needed and whenever they must be refreshed:

- ``access_key_id`` + ``secret_access_key`` [+ ``session_token``]: static;
- ``profile``: a named profile of the shared AWS config files;
- ``role_arn`` [+ ``external_id``]: STS ``AssumeRole`` (with ``ExternalId``),
  using the static keys, the profile or else the default chain as the source
  credentials, refreshed before they expire;
- nothing: botocore's default chain (environment, web identity on EKS,
  container and instance metadata, shared files).

A URL signed with temporary credentials stops working when they expire, so its
:class:`~gateway.signers.SignedURL` ``expires_at`` is capped at their expiry:
the URL cache never hands it out past that.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import botocore.auth
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.awsrequest import AWSRequest

from gateway.errors import BackendError, ConfigError
from gateway.signers import SignedURL

if TYPE_CHECKING:
    from gateway.settings import S3Backend, S3Credentials

log = logging.getLogger("gateway.signers.s3")

# "Authenticating Requests: Using Query Parameters", X-Amz-Expires: "minimum
# value you can set is 1, and the maximum is 604800 (seven days)".
MAX_EXPIRES = 604_800
# The X-Amz-Date format (ISO 8601 basic, UTC).
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
# After a failed attempt to get or refresh credentials, callers are answered
# from that failure (or the still valid old credentials) for this long, so a
# burst of cache misses does not become a burst of STS or metadata calls.
_RETRY_AFTER = 5.0
# STS is called from a worker thread; bounded, so a hung endpoint cannot pin it.
_STS_CONFIG = botocore.config.Config(
    connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
)

Addressing = Literal["virtual", "path"]


def create(settings: S3Backend, field: str, *, sts_endpoint: str | None = None) -> S3Signer:
    """The signer for an ``s3`` backend's settings.

    Problems found without any network call (an impossible addressing, a
    region no AWS partition knows without ``endpoint``, a profile that does
    not exist or gives half a key pair) raise :class:`ConfigError` with one
    ``field.path: why`` line each. Credentials that need the network (the
    default chain, ``role_arn``) are resolved at the first signing.

    ``sts_endpoint`` overrides the STS URL for ``role_arn`` (tests point it at
    a local fake STS); it is not a configuration key.
    """
    problems: list[str] = []
    prefix = ""
    try:
        prefix = object_url_prefix(
            settings.bucket, settings.region, settings.endpoint, settings.addressing
        )
    except InvalidAddress as exc:
        problems.append(f"{field}.{exc.setting}: {exc}")
    credentials: AWSCredentials | None = None
    try:
        credentials = credentials_from_settings(
            settings.credentials, settings.region, f"{field}.credentials", sts_endpoint
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or credentials is None:
        raise ConfigError(problems)
    return S3Signer(prefix=prefix, region=settings.region, credentials=credentials)


class S3Signer:
    """Presigns GET URLs for the objects of one bucket.

    Build it with :func:`create` from settings, or directly::

        S3Signer(prefix=object_url_prefix("fw-eu", "eu-central-1", None, "virtual"),
                 region="eu-central-1",
                 credentials=AWSCredentials.fixed(botocore.credentials.Credentials(ak, sk)))
    """

    kind = "s3"

    def __init__(self, *, prefix: str, region: str, credentials: AWSCredentials) -> None:
        self._prefix = prefix
        self._region = region
        self._credentials = credentials

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        lifetime = expires_at - signed_at
        if not 1 <= lifetime <= MAX_EXPIRES:
            raise ValueError(f"an S3 presigned URL lives 1 s to 7 days, not {lifetime} s")
        current = await self._credentials.current()
        # UriEncode of the S3 canonical URI: every byte but A-Z a-z 0-9 - . _ ~
        # is %XX, and the object key's slashes stay ("Create a canonical
        # request", CanonicalURI). botocore's serializer encodes the key the same.
        url = presign_get(
            self._prefix + quote(key, safe="/~"),
            current.credentials,
            self._region,
            signed_at,
            lifetime,
        )
        if current.expiry is not None and current.expiry < expires_at:
            expires_at = current.expiry
        return SignedURL(url, expires_at)

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- URLs


class InvalidAddress(ValueError):
    """An endpoint/addressing/region combination no URL can be built for."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def object_url_prefix(
    bucket: str, region: str, endpoint: str | None, addressing: Addressing
) -> str:
    """The URL an object key (already encoded) is appended to, ending in ``/``.

    Without ``endpoint``: the regional S3 endpoint of the region's AWS
    partition (``s3.{region}.amazonaws.com``, also for us-east-1, whose
    regional endpoint S3 serves as well as the legacy ``s3.amazonaws.com``).
    Raises :class:`InvalidAddress` for combinations that cannot work.
    """
    if endpoint is None:
        suffix = _dns_suffix(region)
        if suffix is None:
            raise InvalidAddress(
                "region", f"no AWS partition has region {region!r}; set endpoint for it"
            )
        scheme, netloc, path = "https", f"s3.{region}.{suffix}", ""
    else:
        parts = urlsplit(endpoint)
        scheme, netloc, path = parts.scheme, parts.netloc, parts.path.rstrip("/")
    if addressing == "path":
        return f"{scheme}://{netloc}{path}/{bucket}/"
    host = urlsplit(f"//{netloc}").hostname or ""
    if _is_ip(host):
        # A bucket cannot be a subdomain of an IP address (botocore falls back
        # to path-style here; we say so instead of silently changing it).
        raise InvalidAddress(
            "addressing", f"virtual needs a DNS name in endpoint, not {host}; use addressing: path"
        )
    if "." in bucket and scheme == "https":
        # S3 User Guide, "Virtual hosting of buckets": the wildcard TLS
        # certificate *.s3.<region>.amazonaws.com does not match a dotted name.
        raise InvalidAddress(
            "addressing",
            f"virtual-hosted https URLs cannot carry the dotted bucket name {bucket!r} "
            "(the TLS certificate does not match it); use addressing: path",
        )
    return f"{scheme}://{bucket}.{netloc}{path}/"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _dns_suffix(region: str) -> str | None:
    """``amazonaws.com``, ``amazonaws.com.cn``, ...: the DNS suffix of the region's partition."""
    partitions = botocore.loaders.create_loader().load_data("partitions")["partitions"]
    for partition in partitions:
        if region in partition["regions"] or re.match(partition["regionRegex"], region):
            return str(partition["outputs"]["dnsSuffix"])
    return None


class _PinnedS3QueryAuth(botocore.auth.S3SigV4QueryAuth):  # type: ignore[misc]
    """botocore's S3 query-string signer, signing at a given time instead of now."""

    def __init__(self, credentials: Any, region: str, expires: int, timestamp: str) -> None:
        super().__init__(credentials, "s3", region, expires=expires)
        self._timestamp = timestamp

    def add_auth(self, request: AWSRequest) -> None:
        # SigV4Auth.add_auth with request.context["timestamp"] from the caller
        # rather than botocore.auth.get_current_datetime(); the steps after it
        # are botocore's own (query parameters, canonical request, string to
        # sign, signature).
        request.context["timestamp"] = self._timestamp
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def presign_get(url: str, credentials: Any, region: str, signed_at: int, expires: int) -> str:
    """``url`` (scheme, host and encoded path) presigned for GET at ``signed_at``.

    ``credentials`` is anything with ``access_key``, ``secret_key`` and
    ``token`` (botocore's ``ReadOnlyCredentials``); ``expires`` is X-Amz-Expires.
    """
    request = AWSRequest(method="GET", url=url)
    timestamp = time.strftime(_AMZ_DATE, time.gmtime(signed_at))
    _PinnedS3QueryAuth(credentials, region, expires, timestamp).add_auth(request)
    return str(request.url)


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class CurrentCredentials:
    """One consistent set of credentials and how long it may be used."""

    credentials: Any  # botocore ReadOnlyCredentials(access_key, secret_key, token, ...)
    expiry: int | None  # Unix seconds at which they stop working; None: they do not expire
    refresh_at: float | None  # from then on, newer ones are fetched (botocore's advisory time)
    required_at: float | None  # from then on, they are not used without a refresh (mandatory)


class AWSCredentials:
    """The AWS credentials of one signer, resolved and refreshed off the event loop.

    ``resolve`` returns botocore credentials (``Credentials``, or
    ``RefreshableCredentials`` that refresh themselves) or ``None`` when none
    can be found. It may do network I/O (instance metadata, STS), so it runs in
    a worker thread, once for all concurrent signers, and so does every
    refresh. Failures become :class:`BackendError` (502) and are not retried
    for a few seconds.
    """

    def __init__(self, resolve: Callable[[], Any], *, source: str) -> None:
        self._resolve = resolve
        self._source = source
        self._resolved: Any = None
        self._current: CurrentCredentials | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._error: str | None = None

    @classmethod
    def fixed(cls, credentials: Any, source: str = "static keys") -> AWSCredentials:
        """Credentials already at hand: static keys, or refreshable ones built elsewhere."""
        instance = cls(lambda: credentials, source=source)
        instance._resolved = credentials
        if not isinstance(credentials, botocore.credentials.RefreshableCredentials):
            # Static keys never change: no thread, no lock, ever.
            instance._current = _snapshot(credentials)
        return instance

    async def current(self) -> CurrentCredentials:
        """Credentials to sign with now; :class:`BackendError` when there are none."""
        current = self._current
        if current is not None and self._usable(current):
            return current
        async with self._lock:
            current = self._current
            if current is not None and self._usable(current):
                return current
            if self._error is not None and time.monotonic() < self._retry_at:
                raise BackendError(self._error)
            try:
                current = await asyncio.to_thread(self._load)
            except BackendError as exc:
                self._error = exc.detail
                self._retry_at = time.monotonic() + _RETRY_AFTER
                raise
            self._error = None
            self._current = current
            if current.refresh_at is not None and time.time() >= current.refresh_at:
                # botocore keeps the old credentials when an early (advisory)
                # refresh fails: use them, and try again shortly.
                self._retry_at = time.monotonic() + _RETRY_AFTER
            return current

    def _usable(self, current: CurrentCredentials) -> bool:
        if current.refresh_at is None or current.required_at is None:
            return True
        now = time.time()
        if now < current.refresh_at:
            return True
        return now < current.required_at and time.monotonic() < self._retry_at

    def _load(self) -> CurrentCredentials:
        """Resolve (first time) or refresh (when due) the credentials; in a worker thread."""
        try:
            resolved = self._resolved
            if resolved is None:
                resolved = self._resolve()
                if resolved is None:
                    raise _NoCredentials
                self._resolved = resolved
            return _snapshot(resolved)
        except _NoCredentials:
            log.warning("s3 backend: no AWS credentials found (%s)", self._source)
            raise BackendError("no AWS credentials") from None
        except Exception as exc:
            # botocore's, STS's and the metadata services' errors all end here:
            # the device gets a 502, the operator the reason.
            log.warning(
                "s3 backend: cannot get AWS credentials (%s): %s: %s",
                self._source,
                type(exc).__name__,
                exc,
            )
            raise BackendError("cannot get AWS credentials") from None


class _NoCredentials(Exception):
    pass


def _snapshot(credentials: Any) -> CurrentCredentials:
    """A consistent (keys, expiry) pair; refreshes ``credentials`` first when botocore says so."""
    for _ in range(3):
        frozen = credentials.get_frozen_credentials()  # refreshes when due
        # RefreshableCredentials keep their expiry and refresh times in private
        # attributes (botocore has no public accessor); plain Credentials have none.
        expiry_time = getattr(credentials, "_expiry_time", None)
        if getattr(credentials, "_frozen_credentials", frozen) is frozen:
            break  # no other thread refreshed between the two reads
    if not frozen.access_key or not frozen.secret_key:
        raise _NoCredentials
    if expiry_time is None:
        return CurrentCredentials(frozen, None, None, None)
    expiry = float(expiry_time.timestamp())
    # botocore's defaults (15 and 10 min) for objects that do not say.
    advisory = float(getattr(credentials, "_advisory_refresh_timeout", 15 * 60))
    mandatory = float(getattr(credentials, "_mandatory_refresh_timeout", 10 * 60))
    return CurrentCredentials(frozen, math.floor(expiry), expiry - advisory, expiry - mandatory)


def credentials_from_settings(
    settings: S3Credentials, region: str, field: str, sts_endpoint: str | None = None
) -> AWSCredentials:
    """The credential source the settings describe; ``field`` is their path, for errors."""
    static = None
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        static = botocore.credentials.Credentials(
            settings.access_key_id.get_secret_value(),
            settings.secret_access_key.get_secret_value(),
            None if settings.session_token is None else settings.session_token.get_secret_value(),
            method="config",
        )
    if settings.profile is not None:
        session = _profile_session(settings.profile, f"{field}.profile")
        source = f"profile {settings.profile}"
    else:
        session = botocore.session.get_session()
        source = "static keys" if static is not None else "default credential chain"
    if settings.role_arn is None:
        if static is not None:
            return AWSCredentials.fixed(static)
        return AWSCredentials(session.get_credentials, source=source)
    role = _AssumeRole(
        session=session,
        source=(lambda: static) if static is not None else session.get_credentials,
        role_arn=settings.role_arn,
        external_id=settings.external_id,
        session_name=settings.session_name,
        duration=int(settings.duration),
        region=region,
        sts_endpoint=sts_endpoint,
    )
    return AWSCredentials(role.credentials, source=f"role {settings.role_arn} from {source}")


def _profile_session(name: str, field: str) -> Any:
    """A botocore session for profile ``name``; ConfigError when it cannot serve credentials."""
    session = botocore.session.Session(profile=name)
    try:
        profiles = session.full_config.get("profiles", {})
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError([f"{field}: cannot read the AWS config files: {exc}"]) from None
    if name not in profiles:
        files = " and ".join(
            str(session.get_config_variable(v)) for v in ("config_file", "credentials_file")
        )
        raise ConfigError([f"{field}: no AWS profile named {name!r} in {files}"])
    profile = profiles[name]
    if ("aws_access_key_id" in profile) != ("aws_secret_access_key" in profile):
        raise ConfigError(
            [
                f"{field}: profile {name!r} gives only one of "
                "aws_access_key_id and aws_secret_access_key"
            ]
        )
    return session


class _AssumeRole:
    """STS AssumeRole (with ExternalId) as botocore refreshable credentials."""

    def __init__(
        self,
        *,
        session: Any,
        source: Callable[[], Any],
        role_arn: str,
        external_id: str | None,
        session_name: str,
        duration: int,
        region: str,
        sts_endpoint: str | None,
    ) -> None:
        self._session = session
        self._source = source
        self._request: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": duration,
        }
        if external_id is not None:
            # IAM User Guide, "Access to AWS accounts owned by third parties":
            # the role's trust policy requires sts:ExternalId to match.
            self._request["ExternalId"] = external_id
        self._region = region
        self._sts_endpoint = sts_endpoint
        # botocore refreshes 15 min (advisory) / 10 min (mandatory) before
        # expiry; a 15-minute session would be "due" at once, so scale down.
        self._advisory = min(15 * 60, duration // 3)
        self._mandatory = min(10 * 60, duration // 6)

    def credentials(self) -> Any:
        """The first credentials, refreshable (blocking: call it in a worker thread)."""
        return botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata=self._fetch(),
            refresh_using=self._fetch,
            method="assume-role",
            advisory_timeout=self._advisory,
            mandatory_timeout=self._mandatory,
        )

    def _fetch(self) -> dict[str, str]:
        source = self._source()
        if source is None:
            raise _NoCredentials
        frozen = source.get_frozen_credentials()
        client = self._session.create_client(
            "sts",
            region_name=self._region,
            endpoint_url=self._sts_endpoint,
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
            config=_STS_CONFIG,
        )
        try:
            response = client.assume_role(**self._request)
        finally:
            client.close()
        issued = response["Credentials"]
        return {
            "access_key": issued["AccessKeyId"],
            "secret_key": issued["SecretAccessKey"],
            "token": issued["SessionToken"],
            "expiry_time": issued["Expiration"].isoformat(),
        }
