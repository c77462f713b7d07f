"""The files in deploy/ parse, agree with each other, and run only commands the real `wjp` CLI accepts."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import types
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_files import (
    DEPLOY,
    GUNICORN_CONF,
    KNOWN_WJP_SETTINGS,
    ROLES,
    WJP_COMMANDS,
    compose_file,
    deploy_files,
    dockerfile_instructions,
    environment,
    is_wjp,
    load_yaml,
    seconds,
    visibility_timeout,
    yaml_files,
)


@pytest.fixture(scope="module")
def wjp_parser() -> argparse.ArgumentParser:
    from service.cli import build_parser

    return build_parser()


@pytest.mark.parametrize(("where", "argv"), WJP_COMMANDS, ids=[where for where, _ in WJP_COMMANDS])
def test_every_wjp_command_in_the_deploy_files_is_accepted_by_the_real_cli_parser(
    wjp_parser: argparse.ArgumentParser, where: str, argv: list[str]
) -> None:
    try:
        wjp_parser.parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is rejected by `wjp` (exit {exc.code})")


def test_compose_kubernetes_systemd_and_the_image_each_run_every_role_of_the_system() -> None:
    used: dict[str, set[str]] = {}
    for where, argv in WJP_COMMANDS:
        kind = re.split(r"[:/]", where, maxsplit=1)[0]
        used.setdefault(kind, set()).add(argv[1])
    for kind in ("compose", "k8s", "systemd"):
        assert used.get(kind, set()) >= ROLES, f"{kind} does not run {sorted(ROLES - used.get(kind, set()))}"
    assert used.get("Dockerfile") == {"serve"}, "the image's default command should be the API"


# --- all files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses_into_mappings(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_file_starts_with_a_comment_saying_what_it_is_for(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    if path.suffix == ".md":
        assert first.startswith("<!--"), first
        return
    comments = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not re.match(r"#\s*(syntax|escape|check)=", line):  # Dockerfile parser directives
            comments.append(line.lstrip("# "))
    assert comments and len(comments[0].split()) >= 4, f"{path.name} does not open with a comment"


def test_the_deploy_readme_names_every_file_it_ships() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in deploy_files():
        if path.name != "README.md":
            assert path.name in readme, f"deploy/README.md does not mention {path.relative_to(DEPLOY)}"


def test_every_wjp_setting_named_in_the_deploy_files_is_one_the_spec_defines() -> None:
    pattern = re.compile(r"\bWJP_[A-Z0-9_]+\b")
    for path in deploy_files():
        if path.suffix != ".md":
            unknown = set(pattern.findall(path.read_text())) - KNOWN_WJP_SETTINGS
            assert not unknown, f"{path.relative_to(DEPLOY)} names unknown settings {sorted(unknown)}"


# --- gunicorn -----------------------------------------------------------------------------------------


def _gunicorn_settings() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__file__": str(GUNICORN_CONF), "__name__": "__config__"}
    exec(compile(GUNICORN_CONF.read_text(), str(GUNICORN_CONF), "exec"), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)}


def test_the_gunicorn_config_compiles_and_sets_only_settings_gunicorn_knows() -> None:
    from gunicorn.config import KNOWN_SETTINGS

    known = {setting.name for setting in KNOWN_SETTINGS}
    settings = _gunicorn_settings()
    assert settings
    assert set(settings) <= known, f"not gunicorn settings: {sorted(set(settings) - known)}"


def test_the_gunicorn_config_leaves_bind_and_workers_to_wjp_serve_and_never_preloads() -> None:
    settings = _gunicorn_settings()
    assert "bind" not in settings
    assert "workers" not in settings
    # Dramatiq's Redis broker and the database engine must be created after fork, in each worker.
    assert not settings.get("preload_app")


def test_the_gunicorn_config_uses_asyncio_workers_with_bounded_timeouts_memory_and_logs() -> None:
    settings = _gunicorn_settings()
    # An event loop, so that concurrent POSTs of one process can share their INSERT and Redis round trip.
    assert settings["worker_class"] == "service.http_worker.HttptoolsWorker" and "threads" not in settings
    assert 0 < settings["timeout"] <= 60
    assert 0 < settings["graceful_timeout"] <= 60
    assert settings["max_requests"] > 0 and 0 < settings["max_requests_jitter"] < settings["max_requests"]
    assert settings["accesslog"] is None
    assert settings["forwarded_allow_ips"]


def test_the_api_worker_is_uvicorns_on_asyncios_loop_with_httptools_whatever_else_is_installed() -> None:
    from gunicorn.util import load_class
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn_worker import UvicornWorker

    worker = load_class(_gunicorn_settings()["worker_class"])
    assert issubclass(worker, UvicornWorker)
    # uvicorn's "auto" would take uvloop where it is installed (the bench extra installs it).
    assert worker.CONFIG_KWARGS["loop"] == "asyncio"
    assert issubclass(worker.CONFIG_KWARGS["http"], HttpToolsProtocol)


# --- the image ------------------------------------------------------------------------------------------


def test_the_dockerfile_is_multi_stage_and_ends_as_a_fixed_non_root_user() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "the image should be built in a builder stage and copied into a slim one"
    final_stage = instructions[max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM") :]
    users = [rest for keyword, rest in final_stage if keyword == "USER"]
    assert users, "the final stage never drops root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit()
    assert any(f"--uid {user}" in rest for keyword, rest in final_stage if keyword == "RUN")


def test_the_dockerfile_checks_health_on_healthz_and_serves_the_api_on_port_8000() -> None:
    instructions = dict(dockerfile_instructions())
    assert instructions["EXPOSE"].split() == ["8000"]
    assert "/healthz" in instructions["HEALTHCHECK"]
    assert "curl" not in instructions["HEALTHCHECK"]  # not in python:*-slim
    assert json.loads(instructions["CMD"])[:2] == ["wjp", "serve"]


def test_the_dockerignore_keeps_local_state_and_caches_out_of_the_image() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv", "var", ".pytest_cache"):
        assert entry in ignore, f"{entry} would be sent to the build"


# --- compose ----------------------------------------------------------------------------------------------


def test_compose_services_depend_only_on_defined_services_with_conditions_they_can_meet() -> None:
    services = compose_file()["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for target, how in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert target in services, f"{name} depends on undefined service {target}"
            condition = (how or {}).get("condition", "service_started")
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                check = services[target].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} must run once"


def test_compose_runs_the_schema_migration_before_anything_that_uses_the_ledger() -> None:
    services = compose_file()["services"]
    for name, service in services.items():
        argv = service.get("command") or []
        if is_wjp(argv) and argv[1] != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_compose_runs_two_workers_that_get_longer_than_the_visibility_timeout_to_stop() -> None:
    workers = {n: s for n, s in compose_file()["services"].items() if (s.get("command") or [None, None])[1] == "worker"}
    assert len(workers) == 2
    for name, service in workers.items():
        assert seconds(service["stop_grace_period"]) > visibility_timeout(), name


def test_compose_gives_every_wjp_service_the_ledger_and_redis_of_the_stack() -> None:
    services = compose_file()["services"]
    for name, service in services.items():
        if is_wjp(service.get("command") or []):
            env = environment(service)
            assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"], name
            assert env["REDIS_URL"].startswith("redis://redis:"), name


def test_compose_runs_redis_with_an_append_only_file_and_health_checks_the_backing_services() -> None:
    services = compose_file()["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
