"""Running the service as real processes in system tests: ports, spawning and stopping, readiness, one question."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import httpx

from tests.helpers import b64_file
from unlearning.world import World

TERMINAL = {"active", "failed", "cancelled", "rejected_verification", "nothing_to_forget", "revoked"}
# Short training: these tests are about not losing work, not about forgetting well.
QUICK = {"steps": 60, "discriminator_steps": 100, "positive_augmentations": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    return subprocess.Popen(args, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:  # type: ignore[type-arg]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            # Chained, not suppressed: raised while a test fails, it must not hide that failure.
            raise AssertionError(f"process {proc.args} did not stop within {timeout} s of SIGTERM") from exc
    return int(proc.returncode)


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def ask(client: httpx.Client, world: World, pid: str, view: int, question: str) -> dict:
    response = client.post("/v1/vqa", json={"image": b64_file(world, pid, view), "question": question})
    assert response.status_code == 200, response.text
    return response.json()


def ask_text(client: httpx.Client, question: str) -> dict:
    """A question asked with no photo."""
    response = client.post("/v1/vqa", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()
