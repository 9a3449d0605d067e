"""The operator's endpoints in-process: liveness, readiness with the served set, Prometheus metrics, the OpenAPI
schema."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.helpers import b64_file
from unlearning.world import World


def test_health_readiness_metrics_and_schema(client: TestClient, tiny_world: World):
    question = tiny_world.person("p003").facts[0].train_questions[0]
    vqa = {"image": b64_file(tiny_world, "p003", 0), "question": question}
    assert client.post("/v1/vqa", json=vqa).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["adapter_set_version"] == 0
    metrics = client.get("/metrics").text
    assert 'lethe_http_requests_total{method="POST",route="/v1/vqa",status="200"} 1.0' in metrics
    assert "lethe_ready 1.0" in metrics
    assert client.get("/openapi.json").json()["paths"]["/v1/forget-requests"]["post"]["requestBody"]["content"]
