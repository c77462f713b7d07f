"""Reading the files in deploy/ for the tests of them: YAML, compose, Kubernetes, systemd, the image, and the `wjp`
commands they run."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

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


def deploy_files() -> list[Path]:
    """The files deploy/ ships: not caches, not local dotfiles such as a compose `.env`."""
    files = []
    for path in DEPLOY.rglob("*"):
        parts = path.relative_to(DEPLOY).parts
        if path.is_file() and not any(part == "__pycache__" or part.startswith(".") for part in parts):
            files.append(path)
    return sorted(files)


def yaml_files() -> list[Path]:
    return [p for p in deploy_files() if p.suffix in {".yaml", ".yml"}]


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose_file() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE)
    return doc


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in k8s_manifests() for doc in load_yaml(path)]


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    found = [doc for _, doc in k8s_docs() if doc["kind"] == kind]
    return [doc for doc in found if name is None or doc["metadata"]["name"] == name]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def systemd_units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in {".service", ".timer", ".socket", ".target"})


def read_unit(path: Path) -> configparser.ConfigParser:
    # Not strict: systemd allows a key more than once (the later one wins for the keys read here).
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def exec_lines(path: Path) -> list[str]:
    """Every Exec*= value of a unit, including repeated keys configparser would collapse."""
    pattern = re.compile(r"^\s*Exec(?:Start|StartPre|StartPost|Stop|StopPost|Reload)\s*=\s*(.+?)\s*$")
    return [m.group(1) for m in map(pattern.match, path.read_text().splitlines()) if m]


def dockerfile_instructions() -> list[tuple[str, str]]:
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


def seconds(span: str | int) -> float:
    """A compose duration (`75s`, `1m15s`) or a systemd time span (`75`, `5min`, `1min 15s`) in seconds."""
    if isinstance(span, int) or str(span).strip().isdigit():
        return float(span)
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(span))
    assert parts, f"unreadable duration {span!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def visibility_timeout() -> float:
    """The visibility timeout the deployments configure (compose and Kubernetes), at least the default."""
    values = [DEFAULT_VISIBILITY_TIMEOUT]
    for service in compose_file()["services"].values():
        value = environment(service).get("WJP_VISIBILITY_TIMEOUT")
        if value is not None:
            values.append(float(value))
    for config in k8s("ConfigMap"):
        if "WJP_VISIBILITY_TIMEOUT" in config.get("data", {}):
            values.append(float(config["data"]["WJP_VISIBILITY_TIMEOUT"]))
    return max(values)


# --- every `wjp …` command the deploy files run ----------------------------------------------------


def is_wjp(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "wjp"


def wjp_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) for each `wjp` invocation in compose, Kubernetes, systemd and the Dockerfile."""
    for name, service in compose_file()["services"].items():
        for key in ("entrypoint", "command"):
            value = service.get(key)
            argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value or []]
            if is_wjp(argv):
                yield f"compose:{name}", argv
    for path, doc in k8s_docs():
        pod = pod_spec(doc)
        for container in containers(pod) if pod else []:
            argv = [str(v) for v in [*container.get("command", []), *container.get("args", [])]]
            if is_wjp(argv):
                yield f"k8s/{path.name}:{doc['metadata']['name']}/{container['name']}", argv
    for path in systemd_units():
        for line in exec_lines(path):
            argv = shlex.split(line.lstrip("-@:+!|"))
            if is_wjp(argv):
                yield f"systemd/{path.name}", argv
    for keyword, rest in dockerfile_instructions():
        if keyword in {"CMD", "ENTRYPOINT"}:
            argv = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if is_wjp(argv):
                yield f"Dockerfile:{keyword}", argv


WJP_COMMANDS = list(wjp_commands())
