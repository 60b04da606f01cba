"""deploy/: what can be proven about the deployment artefacts without Docker,
Kubernetes or systemd.

- The Dockerfile is parsed (stages, user, health check, entrypoint), and its
  ENTRYPOINT + CMD and HEALTHCHECK run on the host against a real config.
- The Kubernetes manifests are parsed and checked field by field; the
  ConfigMap's gateway.yaml passes ``gateway check-config`` with the files and
  environment the Deployment gives it.
- The systemd unit is parsed (and verified by ``systemd-analyze`` when
  present); its ExecStart serves under the kernel's memory-deny-write-execute.
- The alert rules pass ``promtool check rules`` and their unit tests; every
  metric the rules and the dashboard query is exported by a live gateway.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.keys import generate_key, issue_token
from gateway.settings import LimitsSettings, parse_duration
from tests.stack import running_stack
from tests.support import free_port, require_program, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "gateway-dashboard.json"
UNIT = DEPLOY / "systemd" / "gateway.service"
SECRET_EXAMPLE = "secret.example.yaml"
GATEWAY_SCRIPT = Path(sysconfig.get_path("scripts")) / "gateway"
KEY = "firmware/acme-x1/1.0.0/app.bin"
UID = 10001


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a gateway subprocess: this checkout's package comes
    first on the path, whatever checkout the venv's editable install names."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"no {instruction} in stage {self.name or self.base}"
        return found[-1]


def dockerfile_stages(text: str) -> list[Stage]:
    """The build stages of a Dockerfile: continuations joined, comments dropped,
    global ``ARG`` defaults substituted into ``FROM``."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages and instruction == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    _, _, command = stage.last("HEALTHCHECK").partition("CMD ")
    return exec_form(command)


def test_dockerfile_builds_in_one_stage_and_runs_lean_as_non_root() -> None:
    builder, final = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    assert builder.name == "builder"
    assert builder.base == final.base == "python:3.11-slim"
    assert "build-essential" in " ".join(builder.all("RUN"))
    assert any("pip wheel" in run for run in builder.all("RUN"))

    # The final stage installs nothing: it only copies the builder's venv.
    assert final.name is None
    assert final.all("COPY") == ["--from=builder /opt/gateway/venv /opt/gateway/venv"]
    runs = " ".join(final.all("RUN"))
    for tool in ("apt-get", "pip", "gcc", "build-essential", "curl"):
        assert tool not in runs
    assert final.last("USER") == f"{UID}:{UID}"
    assert f"--uid {UID}" in runs
    assert final.last("EXPOSE") == "8080"
    assert final.last("STOPSIGNAL") == "SIGTERM"
    assert exec_form(final.last("ENTRYPOINT")) == ["gateway"]
    assert exec_form(final.last("CMD")) == [
        "serve", "--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080",
    ]  # fmt: skip
    check = healthcheck_command(final)
    assert check[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in check[2]
    assert "--interval=" in final.last("HEALTHCHECK")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern
    matching the path or one of its parent directories decides (moby's
    patternmatcher), ``!`` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.removeprefix("!").strip("/"))
        if any(compiled.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    builder, _ = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    sources = [src for args in builder.all("COPY") for src in args.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "gateway"]
    sent = [
        str(path.relative_to(ROOT))
        for source in map(ROOT.joinpath, sources)
        for path in ([source] if source.is_file() else source.rglob("*.py"))
    ]
    assert "gateway/cli.py" in sent and "gateway/signers/s3.py" in sent
    for path in sent:
        assert not dockerignore_excludes(patterns, path), path
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/test_cli.py",
        "tests/servers/node_modules/.bin/s3rver",
        "config/keys/jwks.json",
        "deploy/Dockerfile",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "gateway.egg-info/PKG-INFO",
        ".env",
    ):
        assert dockerignore_excludes(patterns, path), path


# --------------------------------------------------------------------------- a gateway process


@dataclass
class HostConfig:
    path: Path
    env: dict[str, str]
    token: str
    origin: str


