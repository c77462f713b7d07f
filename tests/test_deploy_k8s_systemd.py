"""The Kubernetes manifests and systemd units in deploy/ parse and agree with each other and the visibility timeout."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from service.settings import is_loopback
from tests.deploy_files import (
    DEPLOY,
    HARDENING,
    K8S,
    KNOWN_WJP_SETTINGS,
    SYSTEMD,
    compose_file,
    containers,
    environment,
    is_wjp,
    k8s,
    k8s_docs,
    k8s_manifests,
    load_yaml,
    pod_spec,
    read_unit,
    seconds,
    systemd_units,
    visibility_timeout,
)

# --- Kubernetes ---------------------------------------------------------------------------------------------


def test_every_kubernetes_manifest_has_a_kind_and_a_name_and_leaves_the_namespace_open() -> None:
    docs = k8s_docs()
    assert docs
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc["metadata"].get("name"), path.name
        assert "namespace" not in doc["metadata"], f"{path.name} pins a namespace"


def test_the_kustomization_lists_exactly_the_manifests_in_its_directory() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_manifests())


def test_the_reconciler_cronjob_forbids_concurrent_passes_and_never_restarts_a_pass() -> None:
    (cronjob,) = k8s("CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["schedule"] == "*/1 * * * *"
    assert cronjob["spec"]["successfulJobsHistoryLimit"] >= 0
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert pod_spec(cronjob)["restartPolicy"] == "Never"
    (container,) = pod_spec(cronjob)["containers"]
    assert container["command"][:2] == ["wjp", "reconcile"] and "--loop" not in container["command"]


def test_the_api_deployment_probes_healthz_for_liveness_and_readyz_for_readiness() -> None:
    (api,) = k8s("Deployment", "wjp-api")
    (container,) = pod_spec(api)["containers"]
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    assert 8000 in ports.values()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path
        assert ports.get(check["port"], check["port"]) == 8000, f"{probe} misses the container port"


def test_the_api_service_sends_port_80_to_the_api_pods_port_8000() -> None:
    (api,) = k8s("Deployment", "wjp-api")
    (service,) = k8s("Service", "wjp-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container,) = pod_spec(api)["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert port["port"] == 80 and ports.get(port["targetPort"], port["targetPort"]) == 8000


def test_every_deployment_selects_its_own_pods_and_no_one_elses() -> None:
    deployments = k8s("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        for other in deployments:
            if other is not deployment:
                assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()


def test_workers_get_longer_than_the_visibility_timeout_to_stop_and_scale_on_cpu() -> None:
    (worker,) = k8s("Deployment", "wjp-worker")
    pod = pod_spec(worker)
    assert pod["terminationGracePeriodSeconds"] > visibility_timeout()
    (container,) = pod["containers"]
    assert container["command"][:2] == ["wjp", "worker"]
    assert container["resources"]["requests"]["cpu"], "CPU utilisation is measured against the request"
    assert "replicas" not in worker["spec"], "the autoscaler owns the replica count"
    (hpa,) = k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wjp-worker"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_every_pod_runs_the_image_as_non_root_with_the_shared_config_and_secret() -> None:
    config_maps = {doc["metadata"]["name"] for doc in k8s("ConfigMap")}
    secrets = {doc["metadata"]["name"] for doc in k8s("Secret")}
    pods = [(doc["metadata"]["name"], pod) for _, doc in k8s_docs() if (pod := pod_spec(doc))]
    assert len(pods) == 4  # migrate Job, API, workers, reconciler CronJob
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in containers(pod):
            assert container["image"] == "worker-job-processor:latest", name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            sources = container.get("envFrom", [])
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config_maps
            assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= secrets
            assert len(sources) == 2, f"{name} does not read both the config and the secret"


def test_the_secret_names_the_secret_settings_and_ships_no_usable_admin_token_or_webhook_secret() -> None:
    (secret,) = k8s("Secret")
    data = secret["stringData"]
    assert set(data) >= {"DATABASE_URL", "REDIS_URL", "WJP_ADMIN_TOKEN", "WJP_WEBHOOK_SECRET"}
    assert data["WJP_ADMIN_TOKEN"] == "" and data["WJP_WEBHOOK_SECRET"] == ""
    assert all("CHANGE-ME" in data[name] for name in ("DATABASE_URL", "REDIS_URL"))


def test_the_configmap_holds_only_non_secret_settings_as_strings() -> None:
    (config,) = k8s("ConfigMap")
    data = config["data"]
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values must be strings"
    assert not set(data) & {"DATABASE_URL", "REDIS_URL", "WJP_ADMIN_TOKEN", "WJP_WEBHOOK_SECRET", "WJP_SMTP_URL"}


# --- systemd ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", systemd_units(), ids=lambda p: p.name)
def test_every_systemd_unit_parses_and_describes_itself(path: Path) -> None:
    unit = read_unit(path)
    assert unit.get("Unit", "Description")
    assert unit.has_section("Service") or unit.has_section("Timer")


@pytest.mark.parametrize("path", sorted(SYSTEMD.glob("*.service")), ids=lambda p: p.name)
def test_every_systemd_service_runs_wjp_as_the_wjp_user_from_the_env_file_with_hardening(path: Path) -> None:
    service = read_unit(path)["Service"]
    assert service["User"] == "wjp"
    assert service["EnvironmentFile"] == "/etc/wjp/wjp.env"
    assert service["WorkingDirectory"] == "/var/lib/wjp"
    assert service["ExecStart"].startswith("/opt/wjp/.venv/bin/wjp ")
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{path.name}: {key}={service.get(key)}"
    assert "/var/lib/wjp" in service["ReadWritePaths"].split()


def test_the_worker_unit_signals_only_the_main_process_and_waits_past_the_visibility_timeout() -> None:
    service = read_unit(SYSTEMD / "wjp-worker@.service")["Service"]
    assert service["KillMode"] == "mixed"
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert seconds(service["TimeoutStopSec"]) > visibility_timeout()


def test_the_reconcile_timer_starts_one_reconciler_pass_every_minute() -> None:
    timer = read_unit(SYSTEMD / "wjp-reconcile.timer")
    assert timer["Timer"].get("Unit", "wjp-reconcile.service") == "wjp-reconcile.service"
    assert timer["Timer"]["OnCalendar"] in {"minutely", "*:*:00", "*-*-* *:*:00"}
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = read_unit(SYSTEMD / "wjp-reconcile.service")["Service"]
    assert service["Type"] == "oneshot"
    assert shlex.split(service["ExecStart"])[1:] == ["reconcile"]


def test_the_migration_unit_runs_once_and_the_long_running_units_come_after_it() -> None:
    assert read_unit(SYSTEMD / "wjp-migrate.service")["Service"]["Type"] == "oneshot"
    for name in ("wjp-api.service", "wjp-worker@.service", "wjp-reconcile.service"):
        assert "wjp-migrate.service" in read_unit(SYSTEMD / name)["Unit"]["After"].split(), name


def test_the_env_example_sets_the_ledger_and_redis_and_names_only_known_variables() -> None:
    lines = (SYSTEMD / "wjp.env.example").read_text().splitlines()
    assigned = {line.lstrip("#").split("=", 1)[0] for line in lines if re.match(r"^#?[A-Z][A-Z0-9_]*=", line)}
    active = {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z][A-Z0-9_]*=", line)}
    assert {"DATABASE_URL", "REDIS_URL"} <= active
    assert assigned - {"DATABASE_URL", "REDIS_URL"} <= KNOWN_WJP_SETTINGS


# --- secure by default ---------------------------------------------------------------------------------------


def test_compose_refuses_to_start_without_an_admin_token_and_publishes_only_on_loopback() -> None:
    compose = compose_file()
    for name, service in compose["services"].items():
        if is_wjp(service.get("command") or []):
            token = environment(service)["WJP_ADMIN_TOKEN"]
            assert re.fullmatch(r"\$\{WJP_ADMIN_TOKEN:\?[^}]+\}", token), f"{name}: WJP_ADMIN_TOKEN={token!r}"
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port!r} on every interface"


def test_the_systemd_env_example_ships_no_usable_secret_and_the_api_unit_binds_loopback() -> None:
    lines = (SYSTEMD / "wjp.env.example").read_text().splitlines()
    values = dict(line.lstrip("#").split("=", 1) for line in lines if re.match(r"^#?WJP_[A-Z_]*=", line))
    assert values["WJP_ADMIN_TOKEN"] == "" and values["WJP_WEBHOOK_SECRET"] == ""
    argv = shlex.split(read_unit(SYSTEMD / "wjp-api.service")["Service"]["ExecStart"])
    assert is_loopback(argv[argv.index("--host") + 1])


def test_the_kubernetes_api_service_stays_inside_the_cluster() -> None:
    (service,) = k8s("Service", "wjp-api")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_the_deploy_readme_says_a_reverse_proxy_protects_against_slow_clients() -> None:
    text = " ".join((DEPLOY / "README.md").read_text().split())
    assert "reverse proxy" in text and "slow-client attacks" in text
