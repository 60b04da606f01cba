"""The ``nginx`` backend: URLs that nginx's ``secure_link`` module accepts.

The nginx side (``deploy/nginx/gateway-origin.conf``) is::

    secure_link     $arg_md5,$arg_expires;
    secure_link_md5 "$secure_link_expires$uri $gateway_secret";

so a URL is::

    {url}{path}?md5={base64url(MD5("{expires}{path} {secret}"))}&expires={unix seconds}[&key={id}]

Every byte of it is fixed by the ngx_http_secure_link_module documentation
(https://nginx.org/en/docs/http/ngx_http_secure_link_module.html):

- ``secure_link $arg_md5,$arg_expires`` takes the checksum before the comma
  and the expiry after it; ``$secure_link_expires`` is the expiry text exactly
  as sent, so ``expires`` is plain decimal Unix seconds.
- "The MD5 hash value passed in a request is encoded in base64url": RFC 4648
  §5 alphabet (``-`` and ``_``). nginx decodes it with
  ``ngx_decode_base64url``, which takes unpadded input, so no ``=`` is sent.
- ``$uri`` is the *normalized* request path: percent-decoded, dot segments
  resolved, slashes merged. Object keys are validated to
  ``A-Za-z0-9/._-~+=,@`` with no empty or dot segments (SPEC §3) and
  :func:`create` holds the URL's own path prefix to the same rule, so the path
  as sent is already what ``$uri`` will be and needs no encoding.
- nginx answers ``$secure_link = ""`` (checksum wrong or missing) and ``"0"``
  (past ``expires``); the shipped config maps them to ``403`` and ``410``.

Rotation: ``secrets`` lists several secrets with an ``id`` each. The newest
whose ``not_before`` has come (at the URL's ``signed_at``) signs, and the URL
names it with ``&key={id}``; nginx picks the secret to check against with
``map $arg_key $gateway_secret { ... }``, so every listed secret verifies for
as long as nginx's map has it. A URL whose secret has no ``id`` (the single
``secret:`` form) carries no ``key`` and is checked against the map's
``default``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.signers import KeyRing, SignedURL

if TYPE_CHECKING:
    from gateway.settings import NginxBackend

__all__ = ["NginxSigner", "create", "secure_link_md5"]

# A secret lives in a double-quoted nginx config string. nginx expands "$name"
# there and treats backslash and the quotes specially; control characters
# cannot be written at all. A secret with any of these could never match, so
# it is refused at start instead of turning every download into a 403.
_UNWRITABLE_IN_NGINX = re.compile(r"[$\"'\\\x00-\x1f\x7f]")
# The URL's path prefix, like the object keys (SPEC §3): characters nginx's
# $uri keeps exactly as sent (nothing to percent-decode), no empty or dot
# segments (nothing to merge or resolve).
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~+=,@-]+")


def secure_link_md5(secret: str, uri: str, expires: int) -> str:
    """The ``md5`` query value for ``uri`` (nginx's ``$uri``) valid until ``expires``.

    The hashed text is ``secure_link_md5 "$secure_link_expires$uri <secret>"``
    expanded: the expiry, the path, one space, the secret (UTF-8, as nginx
    reads its config file).
    """
    digest = hashlib.md5(f"{expires}{uri} {secret}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class _Secret:
    id: str | None
    value: str = dataclasses.field(repr=False)  # never in a repr or a log line


def create(settings: NginxBackend, field: str) -> NginxSigner:
    """The signer for an ``nginx`` backend's settings.

    Raises :class:`ConfigError` (one ``field.path: why`` line per problem) for
    several secrets without an ``id`` each, duplicate ids, secrets nginx's
    config cannot hold, and a URL path prefix nginx would rewrite.
    """
    problems: list[str] = []
    prefix = urlsplit(settings.url).path.rstrip("/")
    if prefix and not all(
        _PLAIN_SEGMENT.fullmatch(s) and s not in (".", "..") for s in prefix[1:].split("/")
    ):
        problems.append(
            f"{field}.url: the path must be plain segments of A-Za-z0-9._~+=,@- "
            "(nginx checks the decoded, normalized path, so an encoded or "
            "dotted path could never verify)"
        )

    versions = settings.secret_versions()
    single = settings.secret is not None
    paths = (
        [f"{field}.secret"] if single else [f"{field}.secrets.{i}" for i in range(len(versions))]
    )
    for path, version in zip(paths, versions, strict=True):
        secret_field = path if single else f"{path}.secret"
        if _UNWRITABLE_IN_NGINX.search(version.secret.get_secret_value()):
            problems.append(
                f"{secret_field}: nginx cannot hold this secret in its config; "
                "avoid $ quotes backslash and control characters "
                "(openssl rand -base64 32 gives a good one)"
            )
    if len(versions) > 1:
        for path, version in zip(paths, versions, strict=True):
            if version.id is None:
                problems.append(
                    f"{path}.id: required when several secrets are listed "
                    "(the URL names its secret with &key=<id> for nginx's map)"
                )
        # nginx's map matches strings case-insensitively ("2026a" and "2026A"
        # are one entry, and `nginx -t` calls them a conflicting parameter).
        counts = Counter(v.id.lower() for v in versions if v.id is not None)
        for path, version in zip(paths, versions, strict=True):
            if version.id is not None and counts[version.id.lower()] > 1:
                problems.append(
                    f"{path}.id: duplicate id {version.id!r} (ids are compared ignoring case)"
                )
    if problems:
        raise ConfigError(problems)

    return NginxSigner(
        settings.url,
        KeyRing([(v.not_before, _Secret(v.id, v.secret.get_secret_value())) for v in versions]),
    )


class NginxSigner:
    """Signs URLs for one nginx server with ``secure_link`` (see the module docstring).

    Usage::

        signer = create(settings, "regions.eu.backend")
        signed = await signer.sign("firmware/acme-x1/1.0.0/app.bin", signed_at, expires_at)
        # signed.url == "https://dl.example.com/firmware/acme-x1/1.0.0/app.bin?md5=...&expires=..."
    """

    kind = "nginx"

    def __init__(self, url: str, secrets: KeyRing[_Secret]) -> None:
        parts = urlsplit(url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._secrets = secrets

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        # The key is already URL-safe and its own $uri (module docstring).
        path = f"{self._prefix}/{key}"
        secret = self._secrets.active(signed_at)
        md5 = secure_link_md5(secret.value, path, expires_at)
        query = f"md5={md5}&expires={expires_at}"
        if secret.id is not None:
            # KeyId is [A-Za-z0-9._-]: nothing to encode.
            query += f"&key={secret.id}"
        return SignedURL(f"{self._origin}{path}?{query}", expires_at)

    async def aclose(self) -> None:
        return None