def write_host_config(workdir: Path) -> HostConfig:
    """A real config for a gateway process: a local region (nothing needs to
    listen there for a redirect), a JWKS, and a secret read from the environment."""
    keys = workdir / "keys"
    generate_key("EdDSA", keys, "ed1")
    origin = f"http://127.0.0.1:{free_port()}"
    config = {
        "auth": {
            "jwks": str(keys / "jwks.json"),
            "issuer": "https://devices.test.invalid",
            "audience": "firmware-gateway",
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "regions": {
            "eu-central": {
                "location": [50.11, 8.68],
                "backend": {"type": "local", "url": origin, "secret": "env:ORIGIN_SECRET"},
            }
        },
        "health": {"active": False},
        "limits": {"drain_timeout": "5s"},
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    token = issue_token(
        keys / "ed1.pem",
        "ed1",
        "device-0001",
        ttl=600,
        audience="firmware-gateway",
        issuer="https://devices.test.invalid",
        claims={"product": "acme-x1"},
    )
    env = process_env(ORIGIN_SECRET="origin-secret-0123456789")
    return HostConfig(path=path, env=env, token=token, origin=origin)


@contextlib.contextmanager
def gateway_process(
    argv: list[str], env: dict[str, str], port: int, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until it listens on ``port``; SIGKILL it if the test leaves it running."""
    with (workdir / "stdout").open("wb") as out, (workdir / "stderr").open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, cwd=workdir)
        try:
            try:
                wait_for_port(port, 20, proc)
            except RuntimeError:
                raise AssertionError((workdir / "stderr").read_text()) from None
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def assert_serves(base: str, host: HostConfig) -> None:
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    answer = httpx.get(
        f"{base}/v1/binaries/{KEY}",
        headers={"Authorization": f"Bearer {host.token}"},
        timeout=5,
    )
    assert answer.status_code == 307
    assert answer.headers["location"].startswith(f"{host.origin}/{KEY}?")
    assert answer.headers["x-gateway-region"] == "eu-central"
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    assert 'gateway_requests_total{code="307",method="GET",route="binaries"} 1.0' in metrics


def assert_access_logged(workdir: Path) -> None:
    """The download's access-log line reached stdout (the container log / journal)."""
    records = [json.loads(line) for line in (workdir / "stdout").read_text().splitlines()]
    assert [(r["key"], r["status"], r["region"]) for r in records] == [(KEY, 307, "eu-central")]


def test_container_entrypoint_and_healthcheck_work_on_the_host(tmp_path: Path) -> None:
    _, final = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    command = exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))
    host = write_host_config(tmp_path)
    port = free_port()
    # The image's command line, with the host's script, config and a free
    # loopback port in place of the container's.
    replace = {
        "gateway": str(GATEWAY_SCRIPT),
        "/etc/gateway/gateway.yaml": str(host.path),
        "0.0.0.0": "127.0.0.1",
        "8080": str(port),
    }
    argv = [replace.get(word, word) for word in command]
    assert argv[1:3] == ["serve", "--config"] and str(port) in argv
    probe = [
        sys.executable if word == "python" else word.replace(":8080/", f":{port}/")
        for word in healthcheck_command(final)
    ]
    with gateway_process(argv, host.env, port, tmp_path) as proc:
        assert_serves(f"http://127.0.0.1:{port}", host)
        assert subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        proc.send_signal(signal.SIGTERM)  # STOPSIGNAL: the ordered drain, then exit 0
        assert proc.wait(15) == 0
    assert_access_logged(tmp_path)
    # Nothing listens any more: the health check reports unhealthy.
    assert subprocess.run(probe, capture_output=True, timeout=10).returncode == 1


# --------------------------------------------------------------------------- Kubernetes


def manifests() -> dict[str, dict[str, Any]]:
    """Every object of the kustomize base, and the Secret example, by kind."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for name in [*kustomization["resources"], SECRET_EXAMPLE]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                assert doc["kind"] not in objects, f"two {doc['kind']} objects"
                objects[doc["kind"]] = doc
    return objects


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def gateway_yaml() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(manifests()["ConfigMap"]["data"]["gateway.yaml"])
    return config


def test_kustomization_lists_every_manifest_and_pins_the_version() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # Never applied: `kubectl apply -k` must not overwrite the real Secret.
    assert SECRET_EXAMPLE not in listed
    assert listed | {SECRET_EXAMPLE} == on_disk
    assert set(manifests()) == {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "ServiceMonitor",
    }  # fmt: skip
    (image,) = kustomization["images"]
    assert image["name"] == container()["image"] == "gateway"
    assert image["newTag"] == __version__


def test_deployment_runs_the_image_command_with_probes_and_resources() -> None:
    deployment = manifests()["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    c = container()
    _, final = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    assert c["args"] == exec_form(final.last("CMD"))
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    spread = pod_spec()["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert all(t["labelSelector"]["matchLabels"] == selector for t in spread)


def test_deployment_drains_within_its_grace_period() -> None:
    c = container()
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    pre_stop = float(sleep[1])
    # Longer than the readiness period: endpoints have dropped the pod by SIGTERM.
    assert pre_stop > c["readinessProbe"]["periodSeconds"]
    limits = gateway_yaml()["limits"]
    defaults = LimitsSettings()
    drain_delay = parse_duration(limits.get("drain_delay", defaults.drain_delay))
    drain_timeout = parse_duration(limits.get("drain_timeout", defaults.drain_timeout))
    assert drain_timeout == 30
    assert pod_spec()["terminationGracePeriodSeconds"] > pre_stop + drain_delay + drain_timeout


def test_deployment_is_locked_down() -> None:
    pod = pod_spec()
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    security = container()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The one writable place.
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert "emptyDir" in volumes["tmp"]
    assert all(m.get("readOnly") for name, m in mounts.items() if name != "tmp")


def test_config_comes_from_the_configmap_and_secrets_from_the_secret() -> None:
    objects = manifests()
    pod = pod_spec()
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = volumes[mounts["/etc/gateway"]]
    assert config_volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    secret = objects["Secret"]
    secret_name = secret["metadata"]["name"]
    secret_volume = next(v for v in volumes.values() if "secret" in v)
    assert secret_volume["secret"]["secretName"] == secret_name
    assert secret_volume["secret"]["defaultMode"] == 0o440
    # Every env:NAME in the config is a variable the container takes from the Secret.
    text = objects["ConfigMap"]["data"]["gateway.yaml"]
    wanted = set(re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", text))
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container()["env"]}
    assert wanted == set(env)
    assert "envFrom" not in container()  # a PEM key must never become a variable
    for ref in env.values():
        assert ref["name"] == secret_name
        assert ref["key"] in secret["stringData"]
    # Every placeholder says so.
    for value in secret["stringData"].values():
        assert "REPLACE-ME" in value
    assert "EXAMPLE ONLY" in (K8S / SECRET_EXAMPLE).read_text()


def materialize_volumes(root: Path, secret_values: dict[str, str]) -> dict[str, Path]:
    """Write what each ConfigMap/Secret volume would hold under ``root``; map each
    mount path to its directory. Secret values come from ``secret_values``."""
    objects = manifests()
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    where: dict[str, Path] = {}
    for mount in container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            files = dict(objects["ConfigMap"]["data"])
        elif "secret" in volume:
            items = volume["secret"].get("items") or [
                {"key": k, "path": k} for k in objects["Secret"]["stringData"]
            ]
            files = {item["path"]: secret_values[item["key"]] for item in items}
        else:
            continue
        directory = root / mount["name"]
        directory.mkdir(parents=True)
        for name, content in files.items():
            (directory / name).write_text(content)
        where[mount["mountPath"]] = directory
    return where


def configmap_config(root: Path, secret_values: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """The ConfigMap's gateway.yaml with its mount paths pointing into ``root``,
    and the container's environment, as ``gateway check-config`` would see them."""
    where = materialize_volumes(root, secret_values)
    text = (where["/etc/gateway"] / "gateway.yaml").read_text()
    for mount_path, directory in where.items():
        text = text.replace(f"{mount_path}/", f"{directory}/")
    assert "/etc/gateway" not in text, "a path outside every mounted volume"
    path = root / "gateway.yaml"
    path.write_text(text)
    env = process_env()
    for variable in container()["env"]:
        env[variable["name"]] = secret_values[variable["valueFrom"]["secretKeyRef"]["key"]]
    return path, env


def test_configmap_example_passes_check_config(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    values = {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AZURE_STORAGE_KEY": base64.b64encode(bytes(range(64))).decode(),
        "cloudfront.pem": pem,
    }
    assert set(values) == set(manifests()["Secret"]["stringData"])
    path, env = configmap_config(tmp_path, values)
    result = subprocess.run(
        [str(GATEWAY_SCRIPT), "check-config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{path}: ok\n"


def test_secret_placeholders_are_refused_at_start(tmp_path: Path) -> None:
    path, env = configmap_config(tmp_path, manifests()["Secret"]["stringData"])
    result = subprocess.run(
        [str(GATEWAY_SCRIPT), "check-config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    problems = result.stderr.splitlines()
    assert any(p.startswith("regions.ap-northeast.backend.account_key:") for p in problems)
    assert any(p.startswith("regions.us-east.backend.private_key:") for p in problems)


def test_service_hpa_pdb_and_servicemonitor_select_the_pods() -> None:
    objects = manifests()
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["name"] == "http"

    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"

    pdb = objects["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"


# --------------------------------------------------------------------------- systemd


def unit_file(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit: section -> key -> every value given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_sandboxed_and_reloads_on_sighup() -> None:
    unit = unit_file(UNIT.read_text())
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "simple"
    assert service["ExecStart"].startswith(
        "/opt/gateway/venv/bin/gateway serve --config /etc/gateway/gateway.yaml"
    )
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "-/etc/gateway/env"
    defaults = LimitsSettings()
    assert int(service["TimeoutStopSec"]) > defaults.drain_delay + defaults.drain_timeout
    assert service["User"] not in ("root", "0")
    sysusers = (DEPLOY / "systemd" / "gateway.sysusers").read_text()
    assert re.search(rf"^u {service['User']} ", sysusers, re.MULTILINE)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }.items():
        assert service[key] == value, key
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def host_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's script (verify checks it exists)."""
    path = tmp_path / "gateway.service"
    path.write_text(UNIT.read_text().replace("/opt/gateway/venv/bin/gateway", str(GATEWAY_SCRIPT)))
    return path


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path = host_unit(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=30
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    # The threshold is on systemd's internal 0-100 scale: 20 is an exposure of 2.0
    # out of 10 ("OK"; an unhardened service scores 9.6 "UNSAFE").
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "unrecognized option" in security.stderr:
        return  # systemd < 250 cannot score a unit file offline
    assert security.returncode == 0, security.stdout[-400:]
    score = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d)", security.stdout)
    assert score is not None and float(score.group(1)) <= 2.0


# PR_SET_MDWE (Linux >= 6.3) with PR_MDWE_REFUSE_EXEC_GAIN: no mapping may be
# writable and executable, none may become executable later; kept across
# execve. systemd's MemoryDenyWriteExecute= enforces the same rule (with
# seccomp, or with this very prctl since systemd 257).
MDWE_EXEC = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""
MDWE_PROBE = """
import ctypes, mmap
print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("refused")
"""


def test_systemd_command_serves_under_memory_deny_write_execute(tmp_path: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", MDWE_PROBE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert probe.stdout.split() == ["1", "refused"]  # inherited across exec, and enforced

    unit = unit_file(UNIT.read_text())["Service"]
    environment = dict(word.split("=", 1) for word in shlex.split(unit["Environment"][-1]))
    host = write_host_config(tmp_path)
    port = free_port()
    environment["GATEWAY_PORT"] = str(port)
    command = re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], unit["ExecStart"][-1])
    argv = shlex.split(command.replace("/etc/gateway/gateway.yaml", str(host.path)))
    argv[0] = argv[0].replace("/opt/gateway/venv/bin/gateway", str(GATEWAY_SCRIPT))
    config = str(host.path)
    assert argv[1:] == ["serve", "--config", config, "--host", "127.0.0.1", "--port", str(port)]
    with gateway_process(
        [sys.executable, "-c", MDWE_EXEC, *argv], host.env, port, tmp_path
    ) as proc:
        base = f"http://127.0.0.1:{port}"
        assert_serves(base, host)
        proc.send_signal(signal.SIGHUP)  # ExecReload
        reloaded = 'gateway_config_reloads_total{result="success"} 1.0'
        deadline = time.monotonic() + 10
        while reloaded not in httpx.get(f"{base}/metrics", timeout=5).text:
            assert time.monotonic() < deadline, "no successful reload after SIGHUP"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # KillSignal
        assert proc.wait(15) == 0
    assert_access_logged(tmp_path)
    assert "Traceback" not in (tmp_path / "stderr").read_text()


# --------------------------------------------------------------------------- Prometheus


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_program("promtool"), *args], capture_output=True, text=True, timeout=60
    )


def alert_rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_example_is_valid() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "scrape.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_complete_and_tested_firing_and_quiet() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert parse_duration(rule["for"]) > 0, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}
    # The conditions the operations kit promises, by the series each one reads.
    used = " ".join(rule["expr"] for rule in rules)
    for series in (
        'code=~"5.."',
        "gateway_auth_failures_total",
        "gateway_backend_up",
        "gateway_signing_duration_seconds_bucket",
        "gateway_signed_url_cache_total",
        "gateway_request_duration_seconds_bucket",
        'gateway_config_reloads_total{result="failure"}',
        "gateway_rate_limited_total",
    ):
        assert series in used, series
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    for name in names:
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), name
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), name


# --------------------------------------------------------------------------- metric names

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}
# Series Prometheus itself adds to every target.
SCRAPE_SERIES = {"up"}
# Target labels the ServiceMonitor and scrape.yml attach to every series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana query) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if not rest.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its matchers) for every ``metric{...}`` selector."""
    return [
        (m.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))))
        for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr)
    ]


