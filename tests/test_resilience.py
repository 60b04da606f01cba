"""Region health and rate limits through the real gateway, with real faults."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.origin import create_origin_app
from tests.stack import KEY, REGIONS, running_gateway, write_origin_roots
from tests.support import free_port, serve

BINARY = f"/v1/binaries/{KEY}"
SECRET = "resilience-secret-0123456789"


def origin_on(port: int, root: Path) -> contextlib.AbstractContextManager[str]:
    """An origin on a fixed port, so it can be stopped and started again."""
    return serve(create_origin_app(root, SECRET.encode()), port=port)


def regions_for(ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "location": list(REGIONS[name]),
            "backend": {"type": "local", "url": f"http://127.0.0.1:{port}", "secret": SECRET},
        }
        for name, port in ports.items()
    }


def test_a_dead_region_is_taken_out_and_comes_back(tmp_path: Path) -> None:
    names = ["eu-central", "us-east"]
    roots = write_origin_roots(tmp_path, names)
    ports = {name: free_port() for name in names}
    health = {"interval": "200ms", "timeout": "500ms", "unhealthy_after": 2, "healthy_after": 2}
    with contextlib.ExitStack() as stack:
        stack.enter_context(origin_on(ports["us-east"], roots["us-east"]))
        eu = contextlib.ExitStack()
        eu.enter_context(origin_on(ports["eu-central"], roots["eu-central"]))
        gw = stack.enter_context(
            running_gateway(
                tmp_path / "gw",
                regions_for(ports),
                geo={"default_region": "eu-central"},
                health=health,
            )
        )
        statuses: list[tuple[float, int, str]] = []

        def load(seconds: float) -> None:
            end = time.monotonic() + seconds
            with httpx.Client(timeout=10) as client:
                while time.monotonic() < end:
                    r = client.get(
                        gw.base + BINARY, headers={"Authorization": f"Bearer {gw.token()}"}
                    )
                    statuses.append(
                        (time.monotonic(), r.status_code, r.headers["x-gateway-region"])
                    )
                    time.sleep(0.01)

        load(0.3)
        assert {region for _, _, region in statuses} == {"eu-central"}
        eu.close()  # the eu origin dies
        killed = time.monotonic()
        load(2.0)
        after = [(t, region) for t, _, region in statuses if t > killed]
        moved = next(t for t, region in after if region == "us-east")
        # Taken out within two failed rounds (plus one interval of slack) ...
        assert moved - killed < 1.5
        # ... and no request after that was sent to the dead region.
        assert all(region == "us-east" for t, region in after if t > moved)
        assert all(code == 307 for _, code, _ in statuses)
        up = httpx.get(gw.base + "/metrics", timeout=5).text
        assert 'gateway_backend_up{backend="eu-central"} 0.0' in up
        # It comes back.
        stack.enter_context(origin_on(ports["eu-central"], roots["eu-central"]))
        revived = time.monotonic()
        load(2.0)
        back = [t for t, _, region in statuses if t > revived and region == "eu-central"]
        assert back and back[0] - revived < 1.5
        up = httpx.get(gw.base + "/metrics", timeout=5).text
        assert 'gateway_backend_up{backend="eu-central"} 1.0' in up


def test_readyz_is_503_when_every_region_is_down(tmp_path: Path) -> None:
    ports = {"eu-central": free_port()}  # nothing listens there
    with running_gateway(
        tmp_path,
        regions_for(ports),
        health={"interval": "100ms", "timeout": "200ms", "unhealthy_after": 1},
    ) as gw:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if httpx.get(gw.base + "/readyz", timeout=5).status_code == 503:
                break
            time.sleep(0.05)
        assert httpx.get(gw.base + "/readyz", timeout=5).status_code == 503
        assert httpx.get(gw.base + "/healthz", timeout=5).status_code == 200
        refused = gw.get(KEY)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"


def test_rate_limit_per_device_answers_429_with_retry_after(tmp_path: Path) -> None:
    ports = {"eu-central": free_port()}
    with running_gateway(
        tmp_path,
        regions_for(ports),
        limits={"rate_per_device": "1/s", "burst_per_device": 3},
        health={"active": False},
    ) as gw:
        first = [gw.get(KEY).status_code for _ in range(3)]
        limited = gw.get(KEY)
        other_device = httpx.get(
            f"{gw.base}/v1/binaries/{KEY}",
            headers={"Authorization": f"Bearer {gw.token('another-device')}"},
            timeout=5,
        )
        # The URL route has its own bucket.
        urls = httpx.get(
            f"{gw.base}/v1/urls/{KEY}",
            headers={"Authorization": f"Bearer {gw.token()}"},
            timeout=5,
        )
        metrics = httpx.get(gw.base + "/metrics", timeout=5).text
        time.sleep(1.1)
        refilled = gw.get(KEY)
    assert first == [307, 307, 307]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.headers["content-type"] == "application/problem+json"
    assert other_device.status_code == 307
    assert urls.status_code == 200
    assert 'gateway_rate_limited_total{route="binaries"} 1.0' in metrics
    assert "another-device" not in metrics and "device-0001" not in metrics
    assert refilled.status_code == 307
