"""The ``local`` backend: URLs for the built-in origin (``gateway origin``).

Format (ours, verified by :mod:`gateway.origin`)::

    {url}{path}?expires={unix seconds}&sig={base64url(HMAC-SHA256(secret, "{expires}\\n{path}"))}

``path`` is the URL path exactly as sent on the wire (the origin checks the raw
request path, so nothing is lost to re-encoding); base64url is RFC 4648 §5
without padding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.signers import KeyRing, SignedURL

if TYPE_CHECKING:
    from gateway.settings import LocalBackend


def local_signature(secret: bytes, path: str, expires: int) -> str:
    """The ``sig`` query value for ``path`` valid until ``expires``."""
    mac = hmac.new(secret, f"{expires}\n{path}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify_local_signature(secret: bytes, path: str, expires: int, sig: str) -> bool:
    """True when ``sig`` is the signature of ``path`` and ``expires`` (constant time)."""
    return hmac.compare_digest(local_signature(secret, path, expires), sig)


def create(settings: LocalBackend, field: str) -> LocalSigner:
    """The signer for a ``local`` backend's settings."""
    return LocalSigner(
        settings.url,
        KeyRing(
            [
                (v.not_before, v.secret.get_secret_value().encode())
                for v in settings.secret_versions()
            ]
        ),
    )


class LocalSigner:
    """Signs URLs for one built-in origin.

    With several secrets (rotation), the newest active at ``signed_at`` signs;
    the origin is started with every secret still in use (``--secret`` repeated)
    and accepts a URL signed by any of them.
    """

    kind = "local"

    def __init__(self, url: str, secret: bytes | KeyRing[bytes]) -> None:
        parts = urlsplit(url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._secrets = secret if isinstance(secret, KeyRing) else KeyRing([(None, secret)])

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        # Object keys are validated to URL-safe characters (SPEC §3), so the key
        # is already its own path encoding.
        path = f"{self._prefix}/{key}"
        sig = local_signature(self._secrets.active(signed_at), path, expires_at)
        return SignedURL(f"{self._origin}{path}?expires={expires_at}&sig={sig}", expires_at)

    async def aclose(self) -> None:
        return None
