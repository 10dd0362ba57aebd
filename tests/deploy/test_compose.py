"""deploy/compose, checked without a Docker engine: the file is valid under the Compose
Specification's JSON schema, every service has an image or a build, every file it mounts is in
the repository, the gateway's configuration passes `gateway check` with the service's
environment, Prometheus' configuration passes `promtool check config` (alerting rules
included), and Grafana is provisioned with the data source and the dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from gateway.cli import _parser
from gateway.config import CompiledConfig
from tests.deploy.conftest import DEPLOY, REPO, check_config, required_variables, tool

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
SERVICES = {"gateway", "idp", "redis", "upstream", "prometheus", "grafana"}


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    return dict(compose()["services"][name])


def bind_mounts(name: str) -> dict[str, Path]:
    """Container path -> host path, for a service's bind mounts (short and long syntax)."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published(name: str) -> dict[int, str]:
    """Container port -> the host side ("8080", "127.0.0.1:9901"), short syntax."""
    ports = {}
    for entry in service(name).get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(container)] = host
    return ports


@pytest.fixture(scope="module")
def gateway_config() -> tuple[str, dict[str, str]]:
    """The configuration text the gateway container reads, and the container's environment."""
    env = environment("gateway")
    target = PurePosixPath(env["GATEWAY_CONFIG"])
    mounts = bind_mounts("gateway")
    if str(target) in mounts:
        return mounts[str(target)].read_text(), env
    return (mounts[str(target.parent)] / target.name).read_text(), env


@pytest.fixture(scope="module")
def compiled(gateway_config: tuple[str, dict[str, str]]) -> CompiledConfig:
    text, env = gateway_config
    return check_config(text, env)


def test_valid_under_the_compose_specification_schema() -> None:
    checker = tool("check-jsonschema", "pip install -e '.[dev]'")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_whole_stack_is_there() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    for name, spec in services.items():
        assert "image" in spec or "build" in spec, name
        image = spec.get("image", "")
        assert not image.endswith(":latest"), name
        assert "build" in spec or ":" in image, f"{name}: pin the image's tag"


def test_gateway_is_built_from_the_repository_dockerfile() -> None:
    build = service("gateway")["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_host_path_is_in_the_repository(name: str) -> None:
    for target, source in bind_mounts(name).items():
        assert source.exists(), f"{name}: {source.relative_to(REPO)} (-> {target}) is missing"
        assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"


def test_gateway_configuration_passes_gateway_check(
    compiled: CompiledConfig, gateway_config: tuple[str, dict[str, str]]
) -> None:
    text, env = gateway_config
    assert compiled.routes.entries
    # The only warning: the test provider is plain http (on loopback, so allowed).
    assert [(w.path, w.message) for w in compiled.warnings] == [
        (("issuers", "local", "issuer"), "the issuer is reached over plain http")
    ]
    assert required_variables(text) <= set(env)
    assert compiled.config.cache is not None and compiled.config.cache.redis is not None
    assert compiled.config.cache.redis.url.startswith("redis://redis:")


def test_gateway_ports_command_and_grace(compiled: CompiledConfig) -> None:
    gateway = service("gateway")
    ports = published("gateway")
    public = int(compiled.config.listen.rsplit(":", 1)[1])
    admin = compiled.config.admin.listen
    assert public in ports
    # Reachable by Prometheus from its container, published on the host's loopback only.
    assert admin.startswith("0.0.0.0:")
    assert ports[int(admin.rsplit(":", 1)[1])].startswith("127.0.0.1:")
    args = _parser().parse_args(gateway["command"])
    assert args.command == "run" and args.watch
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > compiled.config.shutdown_timeout
    assert gateway["read_only"] is True and "/tmp" in gateway["tmpfs"]


def test_idp_is_the_repository_test_provider_in_the_gateway_namespace(
    compiled: CompiledConfig,
) -> None:
    idp = service("idp")
    assert idp["network_mode"] == "service:gateway"
    assert idp["image"].startswith("node:") and int(idp["image"][5:7]) >= 20
    mounts = bind_mounts("idp")
    provider_dir = mounts["/idp"]
    assert provider_dir == REPO / "tests" / "integration" / "idp"
    command = " ".join(idp["command"])
    for name in ("package.json", "package-lock.json", "provider.mjs"):
        assert (provider_dir / name).is_file() and f"/idp/{name}" in command
    assert "npm ci" in command
    wrapper = next(t for t, s in mounts.items() if s == COMPOSE_DIR / "idp" / "start.mjs")
    assert wrapper in command
    # The gateway expects the issuer the provider names itself: loopback, on IDP_PORT, which
    # the gateway service publishes for the host's token requests.
    port = int(environment("idp")["IDP_PORT"])
    issuers = [issuer.config.issuer for issuer in compiled.issuers.values()]
    assert issuers == [f"http://127.0.0.1:{port}"]
    assert port in published("gateway")
    assert environment("gateway")["INTROSPECTION_CLIENT_SECRET"] == "gateway-introspector-secret"


def prometheus_layout(directory: Path) -> Path:
    """Prometheus' /etc/prometheus as the container sees it, laid out in ``directory``."""
    config = None
    for target, source in bind_mounts("prometheus").items():
        container_path = PurePosixPath(target)
        assert container_path.parent == PurePosixPath("/etc/prometheus"), target
        shutil.copy(source, directory / container_path.name)
        if container_path.name == "prometheus.yml":
            config = directory / container_path.name
    assert config is not None, "prometheus.yml is not mounted"
    return config


def test_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    promtool = tool(
        "promtool", "apt-get install prometheus (Debian's package ships promtool; CI installs it)"
    )
    config = prometheus_layout(tmp_path)
    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The alerting rules were found and checked along with it.
    assert "alerts.yaml" in result.stdout + result.stderr


def test_prometheus_scrapes_the_gateway_admin_listener(compiled: CompiledConfig) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "gateway")
    admin_port = compiled.config.admin.listen.rsplit(":", 1)[1]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{admin_port}"]
    assert config["rule_files"] == ["alerts.yaml"]
    assert bind_mounts("prometheus")["/etc/prometheus/alerts.yaml"] == (
        DEPLOY / "prometheus" / "alerts.yaml"
    )


def test_grafana_provisions_the_data_source_and_the_dashboard() -> None:
    mounts = bind_mounts("grafana")
    provisioning = {
        PurePosixPath(t).parent.name: s for t, s in mounts.items() if "/provisioning/" in t
    }
    datasources = yaml.safe_load(provisioning["datasources"].read_text())["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(provisioning["dashboards"].read_text())["providers"]
    dashboard_dir = PurePosixPath(providers[0]["options"]["path"])
    dashboards = {t: s for t, s in mounts.items() if PurePosixPath(t).parent == dashboard_dir}
    assert dashboards, f"nothing is mounted into {dashboard_dir}"
    for source in dashboards.values():
        assert source == DEPLOY / "grafana" / "gateway-dashboard.json"
        dashboard = json.loads(source.read_text())
        # Panels that name a data source by uid name the provisioned one (or a variable).
        provisioned = {d["uid"] for d in datasources}
        for uid in _datasource_uids(dashboard):
            assert uid.startswith("$") or uid in provisioned, uid
    home = environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards


def _datasource_uids(node: Any) -> list[str]:
    uids = []
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and isinstance(source.get("uid"), str):
            uids.append(source["uid"])
        for value in node.values():
            uids += _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            uids += _datasource_uids(value)
    return uids
