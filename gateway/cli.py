"""The ``gateway`` command line (SPEC §2).

Every command reports a problem as one clear line on stderr and exits 2; no
traceback reaches an operator for a bad config, key or argument.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway.errors import ConfigError, GatewayError
from gateway.settings import (
    Settings,
    load_settings,
    parse_duration,
    resolve_secret,
)

EXIT_PROBLEM = 2


def _fail(lines: Sequence[str]) -> NoReturn:
    for line in lines:
        print(line, file=sys.stderr)
    raise SystemExit(EXIT_PROBLEM)


def load_checked(path: str) -> Settings:
    """Settings whose files (JWKS, GeoIP, revocation list) also load; exits 2 otherwise."""
    from prometheus_client import CollectorRegistry

    from gateway.metrics import Metrics
    from gateway.runtime import Runtime

    try:
        settings = load_settings(path)
        runtime = Runtime(settings, Metrics(CollectorRegistry()), clock=_clock())
    except ConfigError as exc:
        _fail(exc.problems)
    asyncio.run(runtime.aclose())
    return settings


def _clock() -> Any:
    import time

    return time.time


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn flags the gateway runs with (the benchmarks use the same)."""
    return {
        "access_log": False,  # the gateway writes its own access log (SPEC §6)
        "proxy_headers": False,  # X-Forwarded-For is judged by gateway.proxy_headers
        "server_header": False,
        "lifespan": "on",
        # h11 refuses a head over this with 400 before the app sees it.
        "h11_max_incomplete_event_size": 4 * settings.limits.max_header_bytes + 1024,
    }


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> None:
    from gateway.app import create_app
    from gateway.server import GatewayServer, server_config

    settings = load_checked(args.config)
    options = uvicorn_options(settings)
    log_to_stderr()
    if args.workers > 1:
        from gateway.workers import Supervisor

        # Workers are separate processes: each loads the same file itself, and
        # they share their metrics through a directory that starts empty.
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        try:
            try:
                supervisor = Supervisor(
                    Path(args.config).resolve(),
                    host=args.host,
                    port=args.port,
                    workers=args.workers,
                    options=options,
                    metrics_dir=metrics_dir,
                )
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                _fail([f"cannot listen on {args.host}:{args.port}: {reason}"])
            supervisor.run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        app = create_app(settings)
        config = server_config(app, host=args.host, port=args.port, **options)
        GatewayServer(config, app, Path(args.config)).run()


def log_to_stderr() -> None:
    """Operational messages (reloads, drain) on stderr; stdout is the access log."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cmd_check_config(args: argparse.Namespace) -> None:
    load_checked(args.file)
    print(f"{args.file}: ok")


def cmd_origin(args: argparse.Namespace) -> None:
    import uvicorn

    from gateway.origin import create_origin_app

    try:
        secrets = [resolve_secret(s).get_secret_value().encode() for s in args.secret]
    except ValueError as exc:
        _fail([f"--secret: {exc}"])
    root = Path(args.root)
    if not root.is_dir():
        _fail([f"--root: {root} is not a directory"])
    uvicorn.run(
        create_origin_app(root.resolve(), secrets),
        host=args.host,
        port=args.port,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
    )


def cmd_keys_generate(args: argparse.Namespace) -> None:
    from gateway.keys import generate_key

    try:
        kid = generate_key(args.alg, Path(args.out), args.kid)
    except (ValueError, OSError) as exc:
        _fail([f"keys generate: {exc}"])
    print(kid)


def cmd_token_issue(args: argparse.Namespace) -> None:
    from gateway.keys import issue_token, parse_claim

    try:
        claims = dict(parse_claim(text) for text in args.claim)
        ttl = parse_duration(args.ttl)
        token = issue_token(
            Path(args.key),
            args.kid,
            args.sub,
            ttl=ttl,
            audience=args.aud,
            issuer=args.iss,
            claims=claims,
        )
    except (ValueError, OSError) as exc:
        _fail([f"token issue: {exc}"])
    print(token)


def cmd_sign(args: argparse.Namespace) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.access import object_key
    from gateway.metrics import Metrics
    from gateway.runtime import Runtime

    settings = load_checked(args.config)
    region = args.region or settings.default_region
    if region not in settings.regions:
        _fail([f"--region: {region!r} is not a configured region"])

    async def sign() -> str:
        runtime = Runtime(settings, Metrics(CollectorRegistry()), clock=_clock())
        try:
            key = object_key(args.key.encode("utf-8", "surrogateescape"))
            url, _ = await runtime.urls.get(region, runtime.signers[region], key)
            return url.url
        finally:
            await runtime.aclose()

    try:
        print(asyncio.run(sign()))
    except GatewayError as exc:
        _fail([f"{args.key}: {exc.detail}"])


def cmd_demo(args: argparse.Namespace) -> None:
    from gateway.demo import run_demo

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        run_demo(workdir, host=args.host, port=args.port)
    except ConfigError as exc:
        _fail(exc.problems)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="run the gateway on an embedded default")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--dir", help="working directory for keys, config and binaries")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("origin", help="the built-in origin for the local backend")
    p.add_argument("--root", required=True, metavar="DIR")
    p.add_argument(
        "--secret",
        required=True,
        action="append",
        help="env:NAME, file:PATH or a literal; repeat to accept several during a rotation",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.set_defaults(func=cmd_origin)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_check_config)

    keys = sub.add_parser("keys", help="device-token signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    p = keys.add_parser("generate", help="generate a key pair; add the public key to jwks.json")
    p.add_argument("--alg", required=True, choices=["EdDSA", "ES256", "RS256"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--kid")
    p.set_defaults(func=cmd_keys_generate)

    token = sub.add_parser("token", help="device tokens").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    p = token.add_parser("issue", help="print a signed device token")
    p.add_argument("--key", required=True, metavar="PEM")
    p.add_argument("--kid", required=True)
    p.add_argument("--sub", required=True, metavar="DEVICE")
    p.add_argument("--ttl", default="1h")
    p.add_argument("--aud")
    p.add_argument("--iss")
    p.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=cmd_token_issue)

    p = sub.add_parser("sign", help="print the signed URL the gateway would issue")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--region")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_sign)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
