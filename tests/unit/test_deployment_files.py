"""Static checks of the Docker deployment: Dockerfile, docker-compose.yml and deploy/.

No Docker engine is needed: the compose file is parsed and validated by the static Compose
binary (``docker-compose`` from the dev dependencies), the Dockerfile by ``hadolint``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

EXPECTED_IMAGES = {
    "postgres": re.compile(r"^postgres:1[5-9](\.\d+)?$"),
    "zookeeper": re.compile(r"^confluentinc/cp-zookeeper:7\.9\.\d+$"),
    "kafka": re.compile(r"^confluentinc/cp-kafka:7\.9\.\d+$"),
    "kafka-init": re.compile(r"^confluentinc/cp-kafka:7\.9\.\d+$"),
    "mockserver": re.compile(r"^mockserver/mockserver:5\.15\.0$"),
    "datadog-agent": re.compile(r"^gcr\.io/datadoghq/agent:7$"),
}
ONE_SHOT = {"migrate", "kafka-init"}
LONG_RUNNING = {
    "app",
    "webhooks",
    "postgres",
    "pgbouncer",
    "zookeeper",
    "kafka",
    "mockserver",
    "datadog-agent",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|PEPPER|ENCRYPTION_KEYS|FINGERPRINT_KEY")
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?-[^}]*)?\}$")
# Variables the app service may set beyond Settings: uvicorn's worker count and the
# Datadog tracer's own configuration (read by ddtrace, not by Settings).
EXTRA_APP_ENV = {"WEB_CONCURRENCY"}


def _tool(name: str) -> str:
    """A dev-dependency binary: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run `uv sync` (it is a dev dependency)")
    return found


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    # --env-file /dev/null: the checks see the committed defaults, not a developer's .env.
    return subprocess.run(
        [_tool("docker-compose"), "--env-file", os.devnull, "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(REPO))},
    )


@cache
def _config(*, interpolate: bool = True) -> dict[str, Any]:
    args = ["config", "--format", "json"] + ([] if interpolate else ["--no-interpolate"])
    result = _compose(*args)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _config()["services"]
    return services


@cache
def _raw_compose() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return raw


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


# ------------------------------------------------------------------------- compose file


def test_compose_file_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_every_service_of_the_stack_is_defined() -> None:
    assert set(_services()) == LONG_RUNNING | ONE_SHOT


def test_long_running_services_have_health_checks() -> None:
    for name in LONG_RUNNING:
        healthcheck = _services()[name].get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_one_shot_services_do_not_restart() -> None:
    for name in ONE_SHOT:
        assert _services()[name].get("restart", "no") == "no", name


def test_every_dependency_states_its_condition() -> None:
    # Checked on the file as written: Compose turns a bare list into service_started.
    for name, service in _raw_compose()["services"].items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must map to conditions"
        for dependency, spec in depends_on.items():
            assert spec.get("condition") in CONDITIONS, f"{name} -> {dependency}"


def test_app_starts_after_migrations_topic_and_healthy_dependencies() -> None:
    depends_on = {
        dependency: spec["condition"]
        for dependency, spec in _services()["app"]["depends_on"].items()
    }
    assert depends_on == {
        "migrate": "service_completed_successfully",
        "kafka-init": "service_completed_successfully",
        "postgres": "service_healthy",
        "pgbouncer": "service_healthy",
        "kafka": "service_healthy",
        "mockserver": "service_healthy",
        # The app must come up without a healthy agent (no API key locally).
        "datadog-agent": "service_started",
    }
    assert _services()["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert _services()["kafka"]["depends_on"]["zookeeper"]["condition"] == "service_healthy"
    assert _services()["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_webhook_dispatcher_runs_from_the_app_image_with_the_app_configuration() -> None:
    services = _services()
    webhooks, app = services["webhooks"], services["app"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert scripts["payments-webhooks"] == "app.dispatcher:main"
    assert webhooks["command"] == ["payments-webhooks"]
    assert webhooks["image"] == app["image"]
    assert not webhooks.get("ports"), "the dispatcher serves nothing"
    # The same settings as the API (the dispatcher needs the vault keys, the topic, the
    # database), minus what only uvicorn reads; the same Datadog tags and log source.
    app_env = {k: v for k, v in app["environment"].items() if k not in EXTRA_APP_ENV}
    assert webhooks["environment"] == app_env
    # ... except the API's Autodiscovery identifier: the readiness http_check is the API's.
    check_id = "com.datadoghq.ad.check.id"
    assert app["labels"][check_id] == "payment-service-api"
    assert webhooks["labels"] == {k: v for k, v in app["labels"].items() if k != check_id}
    assert "://payments_app:" in webhooks["environment"]["DATABASE_URL"]
    depends_on = {
        dependency: spec["condition"] for dependency, spec in webhooks["depends_on"].items()
    }
    assert depends_on == {
        "migrate": "service_completed_successfully",
        "kafka-init": "service_completed_successfully",
        "postgres": "service_healthy",
        "pgbouncer": "service_healthy",
        "kafka": "service_healthy",
        "datadog-agent": "service_started",
    }
    # Its healthcheck cannot be the image's (/health/live on the API's port).
    assert "/health" not in json.dumps(webhooks["healthcheck"]["test"])
    assert "payments-webhooks" in json.dumps(webhooks["healthcheck"]["test"])
    assert webhooks["restart"] == "unless-stopped"
    assert webhooks["stop_grace_period"] in {"1m0s", "60s"}, webhooks["stop_grace_period"]


def test_migrations_run_once_in_their_own_service_as_the_schema_owner() -> None:
    services = _services()
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["image"] == services["app"]["image"]
    assert "://payments_owner:" in services["migrate"]["environment"]["DATABASE_URL"]
    assert "://payments_app:" in services["app"]["environment"]["DATABASE_URL"]
    assert "alembic" not in json.dumps(services["app"].get("command") or [])


def test_kafka_topic_is_created_by_a_one_shot_service() -> None:
    command = _services()["kafka-init"]["command"]
    assert command[0] == "kafka-topics"
    assert {"--create", "--if-not-exists"} <= set(command)
    assert command[command.index("--topic") + 1] == "payments.events"
    assert command[command.index("--partitions") + 1] == "3"


def test_images_are_pinned_to_maintained_tags() -> None:
    for name, pattern in EXPECTED_IMAGES.items():
        image = _services()[name]["image"]
        assert pattern.fullmatch(image), f"{name}: {image}"
    for name, service in _services().items():
        image = service.get("image", "")
        assert not image.endswith(":latest"), name
        assert "build" in service or ":" in image, f"{name}: untagged image {image}"
    assert _services()["app"]["build"]["dockerfile"] == "Dockerfile"


def test_published_ports_bind_loopback_only() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"


def test_only_deploy_files_are_mounted_from_the_repository_and_read_only() -> None:
    deploy = REPO / "deploy"
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert volume.get("read_only"), f"{name}: {source} is mounted read-write"
            if source == REPO or REPO in source.parents:
                assert deploy in source.parents, f"{name} mounts {source} from the source tree"
            if name != "datadog-agent":
                assert deploy in source.parents, f"{name} mounts host path {source}"


def test_deploy_files_the_compose_file_mounts_exist() -> None:
    for service in _services().values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and (REPO / "deploy") in Path(volume["source"]).parents:
                assert Path(volume["source"]).exists(), volume["source"]


def test_secrets_are_interpolated_never_literal() -> None:
    for name, service in _config(interpolate=False)["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(str(value)), f"{name}.{key} is a literal"
            if key in {"DATABASE_URL", "DATABASE_DIRECT_URL"}:
                password = re.match(r"^[^:]+://[^:@/]+:([^@]*)@", str(value))
                assert password, f"{name}: DATABASE_URL has no password"
                assert INTERPOLATION.fullmatch(password.group(1)), f"{name}: literal password"


def _settings_env_names() -> dict[str, bool]:
    """Every environment variable Settings reads -> whether it has a default."""
    names = {}
    for field_name, field in Settings.model_fields.items():
        env_name = (field.alias or field_name).upper()
        names[env_name] = not field.is_required()
    return names


def test_every_setting_the_app_reads_is_set_or_defaulted() -> None:
    app_env = _services()["app"]["environment"]
    for env_name, has_default in _settings_env_names().items():
        assert has_default or env_name in app_env, f"{env_name} is required but not set"


def test_app_points_at_the_compose_services() -> None:
    app_env = _services()["app"]["environment"]
    assert app_env["DATABASE_URL"].startswith("postgresql+asyncpg://")
    # Through PgBouncer (transaction pooling: no statement cache), LISTEN directly.
    assert app_env["DATABASE_URL"].endswith("@pgbouncer:6432/payments")
    assert app_env["DB_STATEMENT_CACHE_SIZE"] == "0"
    assert app_env["DATABASE_DIRECT_URL"].startswith("postgresql+asyncpg://payments_app:")
    assert app_env["DATABASE_DIRECT_URL"].endswith("@postgres:5432/payments")
    assert app_env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert app_env["BANK_API_URL"] == "http://mockserver:1080"
    assert app_env["DD_AGENT_HOST"] == "datadog-agent"
    assert app_env["DD_DATA_STREAMS_ENABLED"] == "true"
    assert app_env["DD_DBM_PROPAGATION_MODE"] == "disabled"
    assert app_env["DD_LOGS_INJECTION"] == "true"
    for name in ("DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_TRACE_ENABLED"):
        assert app_env.get(name), name


def test_app_sets_no_variable_nothing_reads() -> None:
    known = set(_settings_env_names()) | EXTRA_APP_ENV
    for name in _services()["app"]["environment"]:
        assert name in known or name.startswith("DD_"), f"{name} is read by nothing"


def test_kafka_has_an_internal_listener_for_the_containers() -> None:
    env = _services()["kafka"]["environment"]
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"


def test_mockserver_loads_the_shared_bank_expectations() -> None:
    mockserver = _services()["mockserver"]
    path = mockserver["environment"]["MOCKSERVER_INITIALIZATION_JSON_PATH"]
    mounts = {v["target"]: Path(v["source"]) for v in mockserver["volumes"]}
    assert mounts[path] == REPO / "deploy" / "mockserver" / "expectations.json"


def test_postgres_preloads_pg_stat_statements_and_runs_the_init_scripts() -> None:
    postgres = _services()["postgres"]
    assert "shared_preload_libraries=pg_stat_statements" in postgres["command"]
    mounts = {v["target"]: Path(v["source"]) for v in postgres["volumes"] if v["type"] == "bind"}
    initdb = mounts["/docker-entrypoint-initdb.d"]
    assert initdb == REPO / "deploy" / "postgres" / "initdb"
    scripts = sorted(initdb.glob("*.sh"))
    assert scripts, "no init script"
    text = "\n".join(script.read_text() for script in scripts)
    for needle in (
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "ALTER DEFAULT PRIVILEGES FOR ROLE payments_owner",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO payments_app",
        "GRANT pg_monitor TO datadog",
        "CREATE SCHEMA IF NOT EXISTS datadog",
        "datadog.explain_statement",
    ):
        assert needle in text, needle
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_datadog_agent_monitors_postgres_without_a_literal_password() -> None:
    agent = _services()["datadog-agent"]
    mounts = {v["target"]: Path(v["source"]) for v in agent["volumes"]}
    conf_d = mounts["/conf.d"]
    conf = yaml.safe_load((conf_d / "postgres.d" / "conf.yaml").read_text())
    instance = conf["instances"][0]
    assert instance["dbm"] is True
    assert instance["username"] == "datadog"
    assert instance["password"] == "%%env_DD_POSTGRES_PASSWORD%%"
    assert "DD_POSTGRES_PASSWORD" in agent["environment"]
    assert agent["environment"]["DD_LOGS_ENABLED"] == "true"
    assert agent["environment"]["DD_APM_NON_LOCAL_TRAFFIC"] == "true"


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_with_a_python_version_argument() -> None:
    instructions = _dockerfile_instructions()
    assert [kw for kw, _ in instructions].count("FROM") >= 2
    assert ("ARG", "PYTHON_VERSION=3.13") in instructions
    assert all("${PYTHON_VERSION}-slim" in args for kw, args in instructions if kw == "FROM")


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    instructions = _dockerfile_instructions()
    sync_deps = next(
        i
        for i, (kw, args) in enumerate(instructions)
        if kw == "RUN" and "--no-install-project" in args
    )
    assert "--frozen" in instructions[sync_deps][1]
    assert "--no-dev" in instructions[sync_deps][1]
    copies_before = [args for kw, args in instructions[:sync_deps] if kw == "COPY"]
    assert copies_before == ["pyproject.toml uv.lock ./"]
    assert any(kw == "COPY" and args.startswith("app ") for kw, args in instructions[sync_deps:])


def test_final_image_runs_as_non_root_with_a_health_check() -> None:
    stage = _final_stage()
    users = [args for kw, args in stage if kw == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    healthchecks = [args for kw, args in stage if kw == "HEALTHCHECK"]
    assert healthchecks, "no HEALTHCHECK in the final stage"
    assert "/health/live" in healthchecks[-1]
    assert "curl" not in healthchecks[-1]


def test_final_image_starts_uvicorn_in_exec_form() -> None:
    stage = _final_stage()
    starts = [(kw, args) for kw, args in stage if kw in {"CMD", "ENTRYPOINT"}]
    assert starts
    for _, args in starts:
        assert args.startswith("["), f"shell form: {args}"
        json.loads(args)
    command = json.loads(next(args for kw, args in starts if kw == "CMD"))
    assert command[:2] == ["uvicorn", "app.main:create_app"]
    assert "--factory" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside the container


def test_final_image_has_no_build_tooling() -> None:
    stage_text = "\n".join(f"{kw} {args}" for kw, args in _final_stage())
    for tool in ("uv sync", "build-essential", "gcc", "--group dev", "apt-get install"):
        assert tool not in stage_text, tool


def test_dockerignore_keeps_secrets_state_and_caches_out() -> None:
    entries = set((REPO / ".dockerignore").read_text().split())
    for needed in (".env", ".git", ".stack/", ".venv/", "**/__pycache__/", ".pytest_cache/"):
        assert needed in entries, needed


def _lint_commands() -> list[str]:
    """The tool invocations of ``make lint``, without the ``$(UV) run --frozen`` prefix."""
    makefile = (REPO / "Makefile").read_text("utf-8")
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    return [
        line.strip().removeprefix("@$(UV) run --frozen ")
        for line in recipe.splitlines()[1:]
        if line.strip().startswith("@$(UV) run --frozen ")
    ]


def test_the_pre_commit_hooks_run_what_make_lint_runs() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text("utf-8"))
    entries = [
        hook["entry"].removeprefix("uv run --frozen ")
        for repo in config["repos"]
        for hook in repo["hooks"]
    ]
    commands = _lint_commands()
    assert len(commands) == 5, commands
    for command in commands:
        tool_and_flags = command.split(" app", 1)[0]  # a hook receives the file names itself
        assert any(entry.startswith(tool_and_flags) for entry in entries), (command, entries)
    # python: scripts/squawk_migrations.py, squawk on the SQL every migration renders.
    assert all(entry.split()[0] in {"ruff", "mypy", "lint-imports", "python"} for entry in entries)
