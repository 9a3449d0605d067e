"""docker-compose.yml is a valid Compose file whose services, images, commands and files all exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml
from compose_spec import PyCompose

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_complete():
    text = (ROOT / "docker-compose.yml").read_text()
    compose = PyCompose.from_yaml(text)  # raises on anything the Compose specification rejects
    assert set(compose.service_names()) == {"postgres", "redis", "migrate", "api", "worker", "flower"}
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
