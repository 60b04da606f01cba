"""A device fleet for Locust: a firmware rollout against the gateway, every answer checked.

Locust models fleets and checks behaviour (throughput is wrk's job:
``make bench``). Each simulated user is a device slot: every task takes a
device from a pool of ``--devices`` devices (tokens minted with the project's
own signer from a key the gateway trusts, a ``product`` claim each, a place on
the globe each) and does one of:

=========================  ======  ===============================================
request group              weight  what must come back
=========================  ======  ===============================================
``download``               60      307 to the region the geo policy picks for the
                                   device (``X-Gateway-Region``), ``Location`` =
                                   ``http://127.0.0.1:<origin port>/<key>?expires=
                                   N&sig=S`` living >= ``min_remaining``; in stream
                                   mode 200 with the file's bytes
``resume``,                10      the same 307, then the ``Location`` fetched with
``resume: range``                  ``Range: bytes=a-b``: 206, exact Content-Range
                                   and bytes (stream mode: 206 from the gateway)
``urls``,                  10      ``GET /v1/urls/{key}``: 200, JSON url/region/
``urls: range``                    backend/expires_at agreeing with the headers;
                                   then a byte range straight from that URL: 206
``bad token: <kind>``      8       401 with ``WWW-Authenticate: Bearer ...
                                   error="invalid_token"`` (a success here) for
                                   expired, wrong audience, impostor key, garbage
``other product``          4       403 ``not-entitled`` for the other product's key
=========================  ======  ===============================================

Anything else is a failure with a one-line reason. Keys are chosen by a Zipf
law over the device's product's versions and binaries (newest first), devices
sit in a weighted world (``CloudFront-Viewer-Country``, or addresses from the
GeoIP test fixture when the gateway has a ``geo.database``), and every request
carries the device's address in ``X-Forwarded-For`` as the trusted load
balancer (here: Locust on 127.0.0.1) writes it. Details: ``loadtests/fleet.py``.

The load follows a rollout wave (:class:`RolloutWave`) over ``--wave-seconds``
(default: ``-t``, else 600 s): ramp to half of ``-u`` users, plateau, a
second wave to all ``-u``, plateau, ramp down to a tenth, stop.
``--wave-seconds 0`` runs a flat ``-u`` users (spawned at ``-r``) for ``-t``.

Run it against ``gateway demo`` (its defaults fit ``gateway demo --dir .demo``)::

    gateway demo --port 8080 --dir .demo &
    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s \\
        --host http://127.0.0.1:8080 --demo-dir .demo

Distributed, for fleets larger than one machine's Locust (about 12k req/s a
core): one master, any number of workers (one per core), each worker with
the same files at the same paths (the demo folder: config, signing key,
files), since workers take every option from the master::

    locust -f loadtests/locustfile.py --master --headless --expect-workers 2 \\
        -u 200 -r 20 -t 5m --host http://127.0.0.1:8080 --demo-dir .demo
    locust -f loadtests/locustfile.py --worker --master-host 127.0.0.1   # x2

Against a gateway of your own: ``--gateway-config`` (its YAML, for the
expected regions and URLs), ``--signing-key``/``--kid`` (a key its JWKS
trusts; issuer and audience default to the config's), ``--objects-dir`` (a
copy of its files, laid out ``<top>/<product>/<version>/<file>``). Every
option also reads an environment variable (``locust --help``, "Custom
arguments"). Exit status 1 when any request failed; ``--csv PREFIX`` writes
the statistics per request group.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner

# Locust puts only this folder on sys.path; the fleet lives in the loadtests package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests.fleet import Fleet, FleetError, FleetObject, FleetOptions, Headers  # noqa: E402

log = logging.getLogger("fleet")

#: The fleet of this process (a worker or a local run); built at test start.
FLEET: Fleet | None = None


# (flag, environment variable, default, help); the types follow the defaults.
_ARGUMENTS: tuple[tuple[str, str, object, str], ...] = (
    ("--demo-dir", "GATEWAY_DEMO_DIR", ".demo",
     "folder `gateway demo --dir` wrote; the paths below default into it"),
    ("--gateway-config", "FLEET_GATEWAY_CONFIG", "",
     "the gateway's YAML config (default DEMO_DIR/gateway.yaml)"),
    ("--signing-key", "FLEET_SIGNING_KEY", "",
     "private key PEM for device tokens (default DEMO_DIR/keys/KID.pem)"),
    ("--kid", "FLEET_KID", "demo", "kid of that key in the gateway's JWKS"),
    ("--issuer", "FLEET_ISSUER", "", "token iss (default: the config's auth.issuer)"),
    ("--audience", "FLEET_AUDIENCE", "", "token aud (default: the config's auth.audience)"),
    ("--objects-dir", "FLEET_OBJECTS_DIR", "",
     "the files devices fetch (default DEMO_DIR/origins/<first region>)"),
    ("--products", "FLEET_PRODUCTS", "",
     "product claims and weights, e.g. acme-x1=3,acme-x2=1 (default: all, equally)"),
    ("--devices", "FLEET_DEVICES", 1000, "devices (distinct tokens) per load-generating process"),
    ("--zipf-s", "FLEET_ZIPF_S", 1.2, "Zipf exponent over a product's versions and binaries"),
    ("--geo-source", "FLEET_GEO_SOURCE", "auto",
     "auto, header (CloudFront-Viewer-Country) or geoip (GeoIP fixture addresses); "
     "auto: geoip when the config has geo.database"),
    ("--chunk-bytes", "FLEET_CHUNK_BYTES", 65536, "largest byte range a resuming device asks for"),
)  # fmt: skip


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def add_arguments(parser: Any) -> None:
    """The fleet's options ("Custom arguments" in ``locust --help``)."""
    for flag, env_var, default, text in _ARGUMENTS:
        parser.add_argument(flag, type=type(default), default=default, env_var=env_var, help=text)
    parser.add_argument(
        "--wave-seconds",
        type=float,
        default=None,
        env_var="FLEET_WAVE_SECONDS",
        help="length of the rollout wave (default: -t, else 600); 0: flat -u users",
    )


