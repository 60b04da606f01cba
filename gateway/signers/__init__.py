"""Storage backends: each turns (object key, validity window) into a URL its storage accepts.

One module per backend type, each exposing a class that satisfies :class:`Signer`
and is built from its settings by :func:`build_signer`. Adding a backend is
adding a module and one line in ``_FACTORIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.settings import BackendSettings


@dataclass(frozen=True, slots=True)
class SignedURL:
    """A URL and the moment (Unix seconds) the storage stops accepting it."""

    url: str
    expires_at: int


class Signer(Protocol):
    """A storage backend's URL signer.

    ``sign`` must be deterministic: the same key, ``signed_at`` and
    ``expires_at`` give the same URL in every worker and replica (SPEC §4), so
    a fleet sharing one window shares one URL.
    """

    kind: str  # the backend type, used as a metric label ("local", "s3", ...)

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL: ...

    async def aclose(self) -> None: ...


def build_signer(settings: BackendSettings) -> Signer:
    """The signer for one region's backend settings."""
    factory = _FACTORIES[settings.type]
    return factory(settings)


def _local(settings: BackendSettings) -> Signer:
    from gateway.signers.local import LocalSigner

    return LocalSigner.from_settings(settings)


_FACTORIES: dict[str, Callable[[BackendSettings], Signer]] = {
    "local": _local,
}
