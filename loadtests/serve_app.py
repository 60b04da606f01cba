"""Run one app for a benchmark under uvicorn with exactly the gateway's flags.

    python loadtests/serve_app.py baseline PORT
    python loadtests/serve_app.py gateway PORT CONFIG

Both apps get the same uvicorn options (``gateway.cli.uvicorn_options`` plus
the HTTP parser and event loop), so a ratio between them measures the apps.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.cli import uvicorn_options
from gateway.settings import load_settings

# The baseline answers what the gateway answers on a cache hit: a 307 with a
# Location of the same length, Cache-Control and the two decision headers.
LOCATION = "http://127.0.0.1:9/firmware/acme-x1/1.0.0/app.bin?expires=1767226500&sig=" + "A" * 43


async def redirect(request: Request) -> Response:
    return Response(
        status_code=307,
        headers={
            "location": LOCATION,
            "cache-control": "no-store",
            "x-gateway-region": "eu-central",
            "x-request-id": "0123abcd-1",
        },
    )


def baseline_app() -> Starlette:
    return Starlette(routes=[Route("/v1/binaries/{key:path}", redirect)])


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    settings = load_settings(sys.argv[3] if kind == "gateway" else _needs_config())
    options = {**uvicorn_options(settings), "http": "httptools", "loop": "uvloop"}
    app = create_app(settings) if kind == "gateway" else baseline_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", **options)


def _needs_config() -> str:
    # The baseline takes the gateway's uvicorn options from the same config.
    return sys.argv[3]


if __name__ == "__main__":
    main()
