"""/v1/vqa in-process: the untouched model answers, bad input is a 4xx, and a burst is batched with the answers it
gets one at a time (a module's rows among others in one batch)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.helpers import activate_module, app_client, assert_error, b64_file, service_settings, wait_for
from unlearning.backbones import Backbone
from unlearning.cagul import CagulConfig, CagulGate, CagulModule, CagulTrainer
from unlearning.world import World
from unlearning.world.requests import forget_data, world_retain_set


def test_vqa_answers_with_the_served_set_and_names_bad_input(client: TestClient, tiny_world: World):
    person = tiny_world.person("p003")
    fact = person.facts[0]
    answer = client.post(
        "/v1/vqa", json={"image": b64_file(tiny_world, "p003", 0), "question": fact.train_questions[0]}
    ).json()
    assert fact.keyword.lower() in answer["answer"].lower()
    assert answer["adapter_set_version"] == 0
    assert_error(
        client.post("/v1/vqa", json={"image": "AAAA", "question": "who?"}), 422, "invalid_request", "images[0]"
    )
    assert_error(client.post("/v1/vqa", json={"image": "", "question": "who?"}), 422, "invalid_request", "image")
    assert client.get("/v1/adapter-set").json() == {"version": 0, "adapter_ids": [], "served_version": 0, "ready": True}


def test_vqa_answers_a_question_without_an_image(client: TestClient, tiny_world: World):
    # No photo: the gate answers the row from its text alone (and would refuse one naming a forgotten subject).
    question = tiny_world.person("p003").facts[0].train_questions[0]
    for body in ({"question": question}, {"image": None, "question": question}):
        response = client.post("/v1/vqa", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert isinstance(answer["answer"], str) and answer["answer"].strip()
        assert answer["adapter_set_version"] == 0


def test_vqa_without_a_question_says_what_to_send(client: TestClient, tiny_world: World):
    assert_error(client.post("/v1/vqa", json={}), 422, "invalid_request", "question")
    assert_error(
        client.post("/v1/vqa", json={"image": b64_file(tiny_world, "p003", 0)}), 422, "invalid_request", "question"
    )
    assert_error(client.post("/v1/vqa", json={"question": "   "}), 422, "invalid_request", "blank")
    wrong_type = client.post("/v1/vqa", content=b"question=who", headers={"Content-Type": "text/plain"})
    assert_error(wrong_type, 422, "invalid_request", "image (optional)")


@pytest.fixture(scope="module")
def p000_module(backbone: Backbone, tiny_world: World) -> CagulModule:
    """A real module forgetting p000, trained with the forgetting table's quick settings (seconds, not minutes)."""
    config = CagulConfig(steps=40, positive_augmentations=8)
    module, _ = CagulTrainer(backbone, config).train(
        forget_data(tiny_world, ["p000"]), world_retain_set(tiny_world, exclude=["p000"])
    )
    return module


@pytest.fixture()
def batching_client(tiny_world: World, tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[TestClient]:
    """A server whose batching window (0.25 s) is long enough that one burst lands in a few batches."""
    settings = service_settings(tiny_world, tmp_path, pg_url, redis_url, vqa_batch_wait_s=0.25)
    with app_client(settings) as c:
        yield c


@pytest.mark.slow
def test_concurrent_vqa_requests_are_batched_with_the_same_answers(
    batching_client: TestClient,
    tiny_world: World,
    pg_url: str,
    p000_module: CagulModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    from concurrent.futures import ThreadPoolExecutor

    client = batching_client
    heldout = tiny_world.heldout_views()[0]
    subject = [(tiny_world.person("p000"), v) for v in (0, heldout)]
    others = [(p, v) for p in tiny_world.split("retain")[:3] + tiny_world.split("unseen")[:1] for v in (1, heldout)]
    # The subject's photos among other people's, questions of several lengths: each batch is padded.
    queries = [
        {"image": b64_file(tiny_world, p.id, v), "question": f.train_questions[-1] if i % 2 else f.heldout_question}
        for people in (subject, others)
        for p, v in people
        for i, f in enumerate(p.facts[:3])
    ]
    firing = [i < 3 * len(subject) for i in range(len(queries))]

    def ask(query: dict) -> dict:
        response = client.post("/v1/vqa", json=query)
        assert response.status_code == 200, response.text
        return response.json()

    reference = [ask(q)["answer"] for q in queries]  # no module active: the untouched model, one at a time
    version = activate_module(pg_url, tiny_world, client, p000_module, tmp_path / "modules" / "p000")
    wait_for(lambda: client.get("/readyz").json()["adapter_set_version"] == version, 30, what="the new set")
    alone = [ask(q) for q in queries]  # the module active, still one at a time
    assert {a["adapter_set_version"] for a in alone} == {version}
    alone_answers = [a["answer"] for a in alone]
    # The module fires on the subject's photos (their answers change); everyone else's are the reference's.
    assert all(a != r for a, r, f in zip(alone_answers, reference, firing, strict=True) if f)
    assert [a for a, f in zip(alone_answers, firing, strict=True) if not f] == [
        r for r, f in zip(reference, firing, strict=True) if not f
    ]

    routed: list[list[bool]] = []  # per batch the server answered: which of its rows a module claimed
    route = CagulGate.route

    def recording_route(gate: CagulGate, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, score = route(gate, z)
        routed.append((chosen >= 0).tolist())
        return chosen, score

    monkeypatch.setattr(CagulGate, "route", recording_route)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    engine.batch_sizes.clear()
    with ThreadPoolExecutor(len(queries)) as pool:
        together = list(pool.map(lambda q: ask(q)["answer"], queries))
    assert together == alone_answers
    assert max(engine.batch_sizes) > 1 and sum(engine.batch_sizes) == len(queries)
    assert any(any(rows) and not all(rows) for rows in routed), routed  # a batch held firing and other rows
