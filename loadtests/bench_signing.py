"""Benchmark: the cost of one ``sign()`` call per backend type (a signed-URL cache miss).

Builds every backend whose module is present from settings, with keys and
secrets it generates into a temporary folder (nothing is contacted: signing is
local), and prints the median microseconds per ``sign()`` over a few rounds.

    python loadtests/bench_signing.py [--calls 2000] [--rounds 5] [--only s3,gcs]

Each call signs another window (``signed_at`` advances), so nothing inside a
signer can reuse a previous result: this is the price the gateway pays on a
cache miss. These machines are shared and noisy: compare backends within one
run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import TypeAdapter

from gateway.errors import ConfigError
from gateway.settings import BackendSettings
from gateway.signers import Signer, build_signer

KEY = "firmware/acme-x1/1.0.0/app.bin"
SIGNED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z
TTL = 900


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def _local(tmp: Path) -> dict[str, Any]:
    return {"type": "local", "url": "http://127.0.0.1:9", "secret": "s" * 32}


def _nginx(tmp: Path) -> dict[str, Any]:
    return {"type": "nginx", "url": "https://cdn.example.com", "secret": "s" * 32}


def _s3(tmp: Path) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket": "fw-eu",
        "region": "eu-central-1",
        "credentials": {
            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        },
    }


def _cloudfront_rsa(tmp: Path) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "type": "cloudfront",
        "domain": "d111111abcdef8.cloudfront.net",
        "key_pair_id": "K2JCJMDEHXQW5F",
        "private_key": _pem(key, tmp / "cf-rsa.pem"),
    }


def _cloudfront_ec(tmp: Path) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return {
        "type": "cloudfront",
        "domain": "d111111abcdef8.cloudfront.net",
        "key_pair_id": "K2JCJMDEHXQW5G",
        "private_key": _pem(key, tmp / "cf-ec.pem"),
        "hash_algorithm": "sha256",
    }


def _azure(tmp: Path) -> dict[str, Any]:
    return {
        "type": "azure",
        "account": "fwstore",
        "container": "firmware",
        "account_key": base64.b64encode(b"k" * 64).decode(),
    }


def _gcs(tmp: Path) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp / "gcs.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "bench",
                "private_key_id": "0" * 40,
                "private_key": pem,
                "client_email": "bench@bench.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return {"type": "gcs", "bucket": "fw-bench", "service_account": str(path)}


# label -> settings builder; the label is the backend type plus a variant.
BACKENDS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "local": _local,
    "nginx": _nginx,
    "s3": _s3,
    "cloudfront (RSA-2048, SHA-1)": _cloudfront_rsa,
    "cloudfront (EC P-256, SHA-256)": _cloudfront_ec,
    "azure": _azure,
    "gcs (RSA-2048)": _gcs,
}


async def _time_calls(signer: Signer, calls: int, start: int) -> float:
    """Seconds per call, over ``calls`` calls each signing another window."""
    began = time.perf_counter()
    for i in range(calls):
        signed_at = start + i
        await signer.sign(KEY, signed_at, signed_at + TTL)
    return (time.perf_counter() - began) / calls


async def bench(label: str, settings: dict[str, Any], calls: int, rounds: int) -> str:
    try:
        backend = TypeAdapter(BackendSettings).validate_python(settings)
        signer = build_signer(backend, f"bench.{label}")
    except ModuleNotFoundError as exc:
        return f"{label:34} skipped: {exc.name} is not there"
    except ConfigError as exc:
        return f"{label:34} skipped: {'; '.join(exc.problems)}"
    try:
        await signer.sign(KEY, SIGNED_AT, SIGNED_AT + TTL)  # warm-up (lazy imports, caches)
        samples = [
            await _time_calls(signer, calls, SIGNED_AT + (r + 1) * calls) for r in range(rounds)
        ]
    finally:
        await signer.aclose()
    median = statistics.median(samples) * 1e6
    return f"{label:34} {median:9.1f} µs/sign  (min {min(samples) * 1e6:.1f})"


async def main_async(calls: int, rounds: int, only: set[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in BACKENDS.items():
            if only is not None and label.split()[0] not in only:
                continue
            print(await bench(label, build(Path(tmp)), calls, rounds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", help="comma-separated backend types, e.g. s3,gcs")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    print(f"python {sys.version.split()[0]}; {args.calls} calls x {args.rounds} rounds")
    asyncio.run(main_async(args.calls, args.rounds, only))


if __name__ == "__main__":
    main()
