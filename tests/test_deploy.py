"""The files in deploy/ parse, agree with each other, and run only commands the real `wjp` CLI accepts."""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import is_loopback

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
GUNICORN_CONF = Path(__file__).resolve().parent.parent / "service" / "gunicorn_conf.py"

#: Every setting the spec's Configuration table defines; a WJP_ name outside it is a typo.
KNOWN_WJP_SETTINGS = {
    "WJP_QUEUE", "WJP_MAX_ATTEMPTS", "WJP_BACKOFF_INITIAL", "WJP_BACKOFF_MAX", "WJP_BACKOFF_JITTER",
    "WJP_VISIBILITY_TIMEOUT", "WJP_RECONCILE_INTERVAL", "WJP_RECONCILE_GRACE", "WJP_WEBHOOK_TIMEOUT",
    "WJP_ADMIN_TOKEN", "WJP_SMTP_URL", "WJP_EMAIL_FROM", "WJP_WEBHOOK_SECRET", "WJP_WEBHOOK_ALLOW_PRIVATE",
    "WJP_SMS_URL", "WJP_SMS_ACCOUNT", "WJP_SMS_TOKEN", "WJP_SMS_FROM",
}  # fmt: skip
#: The default of WJP_VISIBILITY_TIMEOUT: a worker's stop grace period must exceed it.
DEFAULT_VISIBILITY_TIMEOUT = 60
#: The roles every way of deploying must run.
ROLES = {"migrate", "serve", "worker", "reconcile"}
#: The settings of every service unit that keep it contained (systemd key → expected value).
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}


# --- reading the files -----------------------------------------------------------------------------


def _deploy_files() -> list[Path]:
    """The files deploy/ ships: not caches, not local dotfiles such as a compose `.env`."""
    files = []
    for path in DEPLOY.rglob("*"):
        parts = path.relative_to(DEPLOY).parts
        if path.is_file() and not any(part == "__pycache__" or part.startswith(".") for part in parts):
            files.append(path)
    return sorted(files)


def _yaml_files() -> list[Path]:
    return [p for p in _deploy_files() if p.suffix in {".yaml", ".yml"}]


def _load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict[str, Any]:
    (doc,) = _load_yaml(COMPOSE)
    return doc


def _k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _k8s_manifests() for doc in _load_yaml(path)]


def _k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    found = [doc for _, doc in _k8s_docs() if doc["kind"] == kind]
    return [doc for doc in found if name is None or doc["metadata"]["name"] == name]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _systemd_units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in {".service", ".timer", ".socket", ".target"})


def _read_unit(path: Path) -> configparser.ConfigParser:
    # Not strict: systemd allows a key more than once (the later one wins for the keys read here).
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def _exec_lines(path: Path) -> list[str]:
    """Every Exec*= value of a unit, including repeated keys configparser would collapse."""
    pattern = re.compile(r"^\s*Exec(?:Start|StartPre|StartPost|Stop|StopPost|Reload)\s*=\s*(.+?)\s*$")
    return [m.group(1) for m in map(pattern.match, path.read_text().splitlines()) if m]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _seconds(span: str | int) -> float:
    """A compose duration (`75s`, `1m15s`) or a systemd time span (`75`, `5min`, `1min 15s`) in seconds."""
    if isinstance(span, int) or str(span).strip().isdigit():
        return float(span)
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(span))
    assert parts, f"unreadable duration {span!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _visibility_timeout() -> float:
    """The visibility timeout the deployments configure (compose and Kubernetes), at least the default."""
    values = [DEFAULT_VISIBILITY_TIMEOUT]
    for service in _compose()["services"].values():
        value = _environment(service).get("WJP_VISIBILITY_TIMEOUT")
        if value is not None:
            values.append(float(value))
    for config in _k8s("ConfigMap"):
        if "WJP_VISIBILITY_TIMEOUT" in config.get("data", {}):
            values.append(float(config["data"]["WJP_VISIBILITY_TIMEOUT"]))
    return max(values)


