"""Benchmarks P2 and P4: cold tokens, and a Zipf fleet's signing share.

P2  every request carries a token the gateway has not seen (a fleet of new
    devices): throughput against the bare Starlette 307 app of
    ``bench_redirect.py`` serving the same requests, same uvicorn flags,
    server and wrk pinned to different cores. Goal >= 0.25. One line per
    token key (``--alg``, default all four: the three ``gateway keys
    generate`` makes, whose RSA keys are 3072-bit, and RS256 with the 2048-bit
    keys most identity providers sign with), each the median of ``--rounds``
    rounds, with the cost of one bare signature verification on this CPU
    and the ``ceiling`` that cost alone allows: baseline time / (baseline
    time + one verification).
P4  a fleet of 10,000 devices over 3 regions (each device at its own
    place, via a trusted edge country header) asking for 200 objects
    chosen by a Zipf law: the share of requests that had to sign a URL
    (``gateway_signed_url_cache_total{result="miss"}`` over all lookups).
    Goal <= 1 %.

    python -m loadtests.bench_fleet [--seconds 5] [--devices 10000] [--objects 200]
                                    [--alg EdDSA,ES256,RS256,RS256-2048] [--rounds 3]

Each prints one summary line a script can read (``P2 ratio=...``,
``P4 signing_share=...``). Needs ``wrk`` (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from gateway.auth import KeySet
from gateway.keys import generate_key, issue_token
from loadtests.bench_redirect import run_wrk, server

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://devices.bench.invalid"
AUDIENCE = "firmware-gateway"
# --alg value -> (JWS alg, key) ; "RS256" is gateway.keys' own RSA size (3072).
ALGORITHMS = {
    "EdDSA": ("EdDSA", "Ed25519"),
    "ES256": ("ES256", "P-256"),
    "RS256": ("RS256", "RSA-3072"),
    "RS256-2048": ("RS256", "RSA-2048"),
}
COUNTRIES = ["DE", "FR", "GB", "SE", "US", "CA", "BR", "JP", "CN", "IN", "AU", "ZA"]

# wrk picks a line of the request file per request (round robin per thread):
# each line is "path<TAB>token<TAB>country".
LUA = r"""
local lines = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local path, token, country = line:match("([^\t]+)\t([^\t]+)\t([^\t]+)")
    lines[#lines + 1] = wrk.format("GET", path, {
      ["Authorization"] = "Bearer " .. token,
      ["CloudFront-Viewer-Country"] = country,
    })
  end
end
request = function()
  i = i + 1
  if i > #lines then i = 1 end
  return lines[i]
end
"""


def write_config(workdir: Path, regions: int, choice: str = "EdDSA") -> Path:
    keys = workdir / "keys"
    alg, kind = ALGORITHMS[choice]
    generate_key(alg, keys, "bench", rsa_bits=2048 if kind == "RSA-2048" else 3072)
    places = {
        "eu-central": [50.11, 8.68],
        "us-east": [39.04, -77.49],
        "ap-northeast": [35.68, 139.69],
    }
    config = {
        "server": {"trusted_proxies": ["127.0.0.1/32"], "geo_headers": ["cloudfront"]},
        "auth": {
            "jwks": str(keys / "jwks.json"),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": [alg],
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "regions": {
            name: {
                "location": location,
                "backend": {
                    "type": "local",
                    "url": f"http://127.0.0.1:{9 + i}",
                    "secret": "s" * 32,
                },
            }
            for i, (name, location) in enumerate(list(places.items())[:regions])
        },
        "health": {"active": False},
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tokens(workdir: Path, count: int) -> list[str]:
    key = workdir / "keys" / "bench.pem"
    return [
        issue_token(key, "bench", f"device-{i:06d}", ttl=3600, audience=AUDIENCE, issuer=ISSUER,
                    claims={"product": "acme-x1"})
        for i in range(count)
    ]  # fmt: skip


def verify_seconds(workdir: Path, sample: list[str]) -> float:
    """Seconds per bare signature verification (the gateway's own verifier for
    the key, nothing else), measured on the server's core: the floor of a cold request."""
    entry = KeySet.from_file(workdir / "keys" / "jwks.json").get("bench")
    if entry is None:
        raise RuntimeError("bench_fleet: the benchmark key set has no kid 'bench'")
    parts = []
    for token in sample:
        signing_input, _, signature = token.rpartition(".")
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        parts.append((signing_input.encode(), raw))
    affinity = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    try:
        best = math.inf
        for _ in range(3):
            began = time.perf_counter()
            for message, raw_signature in parts:
                if not entry.verify(message, raw_signature):
                    raise RuntimeError("bench_fleet: a benchmark token does not verify")
            best = min(best, (time.perf_counter() - began) / len(parts))
    finally:
        os.sched_setaffinity(0, affinity)
    return best


def wrk_run(url: str, script: Path, requests_file: Path, seconds: int, connections: int) -> float:
    args = ["-s", str(script), url, "--", str(requests_file)]
    return run_wrk(args, seconds=seconds, connections=connections)


