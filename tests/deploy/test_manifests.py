"""The compose and Kubernetes deployments: valid against their official schemas, in step with
genrelay's settings, careful with secrets, and consistent with each other.

Nothing here needs a Docker engine or a cluster. The Kubernetes manifests are checked against
the Kubernetes JSON schemas that ship inside the `kubernetes-validate` package, compose.yaml
against the Compose Specification schema that ships inside `check-jsonschema`; the topic
script runs against a stand-in `kafka-topics` and, in the integration test, a real broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import SecretStr

from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.topics import ensure_topics
from genrelay.deploy.local.stack import StackInfo, cache_dir, kafka_version
from genrelay.emulator.cli import build_parser, settings_from
from genrelay.emulator.settings import EmulatorSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
TOPIC_SCRIPT = COMPOSE_DIR / "create-topics.sh"
K8S_DIR = DEPLOY / "kubernetes"
K8S_BASE = K8S_DIR / "base"
K8S_KEDA = K8S_DIR / "keda"
DOCKERFILE = DEPLOY / "Dockerfile"

# The oldest Kubernetes release the manifests promise to work on, and the newest with schemas.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

PREFIX: str = Settings.model_config.get("env_prefix") or ""
EMULATOR_PREFIX: str = EmulatorSettings.model_config.get("env_prefix") or ""
# What a production deployment cannot run without.
REQUIRED = frozenset(
    PREFIX + name.upper()
    for name in (
        "kafka_bootstrap",
        "fal_key",
        "webhook_secret",
        "public_webhook_url",
        "s3_endpoint",
        "s3_access_key",
        "s3_secret_key",
    )
)
PLACEHOLDER = "REPLACE_ME"
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")

YAML_FILES = sorted(
    path
    for root in (COMPOSE_DIR, K8S_DIR)
    for path in root.rglob("*")
    if path.suffix in {".yaml", ".yml"}
)


# --- loading ------------------------------------------------------------------------------


def load_all(path: Path) -> list[Any]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def env_name(field: str) -> str:
    return PREFIX + field.upper()


@cache
def settings_vars() -> frozenset[str]:
    return frozenset(env_name(name) for name in Settings.model_fields)


@cache
def secret_vars() -> frozenset[str]:
    return frozenset(
        env_name(name)
        for name, field in Settings.model_fields.items()
        if field.annotation is SecretStr
    )


def topic_fields() -> list[str]:
    return [name for name in Settings.model_fields if name.startswith("topic_")]


def default_of(field: str) -> Any:
    return Settings.model_fields[field].get_default(call_default_factory=True)


@cache
def compose() -> dict[str, Any]:
    (document,) = load_all(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either compose form, as raw (uninterpolated) text."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.split("=", 1) for item in raw]
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(2) is not None:
            return env.get(match.group(2), "")
        expr = match.group(1)
        op = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?(.*)", expr, re.DOTALL)
        assert op is not None, f"bad interpolation ${{{expr}}}"
        name, kind, arg = op.group(1), op.group(2), op.group(3)
        value = env.get(name)
        if kind is None:
            return value or ""
        unset = value is None or (kind.startswith(":") and value == "")
        if kind.endswith("-"):
            return arg if unset else str(value)
        if kind.endswith("?"):
            if unset:
                raise KeyError(f"{name} is required: {arg}")
            return str(value)
        return "" if unset else arg  # :+ / +

    return REFERENCE.sub(one, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    return node


def example_env() -> dict[str, str]:
    return dotenv(ENV_EXAMPLE)


def resolved_compose() -> dict[str, Any]:
    result = interpolated(compose(), example_env())
    assert isinstance(result, dict)
    return result


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted([*K8S_BASE.glob("*.yaml"), *K8S_KEDA.glob("*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        objects.extend(load_all(path))
    return objects


def k8s_kind(kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in k8s_objects() if obj["kind"] == kind]
    return found


def configmap() -> dict[str, str]:
    data = k8s_kind("ConfigMap")["data"]
    assert all(isinstance(value, str) for value in data.values())
    return dict(data)


def secret() -> dict[str, str]:
    return dict(k8s_kind("Secret").get("stringData") or {})


def k8s_setting(field: str) -> Any:
    """A setting as the pods get it: the ConfigMap's value, else genrelay's default."""
    return configmap().get(env_name(field), default_of(field))


def containers(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def relay_container() -> dict[str, Any]:
    (container,) = k8s_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No GENRELAY_* from the test process leaks into settings built by a test."""
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


