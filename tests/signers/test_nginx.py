"""The ``nginx`` backend against a real nginx running the shipped config.

Every nginx here runs ``deploy/nginx/gateway-origin.conf`` itself, with only
the listen address, the root and the secrets' map substituted (each
substitution must match exactly once, so an edit of the shipped file that the
test can no longer follow fails here instead of silently testing something
else). nginx runs in the foreground (``daemon off``) with a master and one worker,
as in production, so ``reload`` is the real SIGHUP reload; every path it
writes is inside ``tmp_path``, so it needs no root, and run as root its worker
stays root (``user root``) so it can read ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from gateway.errors import ConfigError
from gateway.keys import generate_key
from gateway.settings import NginxBackend, parse_settings
from gateway.signers import SignedURL, build_signer
from gateway.signers.nginx import NginxSigner, create, secure_link_md5
from tests.stack import running_gateway
from tests.support import free_port, require_program, wait_for_port

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "gateway-origin.conf"
KEY = "firmware/acme-x1/1.0.0/app.bin"
OTHER_KEY = "firmware/acme-x1/1.0.1/app.bin"
# Every character an object key may hold beyond letters and digits: nginx's
# $uri must see each of them exactly as sent.
ODD_KEY = "firmware/acme-x1/v1.0+build=7,rc@lab~2_x-y/app.bin"
FILES = {
    KEY: bytes(range(256)) * 400 + b"tail",
    OTHER_KEY: b"the other build\n" * 64,
    ODD_KEY: b"odd but valid key\n",
}
SECRET = "nginx-test-secret-0123456789abcdef"
OLD = "old-secret-Zr4pQ8xN2vB7"
NEW = "new-secret-Kd9sW3mT6yH1"

# The shipped secrets' map: replaced as a whole by the test's secrets.
_MAP_BLOCK = re.compile(r"^map \$arg_key \$gateway_secret \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)


def render_site(root: Path, port: int, secrets: Mapping[str | None, str]) -> str:
    """The shipped config with this test's port, root and secrets (``None`` is ``default``)."""
    text = DEPLOY_CONF.read_text()
    entries = "".join(
        f'    {"default" if name is None else chr(34) + name + chr(34)}  "{value}";\n'
        for name, value in secrets.items()
    )
    replacements = [
        ("    listen 80;\n", f"    listen 127.0.0.1:{port};\n"),
        ("    root /srv/firmware;\n", f"    root {root};\n"),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"the shipped config no longer has exactly one {old!r}"
        text = text.replace(old, new)
    text, count = _MAP_BLOCK.subn(f"map $arg_key $gateway_secret {{\n{entries}}}\n", text)
    assert count == 1, "the shipped config no longer has exactly one secrets' map"
    return text


def write_config(
    prefix: Path, root: Path, port: int, secrets: Mapping[str | None, str], generation: int
) -> None:
    """nginx's site config for ``secrets``, plus a marker server naming its ``generation``."""
    (prefix / "gateway-origin.conf").write_text(render_site(root, port, secrets))
    # A second server the test asks which configuration is live, so a reload
    # is waited for, not slept for.
    (prefix / "generation.conf").write_text(
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    server_name generation.invalid;\n"
        f'    location = /generation {{ return 200 "{generation}"; }}\n'
        "}\n"
    )


@dataclass
class Nginx:
    """One running nginx; ``reload`` rewrites its secrets and reloads it like an operator."""

    base: str
    port: int
    root: Path
    prefix: Path
    proc: subprocess.Popen[bytes]
    generation: int = 1

    def reload(self, secrets: Mapping[str | None, str]) -> None:
        """Write new secrets and send SIGHUP (what ``nginx -s reload`` sends)."""
        self.generation += 1
        write_config(self.prefix, self.root, self.port, secrets, self.generation)
        old_workers = self._workers()
        self.proc.send_signal(signal.SIGHUP)
        # Done when the new config answers and every old worker has exited:
        # until then an old worker may still accept a connection and answer
        # with the old secrets.
        deadline = time.monotonic() + 10
        while self._live_generation() != self.generation or self._workers() & old_workers:
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not reload:\n{self.error_log()}")
            time.sleep(0.02)

    def _workers(self) -> set[str]:
        """Pids of the master's children (Linux /proc)."""
        pid = self.proc.pid
        return set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())

    def _live_generation(self) -> int | None:
        try:
            response = httpx.get(
                f"{self.base}/generation", headers={"Host": "generation.invalid"}, timeout=5
            )
        except httpx.TransportError:
            # An old worker closing as it hands over; ask again.
            return None
        return int(response.text)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""