def grouping_labels(expr: str) -> set[str]:
    clauses = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    return {label.strip() for clause in clauses for label in clause.split(",") if label.strip()}


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert inner is not None, query
            exprs.append(inner.group(1))
    return exprs


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (backend, le) (rate(gateway_x_bucket{job=~"$job", '
        'a="b{c}"}[$__rate_interval]))) / ignoring (reason) group_left '
        "sum(up offset 1h) > 1e3 and on (job) gateway_y"
    )
    assert metric_names(expr) == {"gateway_x_bucket", "up", "gateway_y"}
    assert grouping_labels(expr) == {"backend", "le", "reason", "job"}


@dataclass
class Exported:
    names: set[str]
    labels: dict[str, set[str]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Every sample name (and its labels) a live gateway's /metrics exports, after
    streamed and refused downloads, plus the names implied by families that
    have no sample yet (a labelled counter before its first increment)."""

    def stream(config: dict[str, Any]) -> None:
        config["delivery"] = {"mode": "stream"}

    workdir = tmp_path_factory.mktemp("metrics")
    with running_stack(workdir, edit=stream) as stack, stack.client() as c:
        auth = {"Authorization": f"Bearer {stack.token()}"}
        for _ in range(2):
            assert c.get(f"/v1/binaries/{KEY}", headers=auth).status_code == 200
            assert c.get(f"/v1/urls/{KEY}", headers=auth).status_code == 200
        refused = c.get(f"/v1/binaries/{KEY}", headers={"Authorization": "Bearer x"})
        assert refused.status_code == 401
        text = c.get("/metrics").text
        samples = stack.metrics()
    # The premise of GatewaySigningErrors: one signed-URL lookup per region decision.
    decisions = sum(v for (n, _), v in samples.items() if n == "gateway_region_decisions_total")
    lookups = sum(v for (n, _), v in samples.items() if n == "gateway_signed_url_cache_total")
    assert decisions == lookups == 4
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    assert "gateway_upstream_requests_total" in labels  # a streamed download happened
    return Exported(names=names, labels=labels)


def check_queries(exprs: list[str], exported: Exported) -> set[str]:
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        unknown = names - exported.names - SCRAPE_SERIES
        assert not unknown, f"{sorted(unknown)} not exported; in {expr}"
        used |= names
        for metric, matched in selector_labels(expr):
            if metric in exported.labels:
                assert matched <= exported.labels[metric] | TARGET_LABELS, (metric, matched)
        if names <= exported.labels.keys() | SCRAPE_SERIES:
            known = set().union(*(exported.labels.get(n, set()) for n in names))
            assert grouping_labels(expr) <= known | TARGET_LABELS | {"le"}, expr
    return used


def test_alert_rules_use_only_exported_metrics(exported: Exported) -> None:
    used = check_queries([rule["expr"] for rule in alert_rules()], exported)
    assert "gateway_backend_up" in used


def test_dashboard_uses_only_exported_metrics_and_shows_each_area(exported: Exported) -> None:
    used = check_queries(dashboard_queries(), exported)
    assert used >= {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_region_decisions_total",
        "gateway_signed_url_cache_total",
        "gateway_signing_duration_seconds_bucket",
        "gateway_streamed_bytes_total",
        "gateway_backend_up",
        "gateway_inflight_requests",
        "gateway_active_streams",
        "gateway_auth_failures_total",
        "gateway_rate_limited_total",
        "gateway_config_reloads_total",
    }


def test_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"] and p["title"] and p["description"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "namespace"}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: each query becomes a recording rule,
    # with Grafana's variables replaced by what Grafana would send.
    values = {"$__rate_interval": "1m", "$job": "gateway", "$namespace": ".*"}
    rules = []
    for n, expr in enumerate(dashboard_queries()):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