# --- 1. every file parses -----------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    documents = load_all(path)
    assert documents, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in documents)


def test_the_expected_files_exist() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    assert {
        "compose/compose.yaml",
        "compose/otel-collector.yaml",
        "kubernetes/base/kustomization.yaml",
        "kubernetes/base/configmap.yaml",
        "kubernetes/base/secret.yaml",
        "kubernetes/base/deployment.yaml",
        "kubernetes/base/service.yaml",
        "kubernetes/base/pdb.yaml",
        "kubernetes/base/topics-job.yaml",
        "kubernetes/keda/kustomization.yaml",
        "kubernetes/keda/scaledobject.yaml",
    } <= names


# --- 2. official schemas ------------------------------------------------------------------


def builtin_kinds() -> list[dict[str, Any]]:
    """The objects of built-in kinds (KEDA's ScaledObject has no official schema)."""
    try:
        objects = k8s_objects()
    except yaml.YAMLError:
        return []  # test_yaml_file_parses reports it
    return [obj for obj in objects if obj["apiVersion"] != "keda.sh/v1alpha1"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "obj", builtin_kinds(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}"
)
def test_kubernetes_manifest_matches_the_official_schema(obj: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {path}: {exc.message}")


def test_the_strict_schema_rejects_a_misspelt_field() -> None:
    deployment = json.loads(json.dumps(k8s_kind("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_base_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_all(K8S_BASE / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_keda_overlay_adds_the_scaled_object_and_frees_the_replica_count() -> None:
    (kustomization,) = load_all(K8S_KEDA / "kustomization.yaml")
    assert set(kustomization["resources"]) == {"../base", "scaledobject.yaml"}
    (patch,) = kustomization["patches"]
    assert patch["target"]["kind"] == "Deployment"
    assert patch["target"]["name"] == k8s_kind("Deployment")["metadata"]["name"]
    assert yaml.safe_load(patch["patch"]) == [{"op": "remove", "path": "/spec/replicas"}]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("overlay", [K8S_BASE, K8S_KEDA], ids=lambda p: p.name)
def test_kustomize_renders_valid_manifests(overlay: Path) -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    kinds = sorted(doc["kind"] for doc in rendered)
    base = ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Secret", "Service"]
    assert kinds == sorted(base + (["ScaledObject"] if overlay == K8S_KEDA else []))
    for doc in rendered:
        if doc["kind"] == "ScaledObject":
            continue
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        if doc["kind"] == "Deployment":
            assert ("replicas" in doc["spec"]) == (overlay == K8S_BASE)


@cache
def compose_schema() -> jsonschema.protocols.Validator:
    # The Compose Specification's schema (compose-spec/compose-spec, schema/compose-spec.json),
    # as vendored by check-jsonschema for its `vendor.compose-spec` built-in schema.
    text = (
        files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    schema = json.loads(text)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def schema_errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in compose_schema().iter_errors(document)
    ]


def test_compose_file_matches_the_compose_spec() -> None:
    assert schema_errors(compose()) == []


def test_interpolated_compose_file_matches_the_compose_spec() -> None:
    assert schema_errors(resolved_compose()) == []


def test_the_compose_schema_rejects_a_misspelt_key() -> None:
    broken = json.loads(json.dumps(compose()))
    broken["services"]["genrelay"]["stop_grace_perod"] = "45s"
    assert schema_errors(broken)


# --- 3. in step with the settings ---------------------------------------------------------


def compose_variables() -> dict[str, str]:
    """Every GENRELAY_* name in the compose deployment, with where it was seen."""
    seen: dict[str, str] = {}
    for name, svc in compose()["services"].items():
        for key in environment(svc):
            seen.setdefault(key, f"compose.yaml services.{name}.environment")
    for name in VARIABLE.findall(COMPOSE_FILE.read_text()):
        seen.setdefault(name, "compose.yaml ${...}")
    for key in dotenv(ENV_EXAMPLE):
        seen.setdefault(key, ".env.example")
    for name in VARIABLE.findall(TOPIC_SCRIPT.read_text()):
        seen.setdefault(name, TOPIC_SCRIPT.name)
    return {name: where for name, where in seen.items() if name.startswith(PREFIX)}


def k8s_variables() -> dict[str, str]:
    seen: dict[str, str] = {}
    for obj in k8s_objects():
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in {"ConfigMap", "Secret"}:
            for key in [*(obj.get("data") or {}), *(obj.get("stringData") or {})]:
                seen.setdefault(key, where)
        if obj["kind"] in {"Deployment", "Job"}:
            for container in containers(obj):
                for item in container.get("env", []):
                    seen.setdefault(item["name"], where)
                for arg in [*container.get("command", []), *container.get("args", [])]:
                    for name in VARIABLE.findall(arg):
                        seen.setdefault(name, where)
    return {name: where for name, where in seen.items() if name.startswith(PREFIX)}


def unknown(variables: Mapping[str, str]) -> dict[str, str]:
    emulator = {EMULATOR_PREFIX + name.upper() for name in EmulatorSettings.model_fields}
    return {
        name: where
        for name, where in variables.items()
        if name not in settings_vars()
        and not (name.startswith(EMULATOR_PREFIX) and name in emulator)
    }


def test_compose_uses_only_real_settings() -> None:
    variables = compose_variables()
    assert variables, "no GENRELAY_* variables found: the scan is broken"
    assert unknown(variables) == {}


def test_kubernetes_uses_only_real_settings() -> None:
    variables = k8s_variables()
    assert variables, "no GENRELAY_* variables found: the scan is broken"
    assert unknown(variables) == {}


def test_the_scan_would_catch_a_misspelt_setting() -> None:
    assert unknown({"GENRELAY_KAFKA_BOOTSTRAPS": "x", "GENRELAY_EMULATOR_NOPE": "y"}) == {
        "GENRELAY_KAFKA_BOOTSTRAPS": "x",
        "GENRELAY_EMULATOR_NOPE": "y",
    }


def test_required_settings_are_set_in_compose() -> None:
    env = environment(resolved_compose()["services"]["genrelay"])
    missing = {name for name in REQUIRED if not env.get(name)}
    assert missing == set()


def test_required_settings_are_set_in_kubernetes() -> None:
    provided = {**configmap(), **secret()}
    missing = {name for name in REQUIRED if not provided.get(name)}
    assert missing == set()
    sources = relay_container()["envFrom"]
    assert {"configMapRef": {"name": k8s_kind("ConfigMap")["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": k8s_kind("Secret")["metadata"]["name"]}} in sources


def test_compose_environment_builds_valid_settings(clean_env: pytest.MonkeyPatch) -> None:
    env = environment(resolved_compose()["services"]["genrelay"])
    settings = settings_from_env(clean_env, {k: v for k, v in env.items() if k.startswith(PREFIX)})
    assert settings.http_host == "0.0.0.0"
    assert settings.create_topics is False
    assert settings.kafka_bootstrap == "kafka:19092"
    assert settings.fal_key.get_secret_value() == example_env()[env_name("fal_key")]
    assert settings.public_webhook_url == example_env()[env_name("public_webhook_url")]


def test_compose_defaults_build_valid_settings_for_real_fal(clean_env: pytest.MonkeyPatch) -> None:
    """Without the emulator block of .env.example, the defaults in compose.yaml are fal's."""
    emulator_block = {
        env_name(f)
        for f in (
            "fal_queue_url",
            "fal_jwks_url",
            "fal_platform_url",
            "download_hosts",
            "allow_private_downloads",
        )
    }
    env_file = {k: v for k, v in example_env().items() if k not in emulator_block}
    resolved = interpolated(compose(), env_file)
    env = environment(resolved["services"]["genrelay"])
    settings = settings_from_env(clean_env, {k: v for k, v in env.items() if k.startswith(PREFIX)})
    for field in (
        "fal_queue_url",
        "fal_jwks_url",
        "fal_platform_url",
        "download_hosts",
        "allow_private_downloads",
    ):
        assert getattr(settings, field) == default_of(field), field


def test_kubernetes_config_builds_valid_settings(clean_env: pytest.MonkeyPatch) -> None:
    # The committed secret holds placeholders; real ones are long random strings.
    filled = {name: "r" * 48 for name in secret()}
    settings = settings_from_env(clean_env, {**configmap(), **filled})
    assert settings.http_host == "0.0.0.0"
    assert settings.create_topics is False
    assert settings.public_webhook_url is not None
    assert settings.public_webhook_url.startswith("https://")


def test_emulator_service_builds_valid_emulator_settings(clean_env: pytest.MonkeyPatch) -> None:
    emulator = resolved_compose()["services"]["emulator"]
    for key, value in environment(emulator).items():
        clean_env.setenv(key, value)
    command = emulator["command"]
    assert command[0] == "emulator"
    settings = settings_from(build_parser().parse_args(command[1:]))
    assert settings.host == "0.0.0.0"
    relay = environment(resolved_compose()["services"]["genrelay"])
    # genrelay is pointed at the emulator's advertised address, with a key it accepts.
    assert settings.public_base_url == relay[env_name("fal_queue_url")]
    assert relay[env_name("fal_jwks_url")] == f"{settings.public_base_url}/.well-known/jwks.json"
    assert relay[env_name("fal_key")] in settings.api_keys
    assert f":{settings.port}" in settings.public_base_url
    assert "emulator" in example_env()["COMPOSE_PROFILES"].split(",")


# --- secrets ------------------------------------------------------------------------------


def test_secret_settings_are_known() -> None:
    assert secret_vars() == {
        env_name(f)
        for f in ("fal_key", "webhook_secret", "s3_access_key", "s3_secret_key", "admin_token")
    }


def test_no_secret_in_a_configmap() -> None:
    for obj in k8s_objects():
        if obj["kind"] == "ConfigMap":
            assert secret_vars().isdisjoint(obj["data"]), obj["metadata"]["name"]


def test_kubernetes_secrets_come_only_from_the_secret() -> None:
    assert set(secret()) == secret_vars()
    assert set(secret().values()) == {PLACEHOLDER}, "only placeholders are committed"
    for obj in k8s_objects():
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        for container in containers(obj):
            for item in container.get("env", []):
                if item["name"] in secret_vars():
                    assert "value" not in item, f"{item['name']} inline in {container['name']}"
                    assert "secretKeyRef" in item["valueFrom"]
    job_sources = containers(k8s_kind("Job"))[0]["envFrom"]
    assert all("secretRef" not in source for source in job_sources), "the Job needs no secrets"


def test_compose_secrets_come_only_from_the_env_file() -> None:
    required_ref = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+)(:?\?[^}]*)?\}$")
    for name, svc in compose()["services"].items():
        for key, raw in environment(svc).items():
            referenced = set(VARIABLE.findall(raw)) & secret_vars()
            if key in secret_vars() or referenced:
                match = required_ref.match(raw)
                assert match, f"{name}.{key} must be a bare ${{VAR:?...}} reference: {raw!r}"
                assert match["name"] in secret_vars()
    assert secret_vars() <= set(example_env())
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()


# --- HTTP: probes, ports, webhooks ---------------------------------------------------------


def test_probes_match_the_http_port() -> None:
    port = int(k8s_setting("http_port"))
    assert k8s_setting("http_host") == "0.0.0.0", "probes reach the pod IP, not loopback"
    admin_port = int(k8s_setting("admin_port"))
    container = relay_container()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"http": port, "admin": admin_port}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", port), probe
    # The Service (behind the public webhook address) reaches only the public listener.
    (service_port,) = k8s_kind("Service")["spec"]["ports"]
    assert service_port["targetPort"] in ("http", port)
    assert "prometheus.io/port" not in k8s_kind("Service")["metadata"].get("annotations", {})
    # Prometheus scrapes the admin listener, which off loopback requires the token.
    scrape = k8s_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/port"] == str(admin_port)
    assert scrape["prometheus.io/path"] == "/metrics"
    assert k8s_setting("admin_host") == "0.0.0.0"
    assert env_name("admin_token") in secret()


def test_service_selects_the_relay_pods() -> None:
    deployment = k8s_kind("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert k8s_kind("Service")["spec"]["selector"] == selector
    assert k8s_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    job_labels = k8s_kind("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items(), "the Service must not select the Job"


def test_compose_http_matches_the_settings() -> None:
    env = environment(resolved_compose()["services"]["genrelay"])
    port = int(env.get(env_name("http_port"), default_of("http_port")))
    assert env[env_name("http_host")] == "0.0.0.0"
    relay = service("genrelay")
    assert [str(p) for p in relay["expose"]] == [str(port)]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(relay["healthcheck"]["test"])
    # The emulator (or a proxy) reaches the replicas under the service name.
    assert example_env()[env_name("public_webhook_url")] == f"http://genrelay:{port}"
    assert WEBHOOK_PATH == "/webhooks/fal"


def stop_grace_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def test_shutdown_grace_fits_in_the_kill_timeout() -> None:
    grace = float(k8s_setting("shutdown_grace_seconds"))
    pod = k8s_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
    env = environment(resolved_compose()["services"]["genrelay"])
    compose_grace = float(
        env.get(env_name("shutdown_grace_seconds"), default_of("shutdown_grace_seconds"))
    )
    assert stop_grace_seconds(service("genrelay")["stop_grace_period"]) >= compose_grace + 10


# --- Kubernetes shape ---------------------------------------------------------------------


def test_manifests_name_no_namespace() -> None:
    for obj in k8s_objects():
        assert "namespace" not in obj["metadata"], f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_are_hardened(kind: str) -> None:
    obj = k8s_kind(kind)
    pod = obj["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # A Service named genrelay would inject GENRELAY_SERVICE_HOST & co. into the settings' prefix.
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in containers(obj):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") in tmp_volumes, "a read-only root needs a writable /tmp"
        resources = container["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[part]), f"{container['name']} {part}"


def test_deployment_runs_the_image_user_and_command() -> None:
    user, entrypoint, command = dockerfile_runtime()
    pod = k8s_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == user
    assert [*entrypoint, *relay_container()["args"]] == ["genrelay", "run"]
    assert command == ["run"]
    assert k8s_kind("Deployment")["spec"]["replicas"] == 3


def test_scaling_stays_within_the_partitions() -> None:
    partitions = int(k8s_setting("partitions"))
    deployment = k8s_kind("Deployment")
    assert deployment["spec"]["replicas"] <= partitions
    scaled = k8s_kind("ScaledObject")["spec"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions
    assert k8s_kind("PodDisruptionBudget")["spec"]["maxUnavailable"] < scaled["minReplicaCount"]
    assert int(example_env()["RELAY_REPLICAS"]) <= int(example_env()[env_name("partitions")])


KAFKA_SCALER_KEYS = {
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "scaleToZeroOnInvalidOffset",
    "partitionLimitation",
    "sasl",
    "tls",
    "version",
}


def test_scaled_object_follows_the_relay_configuration() -> None:
    scaled = k8s_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "idleReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "advanced",
        "fallback",
        "triggers",
    }
    assert spec["scaleTargetRef"]["name"] == k8s_kind("Deployment")["metadata"]["name"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= KAFKA_SCALER_KEYS
    # The CRD takes trigger metadata as a map of strings.
    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata["bootstrapServers"] == k8s_setting("kafka_bootstrap")
    assert metadata["consumerGroup"] == k8s_setting("group_id")
    assert metadata["topic"] == k8s_setting("topic_requests")
    assert int(metadata["lagThreshold"]) > 0
    assert metadata.get("allowIdleConsumers", "false") == "false"


# --- topics -------------------------------------------------------------------------------


def job_script() -> str:
    (container,) = k8s_kind("Job")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/bash", "-c"]
    (script,) = container["args"]
    assert isinstance(script, str)
    return script


def test_job_runs_the_shared_topic_script() -> None:
    assert job_script() == TOPIC_SCRIPT.read_text()
    init = service("kafka-init")
    assert init["entrypoint"][0] == "/bin/bash"
    assert f"./{TOPIC_SCRIPT.name}:{init['entrypoint'][1]}:ro" in init["volumes"]


def test_job_script_has_nothing_for_the_kubelet_to_expand() -> None:
    # The kubelet replaces $(NAME) in args with the container's variable NAME.
    assert re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", job_script()) == []


def test_one_kafka_version_everywhere() -> None:
    image = f"apache/kafka:{kafka_version()}"
    assert service("kafka")["image"] == image
    assert service("kafka-init")["image"] == image
    assert containers(k8s_kind("Job"))[0]["image"] == image


def test_job_reads_the_relay_configmap() -> None:
    (container,) = k8s_kind("Job")["spec"]["template"]["spec"]["containers"]
    name = k8s_kind("ConfigMap")["metadata"]["name"]
    assert {"configMapRef": {"name": name}} in container["envFrom"]
    assert k8s_setting("create_topics") in ("false", False)


def test_topic_script_defaults_are_genrelays() -> None:
    text = TOPIC_SCRIPT.read_text()
    defaults = dict(re.findall(r"\$\{(GENRELAY_[A-Z_]+):-([^}]+)\}", text))
    assert {name for name in defaults if name.startswith(PREFIX + "TOPIC_")} == {
        env_name(f) for f in topic_fields()
    }
    for field in [*topic_fields(), "partitions", "replication_factor"]:
        assert defaults[env_name(field)] == str(default_of(field)), field
    ledger = re.search(r'^create "\$ledger"(.*)$', text, re.MULTILINE)
    assert ledger is not None
    assert "--config cleanup.policy=compact" in ledger.group(1)
    assert "--alter" not in text


STUB = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"$STUB_LOG"
topic=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --topic ]] && topic=${args[i + 1]}
done
case " $* " in
  *" --describe "*)
    configs=
    [[ $topic == *ledger* ]] && configs=${STUB_LEDGER_CONFIGS-cleanup.policy=compact}
    printf 'Topic: %s\tTopicId: x\tPartitionCount: %s\tReplicationFactor: 1\tConfigs: %s\n' \
      "$topic" "$STUB_PARTITIONS" "$configs"
    printf '\tTopic: %s\tPartition: 0\tLeader: 1\tReplicas: 1\tIsr: 1\n' "$topic"
    ;;
esac
"""


def run_topic_script(
    tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    log.touch()
    base = {"PATH": os.environ["PATH"], "KAFKA_TOPICS": str(stub), "STUB_LOG": str(log)}
    done = subprocess.run(
        ["bash", str(TOPIC_SCRIPT)],
        env={**base, "GENRELAY_KAFKA_BOOTSTRAP": "kafka:19092", "STUB_PARTITIONS": "6", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, log.read_text().splitlines()


def test_topic_script_creates_every_topic(tmp_path: Path) -> None:
    done, calls = run_topic_script(tmp_path)
    assert done.returncode == 0, done.stderr
    creates = [call for call in calls if "--create" in call]
    created = sorted(call.split("--topic ")[1].split()[0] for call in creates)
    assert created == sorted(default_of(field) for field in topic_fields())
    for call in creates:
        assert "--if-not-exists" in call
        assert "--partitions 6 --replication-factor 1" in call
        compacted = "--config cleanup.policy=compact" in call
        keyed_state = [default_of(f"topic_{t}") for t in ("ledger", "costs", "budgets", "spend")]
        assert compacted == any(f"--topic {name} " in call for name in keyed_state)
    assert all("--bootstrap-server kafka:19092" in call for call in calls)


def test_topic_script_refuses_a_partition_mismatch(tmp_path: Path) -> None:
    done, _ = run_topic_script(tmp_path, STUB_PARTITIONS="4", GENRELAY_PARTITIONS="6")
    assert done.returncode == 1
    assert "has 4 partitions but GENRELAY_PARTITIONS is 6" in done.stderr


def test_topic_script_refuses_an_uncompacted_ledger(tmp_path: Path) -> None:
    done, _ = run_topic_script(tmp_path, STUB_LEDGER_CONFIGS="cleanup.policy=delete")
    assert done.returncode == 1
    assert "must have cleanup.policy=compact" in done.stderr


def test_topic_script_passes_client_properties(tmp_path: Path) -> None:
    done, calls = run_topic_script(
        tmp_path,
        KAFKA_COMMAND_CONFIG="/etc/kafka/client.properties",
        GENRELAY_PARTITIONS="12",
        STUB_PARTITIONS="12",
        GENRELAY_REPLICATION_FACTOR="3",
    )
    assert done.returncode == 0, done.stderr
    assert calls
    assert all("--command-config /etc/kafka/client.properties" in c for c in calls)
    assert all("--partitions 12 --replication-factor 3" in c for c in calls if "--create" in c)


def test_topic_script_needs_a_bootstrap(tmp_path: Path) -> None:
    done, calls = run_topic_script(tmp_path, GENRELAY_KAFKA_BOOTSTRAP="")
    assert done.returncode != 0
    assert "GENRELAY_KAFKA_BOOTSTRAP is required" in done.stderr
    assert calls == []


# --- image --------------------------------------------------------------------------------


def dockerfile_runtime() -> tuple[int, list[str], list[str]]:
    """The final stage's numeric user, ENTRYPOINT and CMD."""
    text = DOCKERFILE.read_text()
    final = text[text.rindex("\nFROM ") :]
    user = re.search(r"^USER (\d+)(?::\d+)?$", final, re.MULTILINE)
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", final, re.MULTILINE)
    command = re.search(r"^CMD (\[.*\])$", final, re.MULTILINE)
    assert user, "a numeric USER"
    assert entrypoint, "ENTRYPOINT in exec form"
    assert command, "CMD in exec form"
    return int(user.group(1)), json.loads(entrypoint.group(1)), json.loads(command.group(1))


def test_dockerfile_builds_a_non_root_genrelay_image() -> None:
    text = DOCKERFILE.read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["python:3.11-slim"] * 2
    assert re.search(r'pip install "\.\[emulator\]"$', text, re.MULTILINE)
    user, entrypoint, command = dockerfile_runtime()
    assert user != 0
    assert [*entrypoint, *command] == ["genrelay", "run"]
    assert re.search(r"GENRELAY_HTTP_HOST=0\.0\.0\.0", text)
    assert f"EXPOSE {default_of('http_port')}" in text


def test_docker_context_keeps_every_package_folder() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    linked = {p.name for p in (REPO / "genrelay").iterdir() if p.is_symlink()}
    assert linked, "genrelay/ holds links to the top-level folders"
    assert {"pyproject.toml", "README.md", "genrelay", *linked} <= kept


def test_compose_builds_and_runs_that_image() -> None:
    relay, emulator = service("genrelay"), service("emulator")
    assert relay["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
    assert emulator["image"] == relay["image"]
    assert "command" not in relay, "the image's default command is `genrelay run`"
    assert emulator["profiles"] == ["emulator"]
    assert relay["depends_on"]["emulator"]["required"] is False
    assert relay["deploy"]["replicas"] == "${RELAY_REPLICAS:-3}"
    for name in ("otel-collector", "jaeger"):
        assert service(name)["profiles"] == ["tracing"]


def test_compose_kafka_is_a_single_kraft_node() -> None:
    env = environment(service("kafka"))
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    relay = environment(service("genrelay"))
    assert relay[env_name("kafka_bootstrap")] == listeners["INTERNAL"]
    assert environment(service("kafka-init"))[env_name("kafka_bootstrap")] == listeners["INTERNAL"]
    assert listeners["EXTERNAL"] == "localhost:9092"
    assert all(env[key] == "1" for key in env if key.endswith("REPLICATION_FACTOR"))


def test_compose_minio_health_check_asks_the_cluster_endpoint() -> None:
    minio = service("minio")
    assert "/minio/health/cluster" in " ".join(minio["healthcheck"]["test"])
    assert environment(minio)["MINIO_ROOT_PASSWORD"].startswith("${" + env_name("s3_secret_key"))
    endpoint = environment(resolved_compose()["services"]["genrelay"])[env_name("s3_endpoint")]
    assert endpoint == "minio:9000"


# --- against a real broker ------------------------------------------------------------------


def kafka_topics_command(tmp_path: Path) -> Path:
    """A kafka-topics.sh stand-in running Kafka's own TopicCommand on the cached jars."""
    version = kafka_version()
    libs = cache_dir() / f"kafka-{version}" / "libs"
    repo = cache_dir() / "m2"
    jar = repo / "org/apache/kafka/kafka-tools" / version / f"kafka-tools-{version}.jar"
    if not jar.is_file():
        mvn = shutil.which("mvn")
        assert mvn is not None, "Maven is needed to fetch Kafka's command-line tools"
        done = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                f"-Dmaven.repo.local={repo}",
                "dependency:get",
                f"-Dartifact=org.apache.kafka:kafka-tools:{version}",
                "-Dtransitive=false",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert jar.is_file()
    log4j = DEPLOY / "local" / "kafka" / "log4j2.properties"
    wrapper = tmp_path / "kafka-topics.sh"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        "exec java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "
        f"-Dlog4j2.configurationFile={log4j} -cp '{libs}/*:{jar}' "
        'org.apache.kafka.tools.TopicCommand "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.integration
@pytest.mark.timeout(420)
async def test_topic_script_against_a_real_broker(stack: StackInfo, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = {field: f"deploy-{suffix}.{field}" for field in topic_fields()}
    command = await asyncio.to_thread(kafka_topics_command, tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_TOPICS": str(command),
        "GENRELAY_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "GENRELAY_PARTITIONS": "3",
        **{env_name(field): name for field, name in names.items()},
    }
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(TOPIC_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    settings = Settings(
        _env_file=None, kafka_bootstrap=stack.kafka_bootstrap, create_topics=False
    ).model_copy(update=names)
    # genrelay accepts the layout the script made, without creating anything itself.
    assert await ensure_topics(settings) == 3
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names.values()))
        assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(
            names.values(), 3
        )
        (configs,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, names["topic_ledger"])]
        )
        entries = {entry[0]: entry[1] for entry in configs.resources[0][4]}
        assert entries["cleanup.policy"] == "compact"
        await admin.delete_topics(list(names.values()))
    finally:
        await admin.close()