def metric(base: str, sample: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--cold-tokens", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="P2 rounds per key (median)")
    parser.add_argument(
        "--alg",
        default=",".join(ALGORITHMS),
        help="device-token keys for P2, comma-separated: " + ", ".join(ALGORITHMS),
    )
    args = parser.parse_args()
    algs = [a.strip() for a in args.alg.split(",") if a.strip()]
    unknown = sorted(set(algs) - set(ALGORITHMS))
    if unknown or not algs or args.rounds < 1:
        raise SystemExit(
            f"bench_fleet: --alg takes {', '.join(ALGORITHMS)} (got {args.alg!r}); "
            "--rounds at least 1"
        )
    if shutil.which("wrk") is None:
        raise SystemExit("bench_fleet: wrk is not installed (apt-get install wrk)")
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        script = workdir / "fleet.lua"
        script.write_text(LUA)

        # P2: one request per fresh token, nothing cached. Every round starts
        # new servers, so the same tokens are new again; a run longer than the
        # token list would start reusing them: the list is sized for it.
        for choice in algs:
            p2 = workdir / f"p2-{choice}"
            config = write_config(p2, regions=1, choice=choice)
            cold = tokens(p2, args.cold_tokens)
            p2_file = p2 / "requests.tsv"
            p2_file.write_text(
                "".join(f"/v1/binaries/firmware/acme-x1/1.0.0/app.bin\t{t}\tDE\n" for t in cold)
            )
            ratios, base_rates, gw_rates, served = [], [], [], 0.0
            for _ in range(args.rounds):
                with server("baseline", config) as base:
                    base_rate = wrk_run(base + "/", script, p2_file, args.seconds, args.connections)
                with server("gateway", config) as gw:
                    gw_rate = wrk_run(gw + "/", script, p2_file, args.seconds, args.connections)
                    misses = metric(gw, 'gateway_signed_url_cache_total{result="miss"}')
                    hits = metric(gw, 'gateway_signed_url_cache_total{result="hit"}')
                served = max(served, hits + misses)
                base_rates.append(base_rate)
                gw_rates.append(gw_rate)
                ratios.append(gw_rate / base_rate)
            note = "" if served <= len(cold) else f" (tokens reused after {len(cold)} requests)"
            verify = verify_seconds(p2, cold[:500])
            base_rate = statistics.median(base_rates)
            ceiling = (1 / base_rate) / (1 / base_rate + verify)
            alg, key = ALGORITHMS[choice]
            print(
                f"P2 ratio={statistics.median(ratios):.2f} alg={alg} key={key} "
                f"gateway={statistics.median(gw_rates):.0f}/s baseline={base_rate:.0f}/s "
                f"cold_requests={served:.0f} verify={verify * 1e6:.0f}us ceiling={ceiling:.2f} "
                f"(median of {args.rounds} rounds: {' '.join(f'{r:.2f}' for r in ratios)}){note}",
                flush=True,
            )

        # P4: a Zipf fleet over 3 regions.
        config = write_config(workdir / "p4", regions=3)
        fleet = tokens(workdir / "p4", args.devices)
        places = [rng.choice(COUNTRIES) for _ in fleet]
        weights = [1 / (rank + 1) for rank in range(args.objects)]
        objects = [
            f"firmware/acme-x1/{rank // 10}.{rank % 10}.0/image.bin" for rank in range(args.objects)
        ]
        lines = []
        for _ in range(100_000):
            device = rng.randrange(len(fleet))
            key = rng.choices(objects, weights)[0]
            lines.append(f"/v1/binaries/{key}\t{fleet[device]}\t{places[device]}\n")
        p4_file = workdir / "p4.tsv"
        p4_file.write_text("".join(lines))
        # Warm-up: every device once (its token verified, the first URLs signed),
        # as a fleet that has been running; then the timed steady state.
        warm_file = workdir / "p4-warm.tsv"
        warm_file.write_text(
            "".join(
                f"/v1/binaries/{rng.choices(objects, weights)[0]}\t{token}\t{place}\n"
                for token, place in zip(fleet, places, strict=True)
            )
        )
        miss = 'gateway_signed_url_cache_total{result="miss"}'
        hit = 'gateway_signed_url_cache_total{result="hit"}'
        with server("gateway", config) as gw:
            warm_seconds = max(2, args.devices // 2000)
            wrk_run(gw + "/", script, warm_file, warm_seconds, args.connections)
            misses0, hits0 = metric(gw, miss), metric(gw, hit)
            rate = wrk_run(gw + "/", script, p4_file, args.seconds, args.connections)
            misses, hits = metric(gw, miss) - misses0, metric(gw, hit) - hits0
        share = misses / (hits + misses)
        overall = (misses + misses0) / (hits + misses + hits0 + misses0)
        print(
            f"P4 signing_share={share * 100:.2f}% requests={hits + misses:.0f} "
            f"signed={misses:.0f} rate={rate:.0f}/s devices={len(fleet)} objects={args.objects} "
            f"(with warm-up: {overall * 100:.2f}%)",
            flush=True,
        )


if __name__ == "__main__":
    main()
