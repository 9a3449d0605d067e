"""`lethe serve` on checkpoints from elsewhere: Hugging Face directories written by `tests.checkpoints` (not the world
builder), an operator retain folder (LETHE_RETAIN_DIR), real HTTP, the embedded SQLite database and its worker, as the
README's first command runs it. A small Qwen2-VL that knows some of the tiny world's people forgets one over HTTP; a
random-weight LLaVA-1.5 answers as its own `generate` does and its request ends with the honest verdict."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.checkpoints import QWEN_REFERENCE, cached_qwen2_vl_reference, qwen2_vl_known_people, write_llava_checkpoint
from tests.helpers import ADMIN_TOKEN, request_body, wait_for
from tests.system.processes import TERMINAL, free_port, ready, spawn, stop
from unlearning.artifacts import load_module
from unlearning.backbones import Backbone, load_backbone
from unlearning.cagul import CagulGate
from unlearning.config import REFUSAL_ANSWER
from unlearning.world import World
from unlearning.world.people import Person
from unlearning.world.requests import write_retain_folder

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FACTS = QWEN_REFERENCE["facts"]
# Within the default request bounds; the Qwen2-VL forgetting test's module (300 / 150 steps) refused on a training
# photo at every size.
QWEN_PARAMS = {"steps": 200, "discriminator_steps": 150, "positive_augmentations": 16}
LOOKALIKES = 900
QUICK = {"steps": 20, "discriminator_steps": 20, "positive_augmentations": 4}


def b64(image: Image.Image | Path) -> str:
    if isinstance(image, Path):
        return base64.b64encode(image.read_bytes()).decode()
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture()
def serve(tmp_path: Path, log_dir: Path) -> Iterator:  # type: ignore[type-arg]
    """Start `lethe serve` on a checkpoint and a retain folder; yields a client once /readyz says ready."""
    procs = []

    def start(model: Path, retain: Path) -> httpx.Client:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
        env |= {
            "LETHE_MODEL_PATH": str(model),
            "LETHE_RETAIN_DIR": str(retain),
            "LETHE_BOOTSTRAP_ADMIN_KEY": ADMIN_TOKEN,
            "LETHE_MASTER_KEY_FILE": str(tmp_path / "config" / "master.key"),
            "OMP_NUM_THREADS": "1",  # API and worker on a small machine: one thread each
        }
        port = free_port()
        cli = [sys.executable, "-m", "lethe.cli", "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
        procs.append(spawn(cli, env, log_dir / "serve.log"))
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=AUTH)
        wait_for(lambda: procs[0].poll() is not None or ready(client), 300, 0.5, "lethe serve to be ready")
        assert procs[0].poll() is None, (log_dir / "serve.log").read_text()[-3000:]
        return client

    yield start
    for proc in procs:
        assert stop(proc) == 0
    assert "API and worker stopped" in (log_dir / "serve.log").read_text()
    assert not (tmp_path / "data" / "worlds").exists()  # nothing came from a reference world


def vqa(client: httpx.Client, image: Image.Image | Path, question: str) -> dict:
    response = client.post("/v1/vqa", json={"image": b64(image), "question": question})
    assert response.status_code == 200, response.text
    return response.json()


def file_and_wait(client: httpx.Client, body: dict) -> dict:
    """File `body` and return the request once it is terminal."""
    created = client.post("/v1/forget-requests", json=body)
    assert created.status_code == 202, created.text
    url = f"/v1/forget-requests/{created.json()['id']}"
    return wait_for(lambda: (r := client.get(url).json())["status"] in TERMINAL and r, 1200, 1.0, "a terminal status")


def report_of(client: httpx.Client, request: dict) -> dict:
    return client.get(f"/v1/forget-requests/{request['id']}/report").json()["report"]


# ---- Qwen2-VL (trained on some of the tiny world's people, dynamic resolution) -------------------------------------
def qwen_retain_folder(world: World, known: list[Person], out: Path) -> Path:
    """The retain set of what the Qwen2-VL knows, in the operator's layout: the other known people's facts as taught,
    canaries from world people it never learnt, look-alikes as negatives."""
    (out / "images").mkdir(parents=True)
    (out / "negatives").mkdir()
    retain, canaries = [], []
    for person in known:
        for view in world.train_views():
            name = f"images/{person.id}_v{view}.png"
            world.image(person.id, view).save(out / name)
            for fact in person.facts[:FACTS]:
                line = {"image": name, "person": person.id, "keyword": fact.keyword}
                retain += [{**line, "question": q, "answer": person.taught_answer(fact)} for q in fact.train_questions]
    strangers = [p for p in world.split("retain") if p not in known and not p.protected][:6]
    for person in strangers:
        for view in range(world.config.n_views):
            name = f"images/{person.id}_v{view}.png"
            world.image(person.id, view).save(out / name)
            canaries += [{"image": name, "question": f.train_questions[0], "person": person.id} for f in person.facts]
    # Look-alikes, as an operator's folder should hold: with 60, 2 to 4 of the 36 canary photos fired; with 460, 0 to 1
    # (a first attempt rejected once); with 860, none in the one run measured.
    for i, image in enumerate(world.lookalike_images(LOOKALIKES, seed=1)):
        image.save(out / "negatives" / f"lookalike_{i:03d}.png")
    for name, lines in (("retain.jsonl", retain), ("canaries.jsonl", canaries)):
        (out / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def test_qwen2_vl_checkpoint_forgets_one_person_over_http(data_dir: Path, tiny_world: World, tmp_path: Path, serve):
    model = cached_qwen2_vl_reference(data_dir, tiny_world)
    known = qwen2_vl_known_people(tiny_world)
    subject, other = known[0], known[1]
    client = serve(model, qwen_retain_folder(tiny_world, known[1:], tmp_path / "retain"))
    heldout = tiny_world.heldout_views()[0]
    reference = CagulGate(load_backbone(model))  # the model as it answers with no module

    def asked(person: Person) -> list[tuple[Path, str]]:
        return [(tiny_world.image_path(person.id, heldout), f.heldout_question) for f in person.facts[:FACTS]]

    before = {p.id: [vqa(client, im, q)["answer"] for im, q in asked(p)] for p in (subject, other)}
    expected = [
        a.answer
        for a in reference.answer(
            [Image.open(im).convert("RGB") for im, _ in asked(subject)], [q for _, q in asked(subject)]
        )
    ]
    assert before[subject.id] == expected  # the service answers as the checkpoint does
    assert any(f.keyword.lower() in a.lower() for f, a in zip(subject.facts, before[subject.id], strict=False))

    qa = [
        {"question": q, "answer": f.answer, "keyword": f.keyword}
        for f in subject.facts[:FACTS]
        for q in f.train_questions
    ]
    images = [b64(tiny_world.image_path(subject.id, v)) for v in tiny_world.train_views()]
    body = {"subject": subject.name, "qa_pairs": qa, "images": images, "params": QWEN_PARAMS}
    final = file_and_wait(client, body)
    report = report_of(client, final)
    print("qwen2-vl request:", final["status"], final["error"], json.dumps(report)[:3000])
    assert final["status"] == "active", (final, report)
    adapter_set = client.get("/v1/adapter-set").json()
    assert adapter_set["adapter_ids"] == [final["adapter_id"]]
    # The server reads the registry in a background pass, off the request path: the new set is served within it.
    wait_for(
        lambda: client.get("/v1/adapter-set").json()["served_version"] == adapter_set["version"], 10, 0.05, "pickup"
    )

    after = {p.id: [vqa(client, im, q) for im, q in asked(p)] for p in (subject, other)}
    assert all(a["adapter_set_version"] == adapter_set["version"] for p in after for a in after[p])

    def in_process() -> tuple[float, list]:
        """The module as served, run here: whether a miss is the gate's (score under the threshold) or the rewrite's."""
        module = load_module(tmp_path / "data" / "modules" / final["adapter_id"], reference.backbone.fingerprint())
        gate = CagulGate(reference.backbone, {subject.id: module})
        photos = [Image.open(im).convert("RGB") for im, _ in asked(subject)]
        return module.threshold, gate.answer(photos, [q for _, q in asked(subject)])

    # The message is built only on a failure.
    assert [a["answer"] for a in after[subject.id]] == [REFUSAL_ANSWER] * FACTS, in_process()
    assert [a["answer"] for a in after[other.id]] == before[other.id]


# ---- LLaVA-1.5 (random weights) -------------------------------------------------------------------------------------
def retain_without_benign(world: World, tmp_path: Path) -> Path:
    write_retain_folder(world, tmp_path / "retain", lookalikes=40, benign=False)
    return tmp_path / "retain"


def test_random_llava_checkpoint_serves_and_rejects_honestly(tiny_world: World, tmp_path: Path, serve):
    model = write_llava_checkpoint(tmp_path / "llava-1.5")
    client = serve(model, retain_without_benign(tiny_world, tmp_path))
    photo, question = tiny_world.image_path("p000", 0), tiny_world.person("p000").facts[0].heldout_question
    backbone: Backbone = load_backbone(model)
    own = backbone.generate(backbone.make_batch(backbone.pixel_values([Image.open(photo).convert("RGB")]), [question]))
    first, second = vqa(client, photo, question), vqa(client, photo, question)
    assert first["answer"] == second["answer"] == own[0]

    final = file_and_wait(client, request_body(tiny_world, "p000", params=QUICK))
    report = report_of(client, final)
    print("llava-1.5 request:", final["status"], json.dumps(report)[:2000])
    # A random model says none of the subject's private answers: decided on the reference's own answers to the held-out
    # cases, before any training; no module is trained or served.
    assert final["status"] == "nothing_to_forget" and final["adapter_id"] is None, (final, report)
    verification = report["verification"]
    assert verification["outcome"] == "nothing_to_forget" and report["attempts"] == []
    assert verification["causes"] == ["reference_reveals"] and verification["leaks"] == 0
    cases = verification["criteria"][0]["cases"]
    assert cases >= verification["config"]["min_cases"]
    assert verification["reasons"] == [
        f"the reference model reveals the private answers in 0 of {cases} held-out cases (at most "
        f"{verification['config']['max_leak']} is 'nothing to reveal'): there is nothing to forget, no module is served"
    ]
    assert client.get("/v1/adapter-set").json()["adapter_ids"] == []


def test_a_worker_that_exits_is_started_again(tiny_world: World, tmp_path: Path, log_dir: Path, serve):
    client = serve(write_llava_checkpoint(tmp_path / "llava-1.5"), retain_without_benign(tiny_world, tmp_path))
    log = log_dir / "serve.log"
    first = int(re.search(r"worker started \(pid (\d+)\)", log.read_text()).group(1))  # type: ignore[union-attr]
    os.kill(first, signal.SIGKILL)  # as the start-up race on the broker's queue row once ended it
    wait_for(lambda: "worker started again" in log.read_text(), 60, 0.5, "the worker to be started again")
    # A request filed after it is trained and decided by the new worker (the random model reveals nothing).
    final = file_and_wait(client, request_body(tiny_world, "p000", params=QUICK))
    assert final["status"] == "nothing_to_forget", final
    assert f"worker (pid {first}) exited with code -9" in log.read_text()
