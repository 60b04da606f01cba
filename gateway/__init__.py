"""gateway: an edge signing gateway for firmware distribution.

``create_app(settings)`` returns the ASGI application; run it with uvicorn
(``gateway serve --config FILE``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_app"]

if TYPE_CHECKING:
    from gateway.app import create_app


def __getattr__(name: str) -> Any:
    # Lazy, so that light tools (``gateway keys``, ``check-config``) and the
    # metrics module can import the package without pulling in the app.
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    raise AttributeError(name)
