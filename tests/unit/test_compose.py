"""docker-compose.yml: valid against the compose specification, and shaped the way docs/deployment.md says.

There is no Docker engine on the test machines, so the stack is validated, never started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lethe.config import BUCKETS, PROJECT_DIR

COMPOSE = PROJECT_DIR / "docker-compose.yml"
DOCKERFILE = PROJECT_DIR / "deploy" / "Dockerfile"
ENV_EXAMPLE = PROJECT_DIR / "deploy" / "env.example"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
ONE_SHOT = {"airflow-init", "minio-init"}
BACKING = {"airflow-db", "primary-db", "redis", "minio"}
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def substitute(value: str) -> str:
    """What `docker compose` does with ${VAR...}, with a placeholder value for every variable."""
    return VARIABLE.sub(lambda m: f"<{m.group(1)}>", value.replace("$$", "$"))


def test_validates_against_the_compose_specification() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    command = str(exe) if exe.exists() else shutil.which("check-jsonschema")
    assert command, "check-jsonschema (a dev dependency) is not installed"
    result = subprocess.run(
        [command, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_component_of_the_stack_is_a_service(services: dict[str, Any]) -> None:
    assert set(services) == AIRFLOW_SERVICES | ONE_SHOT | BACKING


def test_long_running_services_have_healthchecks_and_restart(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES | BACKING:
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        assert services[name].get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", f"{name} runs once and must not restart"


def test_dependencies_wait_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {target}: condition {spec.get('condition')}"
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert {"airflow-db", "redis", "primary-db", "minio-init", "airflow-init"} <= set(depends), name
    assert "airflow-apiserver" in services["airflow-worker"]["depends_on"], "workers reach tasks' API server"


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} names no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"
    base = re.search(r"^ARG AIRFLOW_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and base.group(1).startswith("apache/airflow:3.3.2"), "the Airflow image must be pinned to 3.3.2"
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name


def test_dockerfile_copies_paths_that_exist() -> None:
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY"):
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                assert (PROJECT_DIR / source).exists(), f"Dockerfile copies missing {source}"


def test_volumes_are_named_or_repository_files(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    used: set[str] = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                assert volume["type"] == "bind" and volume.get("read_only"), f"{name}: {volume}"
                assert (PROJECT_DIR / volume["source"]).is_file(), f"{name} mounts missing {volume['source']}"
                continue
            source = volume.split(":")[0]
            assert source in declared, f"{name} mounts {source!r}, which is not a named volume"
            used.add(source)
    for name in BACKING:
        assert services[name].get("volumes"), f"{name} keeps its data in no volume"
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_airflow_runs_celery_with_lethe_connections(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        env = {key: substitute(str(value)) for key, value in services[name]["environment"].items()}
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379"), name
        assert "@airflow-db:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW_CONN_LETHE_PRIMARY"].startswith("postgres://lethe:"), name
        assert env["AIRFLOW_CONN_LETHE_PRIMARY"].endswith("@primary-db:5432/reskill"), name
        aws = json.loads(env["AIRFLOW_CONN_LETHE_AWS"])
        assert aws["conn_type"] == "aws" and aws["extra"]["endpoint_url"] == "http://minio:9000", name
        key = json.loads(env["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])
        assert key["password"] == "<LETHE_PSEUDONYM_KEY>", f"{name}: the pseudonym key must come from the env"
        assert env["AIRFLOW_CONN_LETHE_AIRFLOW_METADATA"].endswith("@airflow-db:5432/airflow"), name
    assert services["airflow-worker"]["command"] == ["celery", "worker"]


def test_primary_and_metadata_databases_are_separate(services: dict[str, Any]) -> None:
    assert services["airflow-db"]["environment"]["POSTGRES_DB"] == "airflow"
    assert services["primary-db"]["environment"]["POSTGRES_DB"] == "reskill"
    assert services["airflow-db"]["volumes"] != services["primary-db"]["volumes"]


def test_the_init_job_creates_the_pool_every_lethe_task_takes_a_slot_of(services: dict[str, Any]) -> None:
    from lethe.dag_defaults import PRIMARY_POOL, PRIMARY_POOL_SLOTS

    script = "\n".join(services["airflow-init"]["command"])
    assert f"airflow pools set {PRIMARY_POOL} {PRIMARY_POOL_SLOTS} " in script


def test_minio_init_creates_every_bucket_versioned() -> None:
    script = (PROJECT_DIR / "deploy" / "minio-init.sh").read_text()
    names = re.search(r"for bucket in (.+); do", script)
    assert names, "minio-init.sh lists no buckets"
    created = {n.strip('"').replace("$prefix", "lethe") for n in names.group(1).split()}
    assert created == set(BUCKETS.all())
    assert 'mc version enable "lethe/$bucket"' in script


def test_every_required_variable_is_in_the_env_example() -> None:
    required = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line}
    assert required <= example, f"missing from deploy/env.example: {sorted(required - example)}"


def test_fab_auth_manager_with_the_admin_created_by_the_init_job(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        env = {key: substitute(str(value)) for key, value in services[name]["environment"].items()}
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ), name
        assert not [key for key in env if "SIMPLE_AUTH_MANAGER" in key], f"{name} still configures SimpleAuthManager"
        assert env["AIRFLOW__API__SECRET_KEY"] == "<AIRFLOW_API_SECRET_KEY>", f"{name}: one session key from the env"
    script = "\n".join(services["airflow-init"]["command"])
    steps = [line.strip() for line in script.splitlines()]
    create = next(line for line in steps if line.startswith("airflow users create"))
    assert "--username admin" in create and "--role Admin" in create
    # The password comes from the environment at run time (compose's $$ escapes to a literal $), never the file.
    assert '--password "$$AIRFLOW_ADMIN_PASSWORD"' in create
    assert steps.index("airflow db migrate") < steps.index("airflow fab-db migrate") < steps.index(create)
    init_env = {key: substitute(str(value)) for key, value in services["airflow-init"]["environment"].items()}
    assert init_env["AIRFLOW_ADMIN_PASSWORD"] == "<AIRFLOW_ADMIN_PASSWORD>"
    assert services["airflow-apiserver"]["command"] == ["api-server"], "the api-server writes no password file"


def test_redis_stays_on_7_2(services: dict[str, Any]) -> None:
    assert services["redis"]["image"].startswith("redis:7.2."), services["redis"]["image"]


def test_the_image_installs_what_uv_lock_pins_without_the_dev_group() -> None:
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    copies = [line for line in lines if line.startswith("COPY")]
    assert any("uv.lock" in line.split() for line in copies), "the lock file is not copied into the image"
    run = " ".join(line for line in lines if line.startswith("RUN"))
    export = re.search(r"uv export ([^&]+)", run)
    assert export, "the image does not export its requirements from uv.lock"
    options = export.group(1).split()
    assert {"--frozen", "--no-dev", "--no-emit-project"} <= set(options), options
    assert "--require-hashes" in run, "the exported pins are installed without their hashes"
    installs = re.findall(r"pip install ([^&]+)", run)
    project = [args for args in installs if "/opt/lethe" in args.split()]
    assert project and all("--no-deps" in args.split() for args in project), "installing the project re-resolves"
    dev = re.search(r"^dev = \[(.*?)^\]", (PROJECT_DIR / "pyproject.toml").read_text(), re.S | re.M)
    assert dev
    for requirement in re.findall(r'"([A-Za-z0-9_.-]+)', dev.group(1)):
        assert requirement not in run, f"the image installs the dev dependency {requirement}"
