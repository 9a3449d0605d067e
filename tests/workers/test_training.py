"""The training job's outcomes, run in-process on real PostgreSQL: rejected with leaking cases, nothing to forget,
retries recorded, cancellation honoured until publishing, an earlier subject's probes never captured."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.many_requests import request_events
from core.adapters.repository import AdapterRepository, AdapterSetRepository
from core.audit.repository import AuditRepository
from core.crypto import master_key
from core.db import make_engine, make_session_factory, transaction
from core.forget_requests.models import RequestStatus
from core.forget_requests.repository import ForgetRequestRepository
from core.queue import TrainPayload
from server.app import create_app
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, wait_for
from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig
from unlearning.world import World
from unlearning.world.requests import WorldRetain
from workers.runtime import Runtime
from workers.training import run_training_job
from workers.training.job import Job
from workers.training.reporter import CANCEL_POLL_S, JobReporter

pytestmark = pytest.mark.slow


@pytest.fixture()
def service(tiny_world: World, backbone: Backbone, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[tuple]:
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, verify_max_attempts=2)
    engine = make_engine(pg_url)
    sessions = make_session_factory(engine)
    rt = Runtime(settings, sessions, backbone, backbone.fingerprint(), WorldRetain(tiny_world), master_key(settings))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client, rt
    # Closed before pg_url drops the database, so no pooled connection outlives it.
    engine.dispose()


def file(service: tuple, body: dict) -> TrainPayload:
    """File a request over the API; the test then runs its training job in-process instead of a worker."""
    client, rt = service
    created = client.post("/v1/forget-requests", json=body)
    assert created.status_code == 202, created.text
    request_id = created.json()["id"]
    with transaction(rt.sessions) as session:
        job = ForgetRequestRepository(session).latest_job(request_id)
        assert job is not None
        return TrainPayload(request_id=request_id, job_id=job.id)


def report(client: TestClient, request_id: str) -> dict:
    return client.get(f"/v1/forget-requests/{request_id}/report").json()["report"]


def test_too_few_steps_is_rejected_with_leaking_cases_after_recorded_retries(service, tiny_world: World):
    client, rt = service
    payload = file(service, request_body(tiny_world, "p000", params={"steps": 1, "discriminator_steps": 60}))
    assert run_training_job(rt, payload) == "rejected_verification"
    final = client.get(f"/v1/forget-requests/{payload.request_id}").json()
    assert "verification failed in all 2 attempts" in final["error"]
    got = report(client, payload.request_id)
    assert [a["attempt"] for a in got["attempts"]] == [1, 2] and not any(a["passed"] for a in got["attempts"])
    first, second = got["attempts"][0], got["attempts"][1]
    failed = [c["name"] for c in first["verification"]["criteria"] if not c["passed"]]
    assert "leak" in failed
    causes = first["verification"]["causes"]
    assert set(failed) <= set(causes)
    assert CagulConfig.from_dict(second["config"]) == CagulConfig.from_dict(first["config"]).strengthened(causes)
    leak = next(c for c in got["verification"]["criteria"] if c["name"] == "leak")
    assert leak["module"] > leak["threshold"] and leak["reference"] >= 0.5 and not leak["passed"]
    assert got["verification"]["leaking_cases"] and all("question" in c for c in got["verification"]["leaking_cases"])
    events = request_events(client, payload.request_id)
    assert any(f"attempt 2 of 2 after {', '.join(failed)} failed" in (e["message"] or "") for e in events)
    assert client.get("/v1/adapter-set").json()["adapter_ids"] == []
    # The rejected module is on record (checksum, report), but its weights, which still encode the subject, are gone.
    with transaction(rt.sessions) as session:
        adapter_id = ForgetRequestRepository(session).get(payload.request_id).adapter_id
        assert adapter_id is not None
        rejected = AdapterRepository(session).get(adapter_id)
        assert rejected.state == "rejected" and len(rejected.sha256) == 64
    assert not Path(rejected.path).exists()
    assert not list(Path(rt.settings.resolved_artifact_root).rglob("*.safetensors"))


def test_keywords_the_reference_never_says_are_nothing_to_forget(service, tiny_world: World):
    client, rt = service
    body = request_body(tiny_world, "p000")
    for pair in body["qa_pairs"]:
        pair["keyword"] = "zqx 9090"
    payload = file(service, body)
    assert run_training_job(rt, payload) == "nothing_to_forget"
    final = client.get(f"/v1/forget-requests/{payload.request_id}").json()
    assert final["adapter_id"] is None and "nothing to forget" in final["error"]
    assert report(client, payload.request_id)["verification"]["outcome"] == "nothing_to_forget"
    assert client.get(f"/v1/forget-requests/{payload.request_id}/certificate").status_code == 409


def test_the_filed_aliases_reach_the_job(service, tiny_world: World, monkeypatch: pytest.MonkeyPatch):
    from workers.training import flow

    seen = []

    def stop(rt: Runtime, job: Job, reporter: object) -> str:  # instead of training: note what the job works on
        seen.append(job.forget)
        return flow._finish(rt, job, RequestStatus.CANCELLED, "stopped by the test")

    monkeypatch.setattr(flow, "_run", stop)
    payload = file(service, request_body(tiny_world, "p000", aliases=["Kamiro Tale", " K. Tale"]))
    assert run_training_job(service[1], payload) == "cancelled"
    assert [f.aliases for f in seen] == [["Kamiro Tale", "K. Tale"]]
    assert seen[0].subject == tiny_world.person("p000").name and seen[0].qa_pairs


def test_progress_is_stored_sparsely_while_cancellation_is_read_each_second(service, tiny_world: World):
    client, rt = service
    payload = file(service, request_body(tiny_world, "p003"))
    reporter = JobReporter(rt, payload.request_id, payload.job_id)
    for step in range(1, 301):  # far faster than the 5 s between stored events
        reporter.progress("encoder", step, 300, 1.0 / step)
    progress = [e for e in request_events(client, payload.request_id) if e["kind"] == "progress"]
    assert [(e["phase"], e["step"], e["total"]) for e in progress] == [("encoder", 1, 300), ("encoder", 300, 300)]
    assert progress[-1]["loss"] == round(1 / 300, 5) and progress[-1]["eta_seconds"] == 0

    assert client.post(f"/v1/forget-requests/{payload.request_id}/cancel").status_code == 200
    reporter.progress("prefix", 1, 300, 0.5)  # a phase's first step is stored and reads the flag
    assert reporter.should_stop()
    reporter.cancelled = False
    time.sleep(CANCEL_POLL_S * 1.1)
    reporter.progress("prefix", 2, 300, 0.5)  # not stored, but the flag is read again after a second
    assert reporter.should_stop()
    stored = [e["step"] for e in request_events(client, payload.request_id) if e["kind"] == "progress"]
    assert stored == [1, 300, 1]

    rt.settings.progress_event_interval_s = 1.0
    time.sleep(1.05)
    reporter.progress("prefix", 3, 300, 0.4)  # the interval passed: a middle step is stored
    assert [e["step"] for e in request_events(client, payload.request_id) if e["kind"] == "progress"][-1] == 3


def test_protected_person_is_nothing_to_forget(service, tiny_world: World):
    rt = service[1]
    protected = next(p for p in tiny_world.people if p.protected)
    assert run_training_job(rt, file(service, request_body(tiny_world, protected.id))) == "nothing_to_forget"


def test_cancel_during_verification_is_honoured(service, tiny_world: World):
    client, rt = service
    # A few steps: the cancel lands in verification, which runs as for any module, sooner.
    payload = file(service, request_body(tiny_world, "p002", params={"steps": 1, "discriminator_steps": 20}))
    outcome: dict[str, str] = {}
    worker = threading.Thread(target=lambda: outcome.update(status=run_training_job(rt, payload)))
    worker.start()
    url = f"/v1/forget-requests/{payload.request_id}"
    wait_for(lambda: client.get(url).json()["status"] == "verifying", 300, 0.05, "verification to start")
    assert client.post(f"{url}/cancel").status_code == 200
    worker.join(300)
    assert outcome["status"] == "cancelled" and client.get(url).json()["status"] == "cancelled"
    with transaction(rt.sessions) as session:
        assert AdapterRepository(session).active() == []
        current = AdapterSetRepository(session).current()
        assert current is None or list(current.adapter_ids) == []
        assert ForgetRequestRepository(session).get(payload.request_id).adapter_id is None
    assert not list(Path(rt.settings.resolved_artifact_root).glob("*/manifest.json"))


def test_a_worker_with_a_long_host_name_still_finishes_its_job_and_is_audited(
    service, tiny_world: World, monkeypatch: pytest.MonkeyPatch
):
    """The audit actor "worker:<host>:<pid>" outgrew its 64-character column and failed the finished job."""
    client, rt = service
    host = "h" * 63 + "." + "n" * 63 + "." + "o" * 63 + ".example1"  # 200 characters, as DNS allows
    assert len(host) == 200
    monkeypatch.setattr("workers.training.flow.socket.gethostname", lambda: host)
    payload = file(service, request_body(tiny_world, "p000", params={"steps": 1, "discriminator_steps": 20}))
    assert run_training_job(rt, payload) == "rejected_verification"
    with transaction(rt.sessions) as session:
        job = ForgetRequestRepository(session).get_job(payload.job_id)
        assert job.status == "finished" and job.worker.startswith(f"{host}:")
        (event,) = [e for e in AuditRepository(session).page(limit=10, offset=0)[0] if e.action == "adapter.rejected"]
        assert event.actor.startswith("worker:hhhh") and len(event.actor) == 64
        assert event.target == client.get(f"/v1/forget-requests/{payload.request_id}").json()["adapter_id"]