MAIN_CONF = """\
daemon off;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/gateway-origin.conf;
    include {prefix}/generation.conf;
}}
"""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def running_nginx(workdir: Path, secrets: Mapping[str | None, str]) -> Iterator[Nginx]:
    """nginx on 127.0.0.1 serving ``FILES`` with the shipped config and ``secrets``."""
    program = require_program("nginx")
    root = workdir / "root"
    for key, data in FILES.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    prefix = workdir / "nginx"
    prefix.mkdir(parents=True)
    # Run as root, nginx would start its worker as "nobody", which cannot read
    # tmp_path (mode 0700): keep the worker as the user running the tests.
    # (Not root, nginx cannot switch users and the directive is left out.)
    user = ""
    if os.geteuid() == 0:
        names = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
        user = "user {} {};".format(*names)
    (prefix / "nginx.conf").write_text(MAIN_CONF.format(prefix=prefix, user=user))
    port = free_port()
    # -e: the log nginx writes before it has read the config (the compiled-in
    # default may be /var/log/nginx/error.log, not writable without root).
    command = [program, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    command += ["-e", str(prefix / "error.log")]
    write_config(prefix, root, port, secrets, generation=1)
    # Its own process group, so a master that must be killed takes its worker along.
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = Nginx(f"http://127.0.0.1:{port}", port, root, prefix, proc)
    try:
        try:
            wait_for_port(port, timeout=10, proc=proc)
        except RuntimeError:
            _kill_group(proc)
            raise AssertionError(f"nginx did not start:\n{server.error_log()}") from None
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(proc)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with running_nginx(tmp_path, {None: SECRET}) as server:
        yield server


def nginx_settings(base: str, **backend: Any) -> NginxBackend:
    """The backend settings of a one-region config, validated like the real file."""
    settings = parse_settings(
        {
            "auth": {"jwks": "unused.json", "issuer": "i", "audience": "a"},
            "access": [{"prefix": "firmware/"}],
            "regions": {
                "eu": {
                    "location": [50.1, 8.7],
                    "backend": {"type": "nginx", "url": base, **backend},
                }
            },
        }
    )
    backend_settings = settings.regions["eu"].backend
    assert isinstance(backend_settings, NginxBackend)
    return backend_settings


def sign(signer: NginxSigner, key: str, signed_at: int, expires_at: int) -> SignedURL:
    return asyncio.run(signer.sign(key, signed_at, expires_at))


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    params = {**query(url), **changes}
    return f"{parts.scheme}://{parts.netloc}{parts.path}?" + "&".join(
        f"{k}={v}" for k, v in params.items()
    )


# --------------------------------------------------------------------------- end to end


def test_gateway_redirect_is_served_by_nginx(tmp_path: Path, nginx: Nginx) -> None:
    regions = {
        "eu": {
            "location": [50.1, 8.7],
            "backend": {"type": "nginx", "url": nginx.base, "secret": SECRET},
        }
    }
    with running_gateway(tmp_path / "gateway", regions) as gateway:
        redirect = gateway.get(KEY)
        assert redirect.status_code == 307
        location = redirect.headers["location"]
        assert location.startswith(f"{nginx.base}/{KEY}?md5=")
        assert set(query(location)) == {"md5", "expires"}  # one secret: no key id

        download = httpx.get(location, timeout=10)
        assert download.status_code == 200
        assert download.content == FILES[KEY]
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["x-content-type-options"] == "nosniff"

        # etag on: a device can revalidate and resume with the same signed URL.
        etag = download.headers["etag"]
        assert httpx.get(location, headers={"If-None-Match": etag}, timeout=10).status_code == 304
        resumed = httpx.get(location, headers={"Range": "bytes=100-", "If-Range": etag}, timeout=10)
        assert resumed.status_code == 206
        assert resumed.content == FILES[KEY][100:]


def test_gateway_signs_with_the_active_rotated_secret(tmp_path: Path) -> None:
    now = int(time.time())
    with running_nginx(tmp_path / "n", {None: OLD, "old": OLD, "new": NEW}) as server:
        backend = {
            "type": "nginx",
            "url": server.base,
            "secrets": [
                {"id": "old", "secret": OLD},
                {"id": "new", "secret": NEW, "not_before": now - 3600},
            ],
        }
        regions = {"eu": {"location": [50.1, 8.7], "backend": backend}}
        with running_gateway(tmp_path / "gateway", regions) as gateway:
            location = gateway.get(KEY).headers["location"]
            assert query(location)["key"] == "new"
            download = httpx.get(location, timeout=10)
            assert (download.status_code, download.content) == (200, FILES[KEY])


# --------------------------------------------------------------------------- what nginx refuses


def test_key_with_every_allowed_character_verifies(nginx: Nginx) -> None:
    signer = create(nginx_settings(nginx.base, secret=SECRET), "regions.eu.backend")
    now = int(time.time())
    url = sign(signer, ODD_KEY, now, now + 300).url
    assert urlsplit(url).path == f"/{ODD_KEY}"
    response = httpx.get(url, timeout=10)
    assert (response.status_code, response.content) == (200, FILES[ODD_KEY])


def test_tampered_md5_is_403(nginx: Nginx) -> None:
    signer = create(nginx_settings(nginx.base, secret=SECRET), "regions.eu.backend")
    now = int(time.time())
    url = sign(signer, KEY, now, now + 300).url
    md5 = query(url)["md5"]
    flipped = ("A" if md5[0] != "A" else "B") + md5[1:]
    assert httpx.get(url, timeout=10).status_code == 200
    assert httpx.get(with_query(url, md5=flipped), timeout=10).status_code == 403
    # A later expiry with the same checksum is also a wrong checksum.
    later = str(now + 3600)
    assert httpx.get(with_query(url, expires=later), timeout=10).status_code == 403
    unsigned = httpx.get(f"{nginx.base}/{KEY}", timeout=10)
    assert unsigned.status_code == 403


def test_expired_url_is_410(nginx: Nginx) -> None:
    signer = create(nginx_settings(nginx.base, secret=SECRET), "regions.eu.backend")
    now = int(time.time())
    url = sign(signer, KEY, now - 900, now - 10).url
    assert httpx.get(url, timeout=10).status_code == 410


def test_md5_of_another_path_is_403(nginx: Nginx) -> None:
    signer = create(nginx_settings(nginx.base, secret=SECRET), "regions.eu.backend")
    now = int(time.time())
    url = sign(signer, KEY, now, now + 300).url
    other = url.replace(KEY, OTHER_KEY)
    assert httpx.get(other, timeout=10).status_code == 403
    # ...while the other path's own URL is served: the 403 is the checksum.
    own = sign(signer, OTHER_KEY, now, now + 300).url
    assert httpx.get(own, timeout=10).content == FILES[OTHER_KEY]


def test_wrong_secret_is_403_and_only_get_is_served(nginx: Nginx) -> None:
    now = int(time.time())
    wrong = create(nginx_settings(nginx.base, secret="not-the-secret"), "regions.eu.backend")
    assert httpx.get(sign(wrong, KEY, now, now + 300).url, timeout=10).status_code == 403
    right = create(nginx_settings(nginx.base, secret=SECRET), "regions.eu.backend")
    url = sign(right, KEY, now, now + 300).url
    head = httpx.head(url, timeout=10)
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(FILES[KEY])))
    assert httpx.post(url, timeout=10).status_code == 403
    assert httpx.get(f"{nginx.base}/elsewhere/x.bin", timeout=10).status_code == 404


