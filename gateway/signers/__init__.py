"""Storage backends: each turns (object key, validity window) into a URL its storage accepts.

One module per backend type (``local``, ``nginx``, ``s3``, ``cloudfront``,
``azure``, ``gcs``), each exposing ``create(settings, field) -> Signer``; the
settings model of each type lives in :mod:`gateway.settings`. Adding a backend
is adding a module, its settings model and one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from gateway.settings import BackendSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SignedURL:
    """A URL and the moment (Unix seconds) the storage stops accepting it.

    ``expires_at`` is the earlier of the URL's own expiry and anything else
    that ends its life (temporary credentials expiring, say): the cache never
    hands it out with less than ``min_remaining`` left of it.
    """

    url: str
    expires_at: int


class Signer(Protocol):
    """A storage backend's URL signer.

    ``sign`` must be deterministic: the same key, ``signed_at`` and
    ``expires_at`` give the same URL in every worker and replica (SPEC §4), so
    a fleet sharing one window shares one URL. ``signed_at`` is also the moment
    that picks the active key when keys rotate.
    """

    kind: str  # the backend type, used as a metric label ("local", "s3", ...)

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL: ...

    async def aclose(self) -> None: ...


class KeyRing(Generic[T]):
    """Rotating signing keys: at any moment the newest key whose ``not_before`` has come signs.

    Keys without ``not_before`` are active from the start. Before every key's
    ``not_before`` the earliest key signs, so a config that lists only future
    keys still works (and ``check-config`` warns about nothing it cannot know).
    """

    def __init__(self, versions: Sequence[tuple[int | None, T]]) -> None:
        if not versions:
            raise ValueError("a key ring needs at least one key")
        # Stable sort: keys with equal not_before keep file order, the later wins.
        ordered = sorted(versions, key=lambda v: -1 if v[0] is None else v[0])
        self._starts = [-1 if start is None else start for start, _ in ordered]
        self._keys = [key for _, key in ordered]

    def active(self, at: float) -> T:
        """The key that signs at Unix time ``at``."""
        chosen = self._keys[0]
        for start, key in zip(self._starts, self._keys, strict=True):
            if start <= at:
                chosen = key
            else:
                break
        return chosen

    def all(self) -> tuple[T, ...]:
        return tuple(self._keys)


_MODULES = {
    "local": "gateway.signers.local",
    "nginx": "gateway.signers.nginx",
    "s3": "gateway.signers.s3",
    "cloudfront": "gateway.signers.cloudfront",
    "azure": "gateway.signers.azure",
    "gcs": "gateway.signers.gcs",
}


def build_signer(settings: BackendSettings, field: str) -> Signer:
    """The signer for one region's backend settings.

    ``field`` is the settings path (``regions.eu.backend``) for error lines:
    a key file that cannot be read or a key of the wrong type raises
    :class:`gateway.errors.ConfigError` here, at start, not at the first download.
    """
    module = importlib.import_module(_MODULES[settings.type])
    return cast(Signer, module.create(settings, field))
