"""deploy/kubernetes, checked offline: every manifest validates against the official Kubernetes
JSON schemas (strict: unknown fields are errors) shipped in the kubernetes-validate package, and
the pieces fit together: probes on the admin listener, a locked-down securityContext, a preStop
sleep and grace period that cover the gateway's shutdown_timeout, a ConfigMap whose
configuration passes `gateway check` with the Secret's values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.cli import _parser
from gateway.config import CompiledConfig
from tests.deploy.conftest import DEPLOY, check_config, required_variables

KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes minor this layout supports, and the newest the package has schemas for.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
LABELS = {"app.kubernetes.io/name": "oauth-gateway", "app.kubernetes.io/component": "gateway"}
# The load balancer's deregistration delay deployment.yaml assumes (see its comment).
DEREGISTRATION_DELAY = 10


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in manifest_files():
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return by_kind("Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.fixture(scope="module")
def config_text(deployment: dict[str, Any], container: dict[str, Any]) -> str:
    """The gateway.yaml the pod reads: the ConfigMap's key mounted at GATEWAY_CONFIG."""
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_path = Path(env["GATEWAY_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    assert mount["readOnly"] is True and "subPath" not in mount  # edits must reach the pod
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    config_map = by_kind("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    return str(config_map["data"][config_path.name])


@pytest.fixture(scope="module")
def secret_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets from the Secret."""
    secret = by_kind("Secret")
    values = {**secret.get("data", {}), **secret.get("stringData", {})}
    env = {}
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == secret["metadata"]["name"], entry
            env[entry["name"]] = values[ref["key"]]
    return env


@pytest.fixture(scope="module")
def compiled(config_text: str, secret_env: dict[str, str]) -> CompiledConfig:
    return check_config(config_text, secret_env)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    images = {image["name"] for image in kustomization.get("images", [])}
    for doc in documents():
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert c["image"].split(":")[0] in images


def test_every_kind_is_there() -> None:
    kinds = sorted(doc["kind"] for doc in documents())
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret",
         "Service"]
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_an_unknown_field(deployment: dict[str, Any]) -> None:
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_configmap_configuration_passes_gateway_check(
    compiled: CompiledConfig, config_text: str, secret_env: dict[str, str]
) -> None:
    assert compiled.routes.entries
    assert compiled.warnings == []
    # Every ${VAR} without a default comes from the Secret, none is inlined.
    assert required_variables(config_text) == set(secret_env)
    assert "client_secret: ${" in config_text


def test_listeners_match_the_container_ports(
    compiled: CompiledConfig, container: dict[str, Any]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert compiled.config.admin.listen == "0.0.0.0:9901"  # reachable by the kubelet's probes
    assert ports["admin"] == port_of(compiled.config.admin.listen)
    assert ports["http"] == port_of(compiled.config.listen)


def test_probes_on_the_admin_listener(container: dict[str, Any]) -> None:
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness == {"path": "/readyz", "port": "admin"}
    assert liveness == {"path": "/healthz", "port": "admin"}


def test_security_context(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # The Dockerfile's numeric user.
    dockerfile_user = re.search(r"^USER (\d+)", (DEPLOY.parent / "Dockerfile").read_text(), re.M)
    assert dockerfile_user is not None
    assert (
        context["runAsUser"] == int(dockerfile_user.group(1)) == pod["securityContext"]["runAsUser"]
    )
    # With a read-only root, worker processes need a writable /tmp.
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_prestop_and_grace_period_cover_the_drain(
    deployment: dict[str, Any], container: dict[str, Any], compiled: CompiledConfig
) -> None:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop > DEREGISTRATION_DELAY
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + compiled.config.shutdown_timeout


def test_container_runs_the_gateway_with_watch(container: dict[str, Any]) -> None:
    args = _parser().parse_args(container["args"])
    assert args.command == "run" and args.watch


def test_resources(container: dict[str, Any], compiled: CompiledConfig) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    # One CPU requested per worker: the HPA's utilization is relative to the request.
    workers = compiled.config.workers
    assert isinstance(workers, int)
    assert float(resources["requests"]["cpu"]) == workers


def test_service_exposes_the_public_listener_only(deployment: dict[str, Any]) -> None:
    service = by_kind("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_hpa_and_pdb(deployment: dict[str, Any]) -> None:
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == LABELS
