"""Deployment files, validated statically (no Docker engine or cluster here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft201909Validator

from shared.settings import VARIABLES

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = Path(sys.executable).parent / "kubectl"
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
SERVICES = {"chat-migrate", "chat-gateway", "chat-writer", "chat-notifier", "chat-query"}

# Custom resources of the operators we rely on: the fields each must have (no schema ships offline).
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): lambda o: o["spec"]["scaleTargetRef"]["name"] and o["spec"]["triggers"],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): lambda o: o["spec"]["secretTargetRef"],
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): lambda o: o["spec"]["replicas"] >= 3,
    ("rabbitmq.com/v1beta1", "User"): lambda o: o["spec"]["importCredentialsSecret"]["name"],
    ("rabbitmq.com/v1beta1", "Permission"): lambda o: o["spec"]["userReference"]["name"] and o["spec"]["permissions"],
    ("postgresql.cnpg.io/v1", "Cluster"): lambda o: (
        o["spec"]["instances"] >= 3
        and o["spec"]["storage"]["size"]
        and o["spec"]["postgresql"]["parameters"]["autovacuum_naptime"] == "5s"  # migration 0005
        and o["spec"]["minSyncReplicas"] >= 1  # a fail-over loses nothing confirmed (docs/protocol.md section 4)
    ),
    ("databases.spotahome.com/v1", "RedisFailover"): lambda o: o["spec"]["sentinel"]["replicas"] >= 3,
}


def build(path: str) -> list[dict]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.parametrize("overlay", ["deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod", "deploy/k8s/data"])
def test_kustomize_builds_and_every_object_validates(overlay):
    objects = build(overlay)
    assert objects
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS:
            assert CRDS[key](obj), f"{key} {obj['metadata']['name']} lacks required fields"
            continue
        kubernetes_validate.validate(obj, "1.30.0", strict=True)  # raises on any schema error


@pytest.mark.parametrize("overlay", ["deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"])
def test_deployments_probe_drain_and_identify_themselves(overlay):
    objects = build(overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for name in ("chat-gateway", "chat-query", "chat-writer", "chat-notifier"):
        assert {("Deployment", name), ("Service", name), ("PodDisruptionBudget", name)} <= kinds
    assert {
        ("HorizontalPodAutoscaler", "chat-gateway"),
        ("HorizontalPodAutoscaler", "chat-query"),
        ("ScaledObject", "chat-writer"),
        ("ScaledObject", "chat-notifier"),
        ("Job", "chat-migrate"),
    } <= kinds
    for dep in (o for o in objects if o["kind"] == "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["command"][0] in SCRIPTS
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["CHAT_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        # preStop plus the service's own 20 s drain fit in the grace period
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + 20


def test_compose_file_follows_the_compose_spec_and_names_real_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema = json.loads((ROOT / "tests/schemas/compose-spec.json").read_text())
    Draft201909Validator(schema).validate(compose)
    services = compose["services"]
    for name in ("postgres", "rabbitmq", "redis"):
        assert services[name]["healthcheck"]["test"]
    servers = ("postgres", "rabbitmq", "redis")
    commands = {s["command"][0] for name, s in services.items() if "command" in s and name not in servers}
    assert commands == SERVICES
    # rows every message rewrites are vacuumed every few seconds, not once a minute (migration 0005)
    assert "autovacuum_naptime=5s" in services["postgres"]["command"]
    for name in ("gateway", "query", "writer", "notifier"):
        conditions = services[name]["depends_on"]
        assert conditions["migrate"]["condition"] == "service_completed_successfully"
        assert conditions["rabbitmq"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dockerfile_runs_a_console_script_as_non_root_in_exec_form():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    final = lines[max(i for i, l in enumerate(lines) if l.startswith("FROM")) :]
    user = [l for l in final if l.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    entrypoint = [l for l in final if l.startswith("ENTRYPOINT")]
    assert entrypoint and json.loads(entrypoint[-1].split(" ", 1)[1])  # exec form: a JSON array
    cmd = json.loads([l for l in final if l.startswith("CMD")][-1].split(" ", 1)[1])
    assert cmd[0] in SCRIPTS
    assert SERVICES <= SCRIPTS


def variables_in_readme() -> set[str]:
    table = (ROOT / "README.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(CHAT_[A-Z_]+)` \|", table, re.M))


def variables_in_compose() -> set[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names: set[str] = set()
    for service in compose["services"].values():
        names |= {k for k in service.get("environment", {}) if k.startswith("CHAT_")}
    return names


def variables_in_manifests() -> set[str]:
    names: set[str] = set()
    for obj in build("deploy/k8s/overlays/dev"):
        if obj["kind"] in ("ConfigMap", "Secret") and obj["metadata"]["name"].startswith(
            ("chat-config", "chat-secrets")
        ):
            names |= set(obj.get("data", {}))
        if obj["kind"] in ("Deployment", "Job"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    return names


def test_one_list_of_settings_everywhere():
    code = set(VARIABLES)
    assert variables_in_readme() == code
    assert variables_in_compose() == code
    assert variables_in_manifests() == code


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_autoscaler_maxima_never_exceed_the_partitions(overlay):
    """Replicas past CHAT_PARTITIONS would stand idle: no autoscaler of a consumer may ask for them."""
    objects = build(f"deploy/k8s/overlays/{overlay}")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("chat-config"))
    partitions = int(config["data"]["CHAT_PARTITIONS"])
    scaled = {
        o["spec"]["scaleTargetRef"]["name"]: o["spec"]["maxReplicaCount"]
        for o in objects
        if o["kind"] == "ScaledObject"
    }
    assert set(scaled) == {"chat-writer", "chat-notifier"}
    assert all(1 <= maximum <= partitions for maximum in scaled.values()), (scaled, partitions)
    deployments = {o["metadata"]["name"]: o["spec"].get("replicas", 1) for o in objects if o["kind"] == "Deployment"}
    assert deployments["chat-writer"] <= partitions and deployments["chat-notifier"] <= partitions


def test_production_hardening():
    """What a production deployment must not get wrong, checked on the prod overlay and the data tier."""
    prod = build("deploy/k8s/overlays/prod")
    config = next(o for o in prod if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("chat-config"))[
        "data"
    ]
    assert config["CHAT_JWT_AUDIENCE"] and config["CHAT_JWT_TOKEN_USE"] == "id" and config["CHAT_JWT_ISSUER"]
    assert config["CHAT_DEV_LOGIN"] == "false"
    origins = config["CHAT_ALLOWED_ORIGINS"].split(",")
    assert any(o.startswith("chrome-extension://") for o in origins)  # PageNow's extension can connect
    assert not any(
        o["kind"] == "Secret" and o["metadata"]["name"] == "chat-secrets" for o in prod
    )  # managed outside git
    for obj in (o for o in prod if o["kind"] in ("Deployment", "Job")):
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", obj["metadata"]["name"]
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
    for obj in (o for o in prod if o["kind"] == "Service"):
        assert [p["name"] for p in obj["spec"]["ports"]] == ["http"]  # never the ops port
    for obj in (
        o for o in prod if o["kind"] == "Deployment" and o["metadata"]["name"] in ("chat-gateway", "chat-query")
    ):
        container = obj["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CHAT_OPS_PORT"] and env["CHAT_OPS_PORT"] != env["CHAT_PORT"]  # /metrics off the public port
        assert container["readinessProbe"]["httpGet"]["port"] == "ops"
    data = build("deploy/k8s/data")
    text = json.dumps(data)
    assert "default_pass" not in text and "password" not in text.lower().replace("importcredentialssecret", "")
    policies = {o["metadata"]["name"]: o for o in data if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"chat-rabbitmq-ingress", "chat-redis-ingress", "chat-postgres-ingress"}
    for policy in policies.values():
        first = policy["spec"]["ingress"][0]["from"][0]
        assert first["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "pagenow-chat"}
