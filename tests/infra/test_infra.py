"""Static checks of infra/: Docker cannot run here, so the compose file is validated against the
compose-spec JSON schema (vendored by check-jsonschema) and for internal consistency."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = INFRA / "docker-compose.yml"
LISTEN = {"postgres": 5432, "s3": 8333, "mlflow": 5000, "prefect-server": 4200}  # container ports


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    pairs = [ln.split("=", 1) for ln in (INFRA / ".env.example").read_text().splitlines() if "=" in ln and ln[0] != "#"]
    return {k.strip(): v.strip() for k, v in pairs}


def test_compose_matches_the_compose_spec_schema():
    r = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_variable_is_defined_and_every_defined_variable_is_used():
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    defined = set(_env_example())
    assert used - defined == set(), f"used but not in .env.example: {used - defined}"
    assert defined - used == set(), f"in .env.example but unused: {defined - used}"


def test_ports_bind_to_loopback_and_images_are_pinned(compose: dict):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
        image = svc.get("image", "")
        if "build" not in svc:
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{name}: unpinned image {image}"


def test_service_references_are_consistent(compose: dict):
    services = compose["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        env = " ".join(str(v) for v in (svc.get("environment") or {}).values())
        env += " " + " ".join(map(str, svc.get("command", []) if isinstance(svc.get("command"), list) else []))
        for host, port in re.findall(r"(?:https?|postgresql(?:\+asyncpg)?)://(?:[^@/\s]+@)?([a-z][\w-]*):(\d+)", env):
            if host in ("localhost",):
                continue
            assert host in services, f"{name} points at unknown host {host}"
            assert int(port) == LISTEN[host], f"{name} uses {host}:{port}, but {host} listens on {LISTEN[host]}"
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith("."):
                assert (INFRA / src).exists(), f"{name} mounts missing {src}"
        build = svc.get("build")
        if build:
            ctx = INFRA / build["context"]
            assert (ctx / build.get("dockerfile", "Dockerfile")).exists() or (INFRA / build["dockerfile"]).exists()
    # the databases Postgres creates are the ones the servers use
    env = _env_example()
    assert {env["MLFLOW_DB"], env["PREFECT_DB"]} <= set(env.values())
    init = (INFRA / "postgres/init-databases.sh").read_text()
    assert "$MLFLOW_DB" in init and "$PREFECT_DB" in init


def test_no_secrets_committed():
    assert not (INFRA / ".env").exists() or ".env" in (INFRA.parent / ".gitignore").read_text()
    assert "/infra/.env" in (INFRA.parent / ".gitignore").read_text()


def test_kubernetes_templates_request_gpus():
    tpl = json.loads((INFRA / "k8s/prefect-gpu-job-template.json").read_text())
    container = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert "gpus" in tpl["variables"]["properties"]
    job = yaml.safe_load((INFRA / "k8s/pytorchjob-330m.yaml").read_text())
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["resources"]["limits"]["nvidia.com/gpu"] == 8 and "--profile=mert-330m" in master["args"]


def test_local_scripts_are_loopback_only():
    start = (INFRA / "local/start.sh").read_text()
    assert "--host 127.0.0.1" in start and "0.0.0.0" not in start
    assert 'kill -TERM -- "-$pid"' in (INFRA / "local/stop.sh").read_text()
