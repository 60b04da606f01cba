"""Benchmark: memory per cached entry, for each of the gateway's caches.

Fills each cache with N distinct entries and measures the Python heap growth
with ``tracemalloc`` (allocations made while filling, minus what the inputs
themselves take): bytes per verified token (the token cache keeps the token
string and its ``Device``), per signed URL, and per cached decision. Prints
one line a script can read: ``memory token=...B url=...B decision=...B``.

    python -m loadtests.bench_memory [--entries 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from gateway.auth import Authenticator, KeySet
from gateway.keys import generate_key, issue_token
from gateway.signers.local import LocalSigner
from gateway.url_cache import SignedURLCache


def growth(fill: Callable[[], object]) -> int:
    """Heap bytes still allocated by ``fill`` once it returned (its result kept alive)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = fill()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    args = parser.parse_args()
    n = args.entries
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        generate_key("EdDSA", keys, "k")
        tokens = [
            issue_token(keys / "k.pem", "k", f"device-{i:07d}", audience="a", issuer="i",
                        claims={"product": "acme-x1"})
            for i in range(n)
        ]  # fmt: skip
        authenticator = Authenticator(
            KeySet.from_file(keys / "jwks.json"),
            issuer="i",
            audience="a",
            algorithms=["EdDSA"],
            leeway=60,
            max_token_lifetime=86400,
            cache_size=n,
        )

        def fill_tokens() -> object:
            return [authenticator.authenticate(t) for t in tokens]

        # The tokens themselves exist before filling; the cache keeps a
        # reference to them (no copy) plus one Device each.
        per_token = growth(fill_tokens) / n

        signer = LocalSigner("http://127.0.0.1:9000", b"s" * 32)
        cache = SignedURLCache(ttl=900, window=300, min_remaining=60, maxsize=n)
        objects = [f"firmware/acme-x1/{i // 100}.{i % 100}.0/rootfs.img" for i in range(n)]

        def fill_urls() -> object:
            async def run() -> None:
                for key in objects:
                    await cache.get("eu-central", signer, key)

            asyncio.run(run())
            return cache

        per_url = growth(fill_urls) / n
        assert len(cache) == n

    # A cached decision: prebuilt headers, the encoded log fields and a key
    # tuple holding the request's header values (the token bytes among them).
    from gateway.access_log import AccessLog

    def fill_decisions() -> object:
        table = {}
        for i in range(n):
            token = f"Bearer {tokens[i % len(tokens)]}-{i}".encode()
            key = (
                f"/v1/binaries/{objects[i]}".encode(),
                token,
                None,
                None,
                None,
                None,
                None,
                "10.0.0.1",
            )
            table[key] = (
                [
                    (
                        b"location",
                        f"http://127.0.0.1:9000/{objects[i]}?expires=1&sig={'x' * 43}".encode(),
                    ),
                    (b"content-length", b"0"),
                    (b"cache-control", b"no-store"),
                    (b"x-gateway-region", b"eu-central"),
                ],
                AccessLog.decided(
                    f"device-{i:07d}", objects[i], "eu-central", "local", "nearest", "10.0.0.1"
                ),
            )
        return table

    per_decision = growth(fill_decisions) / n
    print(
        f"memory token={per_token:.0f}B url={per_url:.0f}B decision={per_decision:.0f}B "
        f"entries={n} (defaults bound them: auth.cache_size 100000, signing.cache_size "
        f"100000, server.decision_cache_size 16384)"
    )


if __name__ == "__main__":
    main()