# --- every `wjp …` command the deploy files run ----------------------------------------------------


def _is_wjp(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "wjp"


def _wjp_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) for each `wjp` invocation in compose, Kubernetes, systemd and the Dockerfile."""
    for name, service in _compose()["services"].items():
        for key in ("entrypoint", "command"):
            value = service.get(key)
            argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value or []]
            if _is_wjp(argv):
                yield f"compose:{name}", argv
    for path, doc in _k8s_docs():
        pod = _pod_spec(doc)
        for container in _containers(pod) if pod else []:
            argv = [str(v) for v in [*container.get("command", []), *container.get("args", [])]]
            if _is_wjp(argv):
                yield f"k8s/{path.name}:{doc['metadata']['name']}/{container['name']}", argv
    for path in _systemd_units():
        for line in _exec_lines(path):
            argv = shlex.split(line.lstrip("-@:+!|"))
            if _is_wjp(argv):
                yield f"systemd/{path.name}", argv
    for keyword, rest in _dockerfile_instructions():
        if keyword in {"CMD", "ENTRYPOINT"}:
            argv = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if _is_wjp(argv):
                yield f"Dockerfile:{keyword}", argv


WJP_COMMANDS = list(_wjp_commands())


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


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses_into_mappings(path: Path) -> None:
    docs = _load_yaml(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("path", _deploy_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
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
    for path in _deploy_files():
        if path.name != "README.md":
            assert path.name in readme, f"deploy/README.md does not mention {path.relative_to(DEPLOY)}"


def test_every_wjp_setting_named_in_the_deploy_files_is_one_the_spec_defines() -> None:
    pattern = re.compile(r"\bWJP_[A-Z0-9_]+\b")
    for path in _deploy_files():
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
    from uvicorn_worker import UvicornWorker

    worker = load_class(_gunicorn_settings()["worker_class"])
    assert issubclass(worker, UvicornWorker)
    # uvicorn's "auto" would take uvloop where it is installed (the bench extra installs it).
    assert worker.CONFIG_KWARGS["loop"] == "asyncio" and worker.CONFIG_KWARGS["http"] == "httptools"


# --- the image ------------------------------------------------------------------------------------------


def test_the_dockerfile_is_multi_stage_and_ends_as_a_fixed_non_root_user() -> None:
    instructions = _dockerfile_instructions()
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
    instructions = dict(_dockerfile_instructions())
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
    services = _compose()["services"]
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
    services = _compose()["services"]
    for name, service in services.items():
        argv = service.get("command") or []
        if _is_wjp(argv) and argv[1] != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_compose_runs_two_workers_that_get_longer_than_the_visibility_timeout_to_stop() -> None:
    workers = {n: s for n, s in _compose()["services"].items() if (s.get("command") or [None, None])[1] == "worker"}
    assert len(workers) == 2
    for name, service in workers.items():
        assert _seconds(service["stop_grace_period"]) > _visibility_timeout(), name


def test_compose_gives_every_wjp_service_the_ledger_and_redis_of_the_stack() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if _is_wjp(service.get("command") or []):
            env = _environment(service)
            assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"], name
            assert env["REDIS_URL"].startswith("redis://redis:"), name


def test_compose_runs_redis_with_an_append_only_file_and_health_checks_the_backing_services() -> None:
    services = _compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


# --- Kubernetes ---------------------------------------------------------------------------------------------


def test_every_kubernetes_manifest_has_a_kind_and_a_name_and_leaves_the_namespace_open() -> None:
    docs = _k8s_docs()
    assert docs
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc["metadata"].get("name"), path.name
        assert "namespace" not in doc["metadata"], f"{path.name} pins a namespace"


def test_the_kustomization_lists_exactly_the_manifests_in_its_directory() -> None:
    (kustomization,) = _load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _k8s_manifests())


def test_the_reconciler_cronjob_forbids_concurrent_passes_and_never_restarts_a_pass() -> None:
    (cronjob,) = _k8s("CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["schedule"] == "*/1 * * * *"
    assert cronjob["spec"]["successfulJobsHistoryLimit"] >= 0
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert _pod_spec(cronjob)["restartPolicy"] == "Never"
    (container,) = _pod_spec(cronjob)["containers"]
    assert container["command"][:2] == ["wjp", "reconcile"] and "--loop" not in container["command"]


def test_the_api_deployment_probes_healthz_for_liveness_and_readyz_for_readiness() -> None:
    (api,) = _k8s("Deployment", "wjp-api")
    (container,) = _pod_spec(api)["containers"]
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    assert 8000 in ports.values()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path
        assert ports.get(check["port"], check["port"]) == 8000, f"{probe} misses the container port"


def test_the_api_service_sends_port_80_to_the_api_pods_port_8000() -> None:
    (api,) = _k8s("Deployment", "wjp-api")
    (service,) = _k8s("Service", "wjp-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container,) = _pod_spec(api)["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert port["port"] == 80 and ports.get(port["targetPort"], port["targetPort"]) == 8000


def test_every_deployment_selects_its_own_pods_and_no_one_elses() -> None:
    deployments = _k8s("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        for other in deployments:
            if other is not deployment:
                assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()


def test_workers_get_longer_than_the_visibility_timeout_to_stop_and_scale_on_cpu() -> None:
    (worker,) = _k8s("Deployment", "wjp-worker")
    pod = _pod_spec(worker)
    assert pod["terminationGracePeriodSeconds"] > _visibility_timeout()
    (container,) = pod["containers"]
    assert container["command"][:2] == ["wjp", "worker"]
    assert container["resources"]["requests"]["cpu"], "CPU utilisation is measured against the request"
    assert "replicas" not in worker["spec"], "the autoscaler owns the replica count"
    (hpa,) = _k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wjp-worker"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_every_pod_runs_the_image_as_non_root_with_the_shared_config_and_secret() -> None:
    config_maps = {doc["metadata"]["name"] for doc in _k8s("ConfigMap")}
    secrets = {doc["metadata"]["name"] for doc in _k8s("Secret")}
    pods = [(doc["metadata"]["name"], pod) for _, doc in _k8s_docs() if (pod := _pod_spec(doc))]
    assert len(pods) == 4  # migrate Job, API, workers, reconciler CronJob
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in _containers(pod):
            assert container["image"] == "worker-job-processor:latest", name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            sources = container.get("envFrom", [])
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config_maps
            assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secrets
            assert len(sources) == 2, f"{name} does not read both the config and the secret"


def test_the_secret_names_the_secret_settings_and_ships_no_usable_admin_token_or_webhook_secret() -> None:
    (secret,) = _k8s("Secret")
    data = secret["stringData"]
    assert set(data) >= {"DATABASE_URL", "REDIS_URL", "WJP_ADMIN_TOKEN", "WJP_WEBHOOK_SECRET"}
    assert data["WJP_ADMIN_TOKEN"] == "" and data["WJP_WEBHOOK_SECRET"] == ""
    assert all("CHANGE-ME" in data[name] for name in ("DATABASE_URL", "REDIS_URL"))


def test_the_configmap_holds_only_non_secret_settings_as_strings() -> None:
    (config,) = _k8s("ConfigMap")
    data = config["data"]
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values must be strings"
    assert not set(data) & {"DATABASE_URL", "REDIS_URL", "WJP_ADMIN_TOKEN", "WJP_WEBHOOK_SECRET", "WJP_SMTP_URL"}


# --- systemd ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _systemd_units(), ids=lambda p: p.name)
def test_every_systemd_unit_parses_and_describes_itself(path: Path) -> None:
    unit = _read_unit(path)
    assert unit.get("Unit", "Description")
    assert unit.has_section("Service") or unit.has_section("Timer")


@pytest.mark.parametrize("path", sorted(SYSTEMD.glob("*.service")), ids=lambda p: p.name)
def test_every_systemd_service_runs_wjp_as_the_wjp_user_from_the_env_file_with_hardening(path: Path) -> None:
    service = _read_unit(path)["Service"]
    assert service["User"] == "wjp"
    assert service["EnvironmentFile"] == "/etc/wjp/wjp.env"
    assert service["WorkingDirectory"] == "/var/lib/wjp"
    assert service["ExecStart"].startswith("/opt/wjp/.venv/bin/wjp ")
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{path.name}: {key}={service.get(key)}"
    assert "/var/lib/wjp" in service["ReadWritePaths"].split()


def test_the_worker_unit_signals_only_the_main_process_and_waits_past_the_visibility_timeout() -> None:
    service = _read_unit(SYSTEMD / "wjp-worker@.service")["Service"]
    assert service["KillMode"] == "mixed"
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert _seconds(service["TimeoutStopSec"]) > _visibility_timeout()


def test_the_reconcile_timer_starts_one_reconciler_pass_every_minute() -> None:
    timer = _read_unit(SYSTEMD / "wjp-reconcile.timer")
    assert timer["Timer"].get("Unit", "wjp-reconcile.service") == "wjp-reconcile.service"
    assert timer["Timer"]["OnCalendar"] in {"minutely", "*:*:00", "*-*-* *:*:00"}
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = _read_unit(SYSTEMD / "wjp-reconcile.service")["Service"]
    assert service["Type"] == "oneshot"
    assert shlex.split(service["ExecStart"])[1:] == ["reconcile"]


def test_the_migration_unit_runs_once_and_the_long_running_units_come_after_it() -> None:
    assert _read_unit(SYSTEMD / "wjp-migrate.service")["Service"]["Type"] == "oneshot"
    for name in ("wjp-api.service", "wjp-worker@.service", "wjp-reconcile.service"):
        assert "wjp-migrate.service" in _read_unit(SYSTEMD / name)["Unit"]["After"].split(), name


def test_the_env_example_sets_the_ledger_and_redis_and_names_only_known_variables() -> None:
    lines = (SYSTEMD / "wjp.env.example").read_text().splitlines()
    assigned = {line.lstrip("#").split("=", 1)[0] for line in lines if re.match(r"^#?[A-Z][A-Z0-9_]*=", line)}
    active = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z][A-Z0-9_]*=", line)}
    assert {"DATABASE_URL", "REDIS_URL"} <= active
    assert assigned - {"DATABASE_URL", "REDIS_URL"} <= KNOWN_WJP_SETTINGS


# --- secure by default ---------------------------------------------------------------------------------------


def test_compose_refuses_to_start_without_an_admin_token_and_publishes_only_on_loopback() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        if _is_wjp(service.get("command") or []):
            token = _environment(service)["WJP_ADMIN_TOKEN"]
            assert re.fullmatch(r"\$\{WJP_ADMIN_TOKEN:\?[^}]+\}", token), f"{name}: WJP_ADMIN_TOKEN={token!r}"
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port!r} on every interface"


def test_the_systemd_env_example_ships_no_usable_secret_and_the_api_unit_binds_loopback() -> None:
    lines = (SYSTEMD / "wjp.env.example").read_text().splitlines()
    values = dict(line.lstrip("#").split("=", 1) for line in lines if re.match(r"^#?WJP_[A-Z_]*=", line))
    assert values["WJP_ADMIN_TOKEN"] == "" and values["WJP_WEBHOOK_SECRET"] == ""
    argv = shlex.split(_read_unit(SYSTEMD / "wjp-api.service")["Service"]["ExecStart"])
    assert is_loopback(argv[argv.index("--host") + 1])


def test_the_kubernetes_api_service_stays_inside_the_cluster() -> None:
    (service,) = _k8s("Service", "wjp-api")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_the_deploy_readme_says_a_reverse_proxy_protects_against_slow_clients() -> None:
    text = " ".join((DEPLOY / "README.md").read_text().split())
    assert "reverse proxy" in text and "slow-client attacks" in text
