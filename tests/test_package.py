"""The package's public surface stays small (HTTPX checks its __all__ the same way)."""

from __future__ import annotations

import gateway


def test_public_surface() -> None:
    assert sorted(gateway.__all__) == ["__version__", "create_app"]
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None
    from gateway.app import create_app

    assert gateway.create_app is create_app
