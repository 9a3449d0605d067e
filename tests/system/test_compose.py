"""docker-compose.yml is a valid Compose file that comes up ready: the model exists before the API and the workers
start, they start the process graph tests/system/test_distributed.py runs, and every Lethe process reads one set of
settings. (No Docker engine runs here: this checks the file's structure.)"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.crypto import outside_data_dir
from core.processes import api_command, worker_command
from core.settings import Settings
from server.app import create_app
from tests.helpers import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
LETHE_SERVICES = ("migrate", "world", "api", "worker", "flower")
# What every process of the graph must agree on: the same database, broker, data, world, model and master key.
SHARED = (
    "LETHE_DATABASE_URL",
    "LETHE_BROKER_URL",
    "LETHE_DATA_DIR",
    "LETHE_ARTIFACT_ROOT",
    "LETHE_WORLD",
    "LETHE_MODEL_PATH",
    "LETHE_MASTER_KEY_FILE",
)
# Compose's `${VAR:-default}` (unset or empty: the default) and `${VAR:?message}` (unset or empty: refuse to start).
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}")


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def interpolated(value: str, env: dict[str, str]) -> str:
    """`value` as Compose resolves it from `env` (a variable that must be set and is not: an error)."""

    def resolve(match: re.Match[str]) -> str:
        if env.get(match.group(1)):
            return env[match.group(1)]
        if match.group(2) is None and ":?" in match.group(0):
            raise ValueError(f"{match.group(1)} must be set")
        return match.group(2) or ""

    return INTERPOLATION.sub(resolve, value)


def dockerfile_cmd(name: str) -> list[str]:
    line = next(x for x in (ROOT / "docker" / name).read_text().splitlines() if x.startswith("CMD "))
    return list(json.loads(line.removeprefix("CMD ")))


def test_compose_file_is_valid_and_complete():
    text = (ROOT / "docker-compose.yml").read_text()
    raw = yaml.safe_load(text)
    # Compose resolves YAML merge keys (`<<: *lethe-env`) before validating; the validator does not, so it is given
    # the resolved document. It raises on anything the Compose specification rejects.
    compose = PyCompose.from_yaml(yaml.safe_dump(raw))
    assert set(compose.service_names()) == {
        *("postgres", "redis", "migrate", "world", "api", "worker", "flower"),
        *("prometheus", "grafana"),  # the `monitoring` profile
    }
    for name, service in raw["services"].items():
        for dependency in service.get("depends_on", {}):
            assert dependency in raw["services"], f"{name} depends on unknown service {dependency}"
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and not line.startswith("COPY --from"):
                    for source in line.split()[1:-1]:
                        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in raw["volumes"], f"{name} mounts undeclared volume {source}"
    gpu = raw["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and raw["services"]["worker"]["environment"]["LETHE_DEVICE"] == "cuda"
    assert "nvidia/cuda" in (ROOT / "docker/worker.Dockerfile").read_text()


def test_the_model_and_the_schema_exist_before_the_api_and_the_workers_start():
    """`docker compose up` becomes ready: one-shot services build the model and migrate, and must succeed first."""
    s = services()
    assert s["migrate"]["command"] == ["lethe", "db", "upgrade"]
    # The reference world's model (no retain model), or a check of the mounted checkpoint: into the shared volume.
    assert s["world"]["command"] == ["lethe", "world", "build", "--serving"]
    for one_shot in ("migrate", "world"):
        assert s[one_shot]["restart"] == "no" and "ports" not in s[one_shot]
    data = next(v.split(":")[0] for v in s["world"]["volumes"] if v.endswith(":/data"))
    for name in ("api", "worker"):
        conditions = {dependency: spec.get("condition") for dependency, spec in s[name]["depends_on"].items()}
        assert conditions == {
            "migrate": "service_completed_successfully",
            "world": "service_completed_successfully",
            "redis": "service_healthy",
        }, f"{name} may start before the schema and the model exist: {conditions}"
        assert f"{data}:/data" in s[name]["volumes"], f"{name} does not see the model the world service built"
        # A local checkpoint is mounted read-only where LETHE_MODEL_PATH points, for the check and for the loads.
        assert "./models:/models:ro" in s[name]["volumes"] and "./models:/models:ro" in s["world"]["volumes"]
    # Healthy means ready (model and active set loaded, /readyz), not merely answering.
    assert "/readyz" in " ".join(s["api"]["healthcheck"]["test"])


def test_the_api_and_worker_commands_are_the_process_graphs():
    """The commands `lethe serve` and the system tests run (core.processes), in compose and in the images."""
    s = services()
    assert s["api"]["command"] == api_command("0.0.0.0", 8000) == dockerfile_cmd("api.Dockerfile")
    assert s["worker"]["command"] == worker_command() == dockerfile_cmd("worker.Dockerfile")
    for name in ("api", "worker", "flower"):  # every module a command starts is importable here
        command = s[name]["command"]
        target = command[command.index("-A") + 1] if "-A" in command else next(c for c in command if ":create_" in c)
        importlib.import_module(target.split(":")[0])


def test_every_lethe_process_reads_the_same_settings(monkeypatch: pytest.MonkeyPatch):
    s = services()
    shared = {key: s["api"]["environment"][key] for key in SHARED}
    for name in LETHE_SERVICES:
        env = s[name]["environment"]
        assert {key: env.get(key) for key in SHARED} == shared, f"{name} reads other settings than the api"
    assert set(s["worker"]["environment"]) - set(s["api"]["environment"]) == {"LETHE_DEVICE"}
    assert shared["LETHE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert shared["LETHE_BROKER_URL"].startswith("redis://")
    # As a process in the container reads them, with nothing set on the host and with a checkpoint chosen there.
    checkpoint = {"LETHE_MODEL_PATH": "/models/llava", "LETHE_RETAIN_DIR": "/models/retain"}
    for host, model_path in (({}, None), (checkpoint, Path("/models/llava"))):
        for key in list(os.environ):
            if key.startswith("LETHE_"):
                monkeypatch.delenv(key)
        for key, value in s["worker"]["environment"].items():
            monkeypatch.setenv(key, interpolated(value, host))
        settings = Settings()
        assert settings.model_path == model_path and settings.world == "default" and settings.device == "cuda"
        assert settings.retain_dir == (Path("/models/retain") if model_path else None)
        assert settings.resolved_artifact_root.is_relative_to(settings.data_dir)
        outside_data_dir(settings.resolved_master_key_file, settings)  # raises if the key lay beside the data
    # The master key on a volume of its own: not the data volume, not the database's.
    for name in ("api", "worker"):
        mounts = dict(reversed(v.split(":")[:2]) for v in s[name]["volumes"])
        key_volume = mounts[str(Path(shared["LETHE_MASTER_KEY_FILE"]).parent)]
        assert key_volume in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
        assert key_volume not in ("lethedata", "pgdata")


def test_flower_needs_a_password_and_listens_on_the_hosts_loopback_only():
    """Flower can revoke tasks and stop workers: compose refuses to start it open, and never publishes it widely."""
    flower = services()["flower"]
    # `${VAR:?message}`: Compose stops with the message when the variable is unset or empty.
    required = re.fullmatch(r"\$\{(LETHE_FLOWER_BASIC_AUTH):\?(.+)\}", flower["environment"]["FLOWER_BASIC_AUTH"])
    assert required is not None and "user:password" in required.group(2), flower["environment"]
    with pytest.raises(ValueError, match="LETHE_FLOWER_BASIC_AUTH"):
        interpolated(flower["environment"]["FLOWER_BASIC_AUTH"], {})
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