# --------------------------------------------------------------------------- rotation


def test_rotation_switches_at_not_before_and_old_urls_keep_verifying(tmp_path: Path) -> None:
    now = int(time.time())
    switch = now - 100  # the new secret's not_before
    settings = nginx_settings(
        "http://placeholder.invalid",
        secrets=[
            {"id": "old", "secret": OLD},
            {"id": "new", "secret": NEW, "not_before": switch},
        ],
    )
    with running_nginx(tmp_path, {None: OLD, "old": OLD, "new": NEW}) as server:
        signer = create(settings.model_copy(update={"url": server.base}), "regions.eu.backend")

        # Signed a second before not_before (and still valid): the old secret.
        before = sign(signer, KEY, switch - 1, switch - 1 + 900).url
        assert query(before)["key"] == "old"
        assert query(before)["md5"] == secure_link_md5(OLD, f"/{KEY}", switch - 1 + 900)
        # Signed at not_before and later: the new one.
        at = sign(signer, KEY, switch, switch + 900).url
        after = sign(signer, KEY, now, now + 900).url
        assert query(at)["key"] == query(after)["key"] == "new"
        assert query(at)["md5"] == secure_link_md5(NEW, f"/{KEY}", switch + 900)
        for url in (before, at, after):
            response = httpx.get(url, timeout=10)
            assert (response.status_code, response.content) == (200, FILES[KEY])

        # The key id selects the secret: an old-secret URL relabelled "new" fails.
        assert httpx.get(with_query(before, key="new"), timeout=10).status_code == 403

        # The operator drops the old secret from nginx's map once its URLs have
        # expired: an old-key URL is then refused, new-key URLs still served.
        server.reload({None: NEW, "new": NEW})
        assert httpx.get(before, timeout=10).status_code == 403
        assert httpx.get(at, timeout=10).status_code == 200


