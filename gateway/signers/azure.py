"""The ``azure`` backend: Azure Blob Storage service SAS URLs (read-only, one blob).

Format (Microsoft Learn, "Create a service SAS", REST API reference)::

    {endpoint}/{container}/{blob}?st=...&se=...&sp=r&spr=https&sv=2025-11-05&sr=b&sig=...

- ``endpoint`` is the Blob service base URL as the Azure SDK takes it:
  ``https://{account}.blob.core.windows.net`` by default, or for Azurite
  ``http://127.0.0.1:10000/devstoreaccount1`` (the account is the first path
  segment there).
- ``st`` (signedStart) is ``signed_at - start_skew`` and ``se`` (signedExpiry)
  is ``expires_at``, both ISO 8601 UTC without fractional seconds
  (``YYYY-MM-DDThh:mm:ssZ``), the form the same page lists as accepted.
- ``sp=r`` (read), ``sr=b`` (the signed resource is one blob), ``sv`` the
  signed version :data:`SAS_VERSION`, ``spr`` (signedProtocol) ``https``, or
  ``https,http`` when the endpoint itself is plain http (Azurite, a local
  proxy); the page allows only those two values.
- ``sig`` is ``base64(HMAC-SHA256(base64decode(account_key), StringToSign))``,
  StringToSign as in :func:`sas_string_to_sign`.

The query is written in the order and with the percent-encoding
(``urllib.parse.quote``, ``/`` left alone) of ``azure-storage-blob``'s
``generate_blob_sas``, so a SAS from this module and one from the SDK for the
same inputs are byte-identical (the tests check it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from gateway.errors import ConfigError
from gateway.signers import SignedURL

if TYPE_CHECKING:
    from gateway.settings import AzureBackend

# The storage service version the SAS is signed for (``sv``). Every version
# since 2020-12-06 uses the same service-SAS StringToSign for Blob resources
# (the "Version 2020-12-06 and later" section of "Create a service SAS");
# 2025-11-05 is generally available in Azure and accepted by Azurite 3.37.
# Without an x-ms-version header (a device's plain GET) the service also runs
# the request with this version.
SAS_VERSION = "2025-11-05"

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _iso(unix: int) -> str:
    return time.strftime(_TIME_FORMAT, time.gmtime(unix))


def sas_string_to_sign(
    *,
    account: str,
    container: str,
    blob: str,
    start: str,
    expiry: str,
    protocol: str,
    version: str = SAS_VERSION,
) -> str:
    """The service-SAS StringToSign for reading one blob (``sp=r``, ``sr=b``).

    "Create a service SAS", *Version 2020-12-06 and later*, Blob resources:
    sixteen fields joined by ``\\n``; every optional field we do not use is an
    empty string that keeps its newline::

        signedPermissions  signedStart  signedExpiry  canonicalizedResource
        signedIdentifier  signedIP  signedProtocol  signedVersion
        signedResource  signedSnapshotTime  signedEncryptionScope
        rscc  rscd  rsce  rscl  rsct

    (The page's code block drops the final ``rsct`` line; the service, the
    Azure SDKs and Azurite all sign it, as an empty string here.)
    ``canonicalizedResource`` is ``/blob/{account}/{container}/{blob}`` with the
    blob name URL-decoded, i.e. the object key as it is.
    """
    fields = [
        "r",  # signedPermissions
        start,  # signedStart
        expiry,  # signedExpiry
        f"/blob/{account}/{container}/{blob}",  # canonicalizedResource
        "",  # signedIdentifier (no stored access policy)
        "",  # signedIP
        protocol,  # signedProtocol
        version,  # signedVersion
        "b",  # signedResource
        "",  # signedSnapshotTime
        "",  # signedEncryptionScope
        "",  # rscc
        "",  # rscd
        "",  # rsce
        "",  # rscl
        "",  # rsct
    ]
    return "\n".join(fields)


def decode_account_key(value: str) -> bytes:
    """The account key's bytes; ValueError when it is not base64 (as the portal shows it)."""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error
        raise ValueError(
            "not a base64 storage account key (copy key1 or key2 from the portal)"
        ) from None


def create(settings: AzureBackend, field: str) -> AzureSigner:
    """The signer for an ``azure`` backend's settings; ConfigError for a bad account key."""
    try:
        key = decode_account_key(settings.account_key.get_secret_value())
    except ValueError as exc:
        raise ConfigError([f"{field}.account_key: {exc}"]) from None
    endpoint = settings.endpoint or f"https://{settings.account}.blob.core.windows.net"
    return AzureSigner(
        account=settings.account,
        container=settings.container,
        account_key=key,
        endpoint=endpoint,
        start_skew=math.ceil(settings.start_skew),
    )


class AzureSigner:
    """Signs read-only service SAS URLs for blobs in one container.

    ``sign(key, signed_at, expires_at)`` is a pure function of its arguments:
    ``st = signed_at - start_skew``, ``se = expires_at``. Rotating the account
    key is a config reload with ``account_key`` switched between key1 and key2
    (URLs signed with the old key die when that key is regenerated).
    """

    kind = "azure"

    def __init__(
        self,
        *,
        account: str,
        container: str,
        account_key: bytes,
        endpoint: str,
        start_skew: int = 300,
    ) -> None:
        self._account = account
        self._container = container
        self._key = account_key
        self._base = f"{endpoint.rstrip('/')}/{container}/"
        # "Create a service SAS", signedProtocol: https, or https,http; HTTP
        # alone is not a permitted value, so a plain-http endpoint gets both.
        self._protocol = "https" if urlsplit(endpoint).scheme == "https" else "https,http"
        self._start_skew = start_skew

    def sas(self, key: str, start: int, expiry: int) -> str:
        """The SAS query string (no leading ``?``) for reading blob ``key``."""
        st, se = _iso(start), _iso(expiry)
        string_to_sign = sas_string_to_sign(
            account=self._account,
            container=self._container,
            blob=key,
            start=st,
            expiry=se,
            protocol=self._protocol,
        )
        mac = hmac.new(self._key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()
        params = (
            ("st", st),
            ("se", se),
            ("sp", "r"),
            ("spr", self._protocol),
            ("sv", SAS_VERSION),
            ("sr", "b"),
            ("sig", base64.b64encode(mac).decode("ascii")),
        )
        return "&".join(f"{name}={quote(value, safe='/')}" for name, value in params)

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        # The blob name in the URL path is percent-encoded like the SDK's
        # BlobClient does (everything but unreserved characters and "/"), so
        # "+" is never read as a space on the way in.
        path = quote(key, safe="/~")
        query = self.sas(key, signed_at - self._start_skew, expires_at)
        return SignedURL(f"{self._base}{path}?{query}", expires_at)

    async def aclose(self) -> None:
        return None