def _options(environment: Environment) -> FleetOptions:
    opts = environment.parsed_options
    assert opts is not None
    products: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in opts.products.split(","))):
        name, _, weight = item.partition("=")
        try:
            products[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise FleetError(f"--products: {item!r} is not NAME=WEIGHT") from None

    def path(value: str) -> Path | None:
        return Path(value) if value else None

    return FleetOptions(
        demo_dir=Path(opts.demo_dir),
        gateway_config=path(opts.gateway_config),
        signing_key=path(opts.signing_key),
        kid=opts.kid,
        issuer=opts.issuer or None,
        audience=opts.audience or None,
        objects_dir=path(opts.objects_dir),
        products=products or None,
        devices=opts.devices,
        zipf_s=opts.zipf_s,
        geo_source=opts.geo_source,
        chunk_bytes=opts.chunk_bytes,
    )


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def build_fleet(environment: Environment, **_: Any) -> None:
    """Mint the fleet where users run (a local run or a worker, not the master).

    At test start rather than at import: a worker receives the options from
    the master only with its first spawn message.
    """
    global FLEET
    if isinstance(environment.runner, MasterRunner):
        return
    started = time.perf_counter()
    try:
        FLEET = Fleet.build(_options(environment))
    except FleetError as exc:
        log.error("cannot build the fleet: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()
        return
    log.info(
        "fleet: %d devices, %d objects, geo source %s, built in %.1fs",
        len(FLEET.devices),
        len(FLEET.catalog.objects),
        FLEET.geo_source,
        time.perf_counter() - started,
    )


#: Judges one response: (status, headers by lower-case name, body) -> problem or None.
Check = Callable[[int, Headers, bytes], "str | None"]


class FleetDevice(FastHttpUser):
    """One device slot of the fleet; see the module docstring for the tasks."""

    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        if FLEET is None:
            raise StopUser()  # the fleet could not be built; the error is logged
        self.fleet = FLEET
        self.rng = random.Random()

    def _get(self, url: str, name: str, headers: Headers, check: Check) -> Headers | None:
        """GET without following redirects (each hop is checked on its own), marked
        a success or a failure by ``check``; the response headers when it passed."""
        with self.client.get(
            url, name=name, headers=dict(headers), allow_redirects=False, catch_response=True
        ) as r:
            if r.status_code == 0 or r.headers is None:
                error = getattr(r, "error", None)
                r.failure(f"no response: {type(error).__name__ if error else 'unknown'}")
                return None
            received: dict[str, str] = {}
            for field, value in r.headers.items():
                field = field.lower()
                received[field] = f"{received[field]}, {value}" if field in received else value
            problem = check(r.status_code, received, r.content or b"")
            if problem is not None:
                r.failure(problem)
                return None
            r.success()
            return received

    @task(60)
    def download(self) -> None:
        """Fetch a binary: a redirect to the nearest allowed region (or the bytes, streamed)."""
        fleet, rng = self.fleet, self.rng
        device = fleet.pick_device(rng)
        obj = fleet.catalog.pick(device.product, rng)
        path = f"/v1/binaries/{obj.key}"
        if fleet.streams(device, obj.key):
            self._get(
                path,
                "download",
                device.headers,
                lambda status, headers, body: fleet.check_whole(device, obj, status, headers, body),
            )
            return
        self._get(
            path,
            "download",
            device.headers,
            lambda status, headers, _: fleet.check_redirect(
                device, obj, status, headers, time.time()
            ),
        )

    @task(10)
    def resume(self) -> None:
        """Resume an interrupted download: the next chunk, by ``Range``.

        A device does not know the delivery mode, so it sends its ``Range`` to
        the gateway and, when redirected, again to the ``Location``.
        """
        fleet, rng = self.fleet, self.rng
        device = fleet.pick_device(rng)
        obj = fleet.catalog.pick(device.product, rng)
        first, last = fleet.byte_range(obj, rng)
        ranged = {**device.headers, "Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"}
        path = f"/v1/binaries/{obj.key}"
        if fleet.streams(device, obj.key):
            self._get(
                path,
                "resume",
                ranged,
                lambda status, headers, body: (
                    fleet.check_region(device, headers)
                    or fleet.check_range(obj, first, last, status, headers, body)
                ),
            )
            return
        answer = self._get(
            path,
            "resume",
            ranged,
            lambda status, headers, _: fleet.check_redirect(
                device, obj, status, headers, time.time()
            ),
        )
        if answer is not None:
            self._fetch_range("resume: range", answer["location"], obj, first, last)

    @task(10)
    def urls_then_range(self) -> None:
        """Ask for the signed URL, then fetch a byte range from the storage directly."""
        fleet, rng = self.fleet, self.rng
        device = fleet.pick_device(rng)
        obj = fleet.catalog.pick(device.product, rng)
        url: str | None = None

        def check(status: int, headers: Headers, body: bytes) -> str | None:
            nonlocal url
            problem, url = fleet.check_urls(device, obj, status, headers, body, time.time())
            return problem

        if self._get(f"/v1/urls/{obj.key}", "urls", device.headers, check) and url is not None:
            first, last = fleet.byte_range(obj, rng)
            self._fetch_range("urls: range", url, obj, first, last)

    @task(8)
    def bad_token(self) -> None:
        """A device with a broken token: the gateway must answer 401, and that is a success."""
        fleet, rng = self.fleet, self.rng
        device = fleet.pick_device(rng)
        kind, token = fleet.bad_token(rng)
        obj = fleet.catalog.pick(device.product, rng)
        route = rng.choice(("/v1/binaries/", "/v1/urls/"))
        self._get(
            route + obj.key,
            f"bad token: {kind}",
            {**device.headers, "Authorization": f"Bearer {token}"},
            lambda status, headers, _: fleet.check_unauthorized(status, headers),
        )

    @task(4)
    def other_product(self) -> None:
        """A device asking for another product's firmware: 403."""
        fleet, rng = self.fleet, self.rng
        device = fleet.pick_device(rng)
        key = fleet.catalog.other_product(device.product, rng)
        self._get(f"/v1/binaries/{key}", "other product", device.headers, fleet.check_forbidden)

    def _fetch_range(self, name: str, url: str, obj: FleetObject, first: int, last: int) -> None:
        # The signed URL goes to the storage, not the gateway: no Authorization.
        self._get(
            url,
            name,
            {"Range": f"bytes={first}-{last}", "Accept-Encoding": "identity"},
            lambda status, headers, body: self.fleet.check_range(
                obj, first, last, status, headers, body
            ),
        )


class RolloutWave(LoadTestShape):
    """A firmware rollout: two waves of devices over ``--wave-seconds``.

    Peak users and spawn rate are ``-u`` and ``-r``. Stages, as shares of the
    wave: ramp to half the peak (0-15 %), plateau (to 40 %), second wave to
    the peak (to 55 %), plateau (to 80 %), ramp down to a tenth (to 100 %),
    then stop. Each ramp spawns at the rate that makes it last its stage.
    ``--wave-seconds 0``: flat at ``-u`` (spawned at ``-r``) until ``-t``.
    """

    use_common_options = True
    #: (end of the stage as a share of the wave, users then as a share of -u)
    stages: tuple[tuple[float, float], ...] = (
        (0.15, 0.5),
        (0.40, 0.5),
        (0.55, 1.0),
        (0.80, 1.0),
        (1.00, 0.1),
    )

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        opts = self.runner.environment.parsed_options
        assert opts is not None
        peak = max(1, int(opts.num_users or 1))
        rate = float(opts.spawn_rate or 1)
        length = opts.wave_seconds
        if length is None:
            length = float(opts.run_time or 600)
        now: float = self.get_run_time()  # type: ignore[no-untyped-call]
        if length <= 0:
            if opts.run_time and now >= opts.run_time:
                return None
            return peak, rate
        begin, before = 0.0, 0
        for end, share in self.stages:
            users = max(1, round(peak * share))
            if now < end * length:
                seconds = (end - begin) * length
                if users == before:
                    return users, rate
                return users, max(abs(users - before) / seconds, 0.1)
            begin, before = end, users
        return None