def test_old_secret_url_verifies_until_its_own_expiry(tmp_path: Path) -> None:
    now = int(time.time())
    settings = nginx_settings(
        "http://placeholder.invalid",
        secrets=[
            {"id": "old", "secret": OLD},
            {"id": "new", "secret": NEW, "not_before": now - 5},
        ],
    )
    with running_nginx(tmp_path, {None: OLD, "old": OLD, "new": NEW}) as server:
        signer = create(settings.model_copy(update={"url": server.base}), "regions.eu.backend")
        # Issued under the old secret, before the switch that has now happened.
        live = sign(signer, KEY, now - 600, now + 300).url
        dead = sign(signer, KEY, now - 600, now - 1).url
        assert query(live)["key"] == query(dead)["key"] == "old"
        assert query(sign(signer, KEY, now, now + 300).url)["key"] == "new"
        assert httpx.get(live, timeout=10).status_code == 200
        assert httpx.get(dead, timeout=10).status_code == 410


# --------------------------------------------------------------------------- the format


def test_signing_is_deterministic_and_matches_nginx_docs() -> None:
    # The example of ngx_http_secure_link_module's docs:
    # secure_link_md5 "$secure_link_expires$uri$remote_addr secret" for
    # /s/link from 127.0.0.1 gives md5=_e4Nc3iduzkWRm01TBBNYw&expires=2147483647.
    assert secure_link_md5("secret", "/s/link127.0.0.1", 2147483647) == "_e4Nc3iduzkWRm01TBBNYw"

    signer = create(nginx_settings("https://dl.example.com", secret=SECRET), "regions.eu.backend")
    first = sign(signer, KEY, 1_800_000_000, 1_800_000_900)
    again = sign(signer, KEY, 1_800_000_000, 1_800_000_900)
    other_worker = sign(
        create(nginx_settings("https://dl.example.com", secret=SECRET), "x"),
        KEY,
        1_800_000_000,
        1_800_000_900,
    )
    assert first == again == other_worker
    md5 = secure_link_md5(SECRET, f"/{KEY}", 1_800_000_900)
    assert first == SignedURL(
        f"https://dl.example.com/{KEY}?md5={md5}&expires=1800000900", 1_800_000_900
    )
    assert len(md5) == 22 and "=" not in md5  # 16 bytes, base64url, unpadded


