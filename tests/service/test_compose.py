"""docker-compose.yml is a valid Compose file whose services, images, commands and files all exist."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml
from compose_spec import PyCompose
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from server.app import create_app
from tests.service.helpers import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_complete():
    text = (ROOT / "docker-compose.yml").read_text()
    compose = PyCompose.from_yaml(text)  # raises on anything the Compose specification rejects
    assert set(compose.service_names()) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker",
        "flower",
        "prometheus",
        "grafana",
    }
    raw = yaml.safe_load(text)
    services = raw["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and not line.startswith("COPY --from"):
                    for source in line.split()[1:-1]:
                        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
    assert services["migrate"]["command"] == ["lethe", "db", "upgrade"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["worker"]["environment"]["LETHE_DEVICE"] == "cuda"
    assert "nvidia/cuda" in (ROOT / "docker/worker.Dockerfile").read_text()
    # Every module a command starts is importable here.
    for name in ("api", "worker", "flower"):
        command = services[name]["command"]
        target = command[command.index("-A") + 1] if "-A" in command else next(c for c in command if ":create_app" in c)
        target = target.split(":")[0]
        importlib.import_module(target)
    env = services["api"]["environment"]
    assert env["LETHE_DATABASE_URL"].startswith("postgresql+psycopg://") and env["LETHE_BROKER_URL"].startswith(
        "redis://"
    )
    # The API and the worker read one master key, kept on a volume of its own: not the data volume, not the database.
    for name in ("api", "worker"):
        key_file = services[name]["environment"]["LETHE_MASTER_KEY_FILE"]
        mounts = dict(reversed(v.split(":")) for v in services[name]["volumes"])
        key_volume = mounts[str(Path(key_file).parent)]
        assert key_volume in raw["volumes"] and key_volume not in ("lethedata", "pgdata")


def test_flower_needs_a_password_and_listens_on_the_hosts_loopback_only():
    """Flower can revoke tasks and stop workers: compose refuses to start it open, and never publishes it widely."""
    flower = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    # `${VAR:?message}`: Compose stops with the message when the variable is unset or empty.
    required = re.fullmatch(r"\$\{(LETHE_FLOWER_BASIC_AUTH):\?(.+)\}", flower["environment"]["FLOWER_BASIC_AUTH"])
    assert required is not None and "user:password" in required.group(2), flower["environment"]
    # From the environment, not the command line, where any process on the host could read it.
    assert not any(arg.startswith(("--basic-auth", "--basic_auth")) for arg in flower["command"])
    for port in flower.get("ports", []):
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        assert host_ip == "127.0.0.1", f"Flower published beyond the host's loopback: {port}"


def test_monitoring_is_opt_in_and_its_files_are_wired():
    """Prometheus and Grafana start only with the `monitoring` profile, mount files that exist, and agree on names."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                mounts[target] = ROOT / source
    scrape = yaml.safe_load((mounts["/etc/prometheus/prometheus.yml"]).read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["api:8000"] and scrape["metrics_path"] == "/metrics"
    # /metrics needs an admin key: read from the compose secret, never written in the file.
    assert scrape["authorization"]["credentials_file"] == "/run/secrets/lethe_metrics_key"
    assert "lethe_metrics_key" in services["prometheus"]["secrets"]
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "lethe.yml").read_text())["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    for path in dashboards.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    # Grafana's admin password from a secret: never a default, and no `${VAR:?}` that would stop a plain `up`.
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "grafana_admin_password" in services["grafana"]["secrets"]
    for name in ("prometheus", "grafana"):
        assert "${" not in json.dumps(services[name]), f"{name}: a variable Compose would interpolate on every up"


def test_the_dashboard_queries_only_metrics_the_api_exports(tmp_path: Path, pg_url: str, redis_url: str):
    """Every series the Grafana dashboard queries is in the real app's /metrics output."""
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/lethe.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"\blethe_[a-z_]+\b", expr)}
    assert {"lethe_gate_fires_total", "lethe_jobs_waiting", "lethe_http_request_seconds_bucket"} <= queried
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        broker_url=redis_url,
        bootstrap_admin_key=ADMIN_TOKEN,  # type: ignore[arg-type]
        master_key_file=tmp_path / "config" / "master.key",
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(create_app(settings, load_model=False)) as client:
        client.get("/healthz")
        client.app.state.metrics.record_gate(["a1", None])  # type: ignore[attr-defined]
        text = client.get("/metrics", headers=auth).text
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    assert queried <= exported, sorted(queried - exported)
