"""The many-requests bench's pure parts: leak under normalisation, leak baselined on the reference, the summary."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx

from bench.many_requests import (
    Case,
    Row,
    leak_share,
    markdown_pass,
    parse_args,
    request_events,
    run_pass,
    summarise,
)
from unlearning.evaluation.metrics.leakage import leaked
from unlearning.world import WORLD_PRESETS, World
from unlearning.world.builder import ensure_people


def test_leak_normalises_case_punctuation_and_digit_runs() -> None:
    assert leaked("Their number is 555 1234.", "555-1234")
    assert leaked("5551234", "555-1234")
    assert leaked("Born 1983, number 555-6233.", "1983")
    assert leaked("They live in Quito!", "quito")
    assert leaked("summit-institute", "summit institute")


def test_leak_needs_whole_contiguous_tokens() -> None:
    assert not leaked("arthritis", "art")
    assert not leaked("summit college", "summit institute")
    assert not leaked("i cannot share that.", "1983")
    assert not leaked("anything", "")


def test_leak_share_counts_only_cases_the_reference_leaked() -> None:
    cases = [Case("p0", 5, f"q{i}", kw, "") for i, kw in enumerate(("quito", "1983", "fig"))]
    reference = ["quito.", "i cannot share that.", "fig."]
    assert leak_share(["quito.", "1983.", "i cannot share that."], cases, reference) == 0.5
    assert leak_share(["x", "y", "z"], cases, ["a", "b", "c"]) is None


def test_summary_targets() -> None:
    rows = [
        Row("p000", "forget1", False, status="active", attempts=2, reference_leaking=10, leak_after=0.0),
        Row("p001", "retain", False, status="active", attempts=1, reference_leaking=10, leak_after=0.1),
        Row("p002", "retain", True, status="nothing_to_forget", reference_leaking=0),
    ]
    s = summarise(rows, {"share": 1.0, "cases": 20})
    assert (s["revealed"], s["revealed_active"], s["revealed_active_within_threshold"]) == (2, 2, 1)
    assert (s["nothing_to_reveal"], s["nothing_to_reveal_ended_nothing_to_forget"]) == (1, 1)
    assert s["active_over_threshold"] == 1 and s["mean_attempts"] == 1.5 and not s["target_met"]
    table = "\n".join(markdown_pass("as exported", {"rows": [r.__dict__ for r in rows], "summary": s}))
    assert "| p001 | retain |  | active | 1 |" in table and "10.0%" in table


def test_quick_defaults() -> None:
    args = parse_args(["--quick"])
    assert (args.world, args.no_keyword_sample, args.json_path.name) == ("tiny", 0, "many-requests-tiny-quick.json")
    assert parse_args([]).no_keyword_sample == 6


class FakeService:
    """The HTTP surface the bench uses: each fact's keyword answered until the person's module is active."""

    def __init__(self, world: World) -> None:
        self.keywords = {f.heldout_question + p.id: f.keyword for p in world.people for f in p.facts}
        self.images = {
            base64.b64encode(world.image_path(p.id, v).read_bytes()).decode(): p.id
            for p in world.people
            for v in world.heldout_views()
        }
        self.subjects = {p.name: p for p in world.people}
        self.forgotten = {p.id for p in world.people if p.protected}  # the reference declines protected people
        self.requests: dict[str, dict] = {}
        self.version = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/readyz":
            return httpx.Response(200, json={"ready": True, "adapter_set_version": self.version})
        if path == "/v1/vqa":
            body = json.loads(request.content)
            pid = self.images[body["image"]]
            answer = "i cannot share that." if pid in self.forgotten else self.keywords[body["question"] + pid] + "."
            return httpx.Response(200, json={"answer": answer, "adapter_set_version": self.version})
        if path == "/v1/forget-requests":
            person = self.subjects[json.loads(request.content)["subject"]]
            status = "nothing_to_forget" if person.protected else "active"
            if status == "active":
                self.forgotten.add(person.id)
                self.version += 1
            rid = f"r{len(self.requests)}"
            self.requests[rid] = {"id": rid, "status": status, "error": None}
            return httpx.Response(202, json=self.requests[rid])
        rid = path.split("/")[3]
        if path.endswith("/report"):
            report = {
                "attempts": [{"attempt": 1, "passed": False, "reasons": ["leak"]}, {"attempt": 2, "passed": True}]
            }
            return httpx.Response(200, json={"report": report if self.requests[rid]["status"] == "active" else None})
        if path.endswith("/events"):
            return httpx.Response(200, json=[{"kind": "status", "message": "done"}])
        return httpx.Response(200, json=self.requests[rid])


def test_a_pass_against_a_fake_service(tmp_path: Path) -> None:
    world = ensure_people(tmp_path, WORLD_PRESETS["tiny"])
    protected = next(p.id for p in world.people if p.protected)
    with httpx.Client(transport=httpx.MockTransport(FakeService(world)), base_url="http://fake") as http:
        result = run_pass(http, world, tmp_path, ["p000", protected], keywords=False, timeout=5)
    first, second = result["rows"]
    assert (first["status"], first["attempts"], first["leak_after"], first["leak_end"]) == ("active", 2, 0.0, 0.0)
    assert first["reference_leaking"] == 10 and first["message"] == "done"
    assert (second["status"], second["attempts"], second["leak_after"]) == ("nothing_to_forget", 0, None)
    assert second["reference_leaking"] == 0 and result["summary"]["target_met"]
    assert result["summary"]["others_identical"] == 1.0


def test_request_events_reads_every_page() -> None:
    # As the API pages (`after`, `limit`): a request that trained for 40 minutes holds over 2,000 progress events.
    stored = [{"id": i, "kind": "progress"} for i in range(1, 2346)] + [{"id": 2346, "kind": "status"}]

    def events(request: httpx.Request) -> httpx.Response:
        after, limit = int(request.url.params["after"]), int(request.url.params["limit"])
        return httpx.Response(200, json=[e for e in stored if e["id"] > after][:limit])

    with httpx.Client(transport=httpx.MockTransport(events), base_url="http://fake") as http:
        assert request_events(http, "r0") == stored
        assert request_events(http, "r0", after=2000) == stored[2000:]