def test_url_path_prefix_is_signed_as_part_of_uri() -> None:
    signer = create(
        nginx_settings("https://dl.example.com/eu/", secret=SECRET), "regions.eu.backend"
    )
    url = sign(signer, KEY, 0, 1_800_000_900).url
    md5 = secure_link_md5(SECRET, f"/eu/{KEY}", 1_800_000_900)
    assert url == f"https://dl.example.com/eu/{KEY}?md5={md5}&expires=1800000900"


def test_a_single_listed_secret_with_an_id_names_it() -> None:
    signer = create(
        nginx_settings("https://dl.example.com", secrets=[{"id": "2026a", "secret": NEW}]),
        "regions.eu.backend",
    )
    assert query(sign(signer, KEY, 0, 900).url)["key"] == "2026a"


# --------------------------------------------------------------------------- config errors


def _problems(make: Callable[[], object]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        make()
    return caught.value.problems


def test_several_secrets_need_distinct_ids() -> None:
    missing = nginx_settings(
        "https://dl.example.com",
        secrets=[{"secret": OLD}, {"id": "new", "secret": NEW, "not_before": 1}],
    )
    assert _problems(lambda: build_signer(missing, "regions.eu.backend")) == [
        "regions.eu.backend.secrets.0.id: required when several secrets are listed "
        "(the URL names its secret with &key=<id> for nginx's map)"
    ]
    duplicate = nginx_settings(
        "https://dl.example.com",
        secrets=[{"id": "k1", "secret": OLD}, {"id": "K1", "secret": NEW, "not_before": 1}],
    )
    assert _problems(lambda: build_signer(duplicate, "regions.eu.backend")) == [
        f"regions.eu.backend.secrets.{i}.id: duplicate id {name!r} (ids are compared ignoring case)"
        for i, name in enumerate(["k1", "K1"])
    ]


def test_secret_nginx_cannot_hold_and_rewritten_prefix_are_refused() -> None:
    bad_secret = nginx_settings("https://dl.example.com", secret="pa$$word")
    assert _problems(lambda: build_signer(bad_secret, "regions.eu.backend")) == [
        "regions.eu.backend.secret: nginx cannot hold this secret in its config; "
        "avoid $ quotes backslash and control characters "
        "(openssl rand -base64 32 gives a good one)"
    ]
    bad_list = nginx_settings(
        "https://dl.example.com/a%20b",
        secrets=[{"id": "a", "secret": 'say "hi"'}, {"id": "b", "secret": NEW, "not_before": 1}],
    )
    assert _problems(lambda: build_signer(bad_list, "regions.eu.backend")) == [
        "regions.eu.backend.url: the path must be plain segments of A-Za-z0-9._~+=,@- "
        "(nginx checks the decoded, normalized path, so an encoded or dotted path "
        "could never verify)",
        "regions.eu.backend.secrets.0.secret: nginx cannot hold this secret in its config; "
        "avoid $ quotes backslash and control characters "
        "(openssl rand -base64 32 gives a good one)",
    ]


def test_check_config_reports_the_nginx_problem(tmp_path: Path) -> None:
    generate_key("EdDSA", tmp_path / "keys", "ed1")
    config = {
        "auth": {"jwks": str(tmp_path / "keys" / "jwks.json"), "issuer": "i", "audience": "a"},
        "access": [{"prefix": "firmware/"}],
        "regions": {
            "eu": {
                "location": [50.1, 8.7],
                "backend": {
                    "type": "nginx",
                    "url": "https://dl.example.com",
                    "secrets": [{"secret": OLD}, {"secret": NEW, "not_before": 1}],
                },
            }
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"regions.eu.backend.secrets.{i}.id: required when several secrets are listed "
        "(the URL names its secret with &key=<id> for nginx's map)"
        for i in (0, 1)
    ]
