"""The operator console in a real headless Chromium against the real service: API + Celery worker + PostgreSQL +
Redis on the tiny world. An operator signs in, watches a request filed through the API go `active`, reads its
report, downloads its certificate, rolls it back from the console and `/v1/vqa` answers as before; hostile strings
render as text; a key without `admin` is offered no activation and is refused one.

Screenshots of every page go to `.console-screenshots/` (git-ignored)."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import pytest
from playwright.sync_api import sync_playwright

from core.db import make_engine, make_session_factory, transaction
from core.keys.repository import ApiKeyRepository
from core.processes import api_command, python_module, worker_command
from tests.helpers import ADMIN_TOKEN, request_body, service_settings, settings_env, wait_for
from tests.system.processes import ask, free_port, spawn, stop
from tests.system.processes import ready as _ready
from unlearning.evaluation.metrics.leakage import leaked
from unlearning.world import World

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / ".console-screenshots"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
XSS = "<img src=x onerror=alert(1)>"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture()
def browser_page() -> Iterator[Any]:
    """A page of a fresh Chromium profile; collects dialogs and console messages for the test to check."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y --no-install-recommends chromium (.ci/run does)")
    profile = tempfile.mkdtemp(prefix="lethe-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.dialogs, page.messages, page.outbound, page.blocked = [], [], [], []  # type: ignore[attr-defined]
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
        page.on("console", lambda m: page.messages.append(m.text))  # type: ignore[attr-defined]
        page.on("request", lambda r: _outside(r.url) and page.outbound.append(r.url))  # type: ignore[attr-defined]
        page.on("requestfailed", lambda r: "csp" in (r.failure or "") and page.blocked.append(r.url))  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _outside(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https") and urlparse(url).hostname not in ("127.0.0.1", "localhost")


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/console")
    page.fill("#signin-key", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#view-requests:not([hidden])")
    assert token not in page.url


def test_console_in_chromium(
    tiny_world: World,
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    log_dir: Path,
    browser_page: Any,
):
    page = browser_page
    env = settings_env(service_settings(tiny_world, tmp_path, pg_url, redis_url))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    worker = spawn(python_module(worker_command(f"test-{uuid.uuid4().hex[:6]}@%h")), env, log_dir / "worker.log")
    api = spawn(python_module(api_command(port=port)), env, log_dir / "api.log")
    try:
        client = httpx.Client(base_url=base_url, timeout=60, headers=AUTH)
        wait_for(lambda: _ready(client), 300, 1.0, "the server to be ready")
        with transaction(make_session_factory(make_engine(pg_url))) as session:
            _, reader_token = ApiKeyRepository(session).create("operator", ["forget:read", "forget:write", "vqa"])
        heldout = tiny_world.heldout_views()[0]
        fact = tiny_world.person("p000").facts[0]
        before = ask(client, tiny_world, "p000", heldout, fact.heldout_question)["answer"]

        # Sign in: the key lives in the tab's sessionStorage only, never in a URL or a cookie.
        sign_in(page, base_url, ADMIN_TOKEN)
        assert page.evaluate("sessionStorage.getItem('lethe.apiKey')") == ADMIN_TOKEN
        assert page.context.cookies() == [] and "lethe_" not in page.url
        assert page.inner_text("#whoami") == "bootstrap admin (admin)"

        # A request filed through the API appears in the list and goes to `active` on its detail page.
        created = client.post("/v1/forget-requests", json=request_body(tiny_world, "p000"))
        assert created.status_code == 202, created.text
        request = created.json()
        page.click("#requests-filter button[type=submit]")
        row = page.wait_for_selector(f'tr[data-request="{request["id"]}"]')
        shot(page, "01-requests")
        row.query_selector("a").click()
        page.wait_for_selector("#view-request:not([hidden])")
        page.wait_for_selector('#request-events [data-status="training"]', timeout=180_000)
        page.wait_for_selector("#request-loss polyline", timeout=180_000)  # live progress: a loss curve grows
        shot(page, "02-request-training")
        page.wait_for_selector('#request-facts [data-status="active"]', timeout=900_000)
        criteria = page.wait_for_selector('#report-criteria tr[data-criterion="leak"]', timeout=30_000)
        cells = [c.inner_text() for c in criteria.query_selector_all("td")]
        assert cells[0] == "leak" and cells[4] == "0.0500" and cells[-1] == "passed", cells
        assert ": step " in page.inner_text("#request-progress-text")
        timeline = page.inner_text("#request-events")
        for status in ("validating", "queued", "training", "verifying", "active"):
            assert status in timeline
        shot(page, "03-request-report")
        with page.expect_download() as download:
            page.click("#request-certificate")
        certificate = json.loads(Path(download.value.path()).read_text())["certificate"]
        adapter_id = client.get(f"/v1/forget-requests/{request['id']}").json()["adapter_id"]
        assert certificate["adapter_id"] == adapter_id and certificate["status"] == "active"

        # The module now answers for p000, and the health page shows its gate firing and the worker seen.
        version = client.get("/v1/adapter-set").json()["version"]
        wait_for(lambda: client.get("/v1/adapter-set").json()["served_version"] == version, 10, 0.1, "pickup")
        after = ask(client, tiny_world, "p000", heldout, fact.heldout_question)
        assert not leaked(after["answer"], fact.keyword) and after["adapter_set_version"] == version
        page.click('a[data-nav="health"]')
        fires = page.wait_for_selector(f'#health-fires tr[data-fires="{adapter_id}"]')
        assert int(fires.query_selector_all("td")[1].inner_text()) >= 1
        assert page.inner_text("#health-worker-count") == "1" and "alive" in page.inner_text("#health-workers")
        shot(page, "04-health")

        # Roll back from the console, after a confirmation; /v1/vqa answers as the reference model did.
        page.click('a[data-nav="adapters"]')
        page.wait_for_selector(f'tr[data-adapter="{adapter_id}"] [data-status="active"]')
        shot(page, "05-adapters")
        page.click(f'tr[data-adapter="{adapter_id}"] button[data-action="deactivate"]')
        page.wait_for_selector("#confirm[open]")
        assert adapter_id in page.inner_text("#confirm-text")
        shot(page, "06-adapters-confirm")
        page.click("#confirm-ok")
        page.wait_for_selector(f'tr[data-adapter="{adapter_id}"] [data-status="inactive"]')
        assert client.get(f"/v1/forget-requests/{request['id']}").json()["status"] == "revoked"
        new_version = client.get("/v1/adapter-set").json()["version"]
        wait_for(lambda: client.get("/v1/adapter-set").json()["served_version"] == new_version, 10, 0.1, "rollback")
        again = ask(client, tiny_world, "p000", heldout, fact.heldout_question)
        assert again["answer"] == before and again["adapter_set_version"] == new_version
        page.click('a[data-nav="audit"]')
        page.wait_for_selector("#audit-rows tr")
        audit = page.inner_text("#audit-rows")
        assert "adapter.deactivate" in audit and "forget_request.create" in audit
        shot(page, "07-audit")

        # Hostile strings are text: a subject (never shown: lists carry its keyed label), a probe question the
        # detail page shows among the parameters, and a label search that is echoed back.
        hostile = client.post(
            "/v1/forget-requests",
            json=request_body(tiny_world, "p002", subject=XSS, params={"probe_questions": [XSS]}),
        ).json()
        client.post(f"/v1/forget-requests/{hostile['id']}/cancel")
        page.goto(f"{base_url}/console#/requests/{hostile['id']}")
        page.wait_for_selector("#view-request:not([hidden])")
        # Polled from here: wait_for_function would evaluate a string in the page, which its CSP forbids.
        wait_for(lambda: XSS in page.inner_text("#request-facts"), 30, 0.2, "the hostile parameter as text")
        page.goto(f"{base_url}/console#/requests?label={quote(XSS)}")
        wait_for(lambda: XSS in page.inner_text("#requests-note"), 30, 0.2, "the hostile search echoed as text")
        shot(page, "08-hostile-text")
        assert page.query_selector_all('img[src="x"]') == [] and page.dialogs == []  # type: ignore[attr-defined]
        assert not [m for m in page.messages if "Content Security Policy" in m], page.messages  # type: ignore[attr-defined]

        # A key without `admin`: no activate button, no audit or health page, and the API refuses it anyway.
        page.click("#signout")
        sign_in(page, base_url, reader_token)
        assert page.is_hidden('a[data-nav="audit"]') and page.is_hidden('a[data-nav="health"]')
        page.click('a[data-nav="adapters"]')
        page.wait_for_selector(f'tr[data-adapter="{adapter_id}"] [data-status="inactive"]')
        assert page.query_selector_all("button[data-action]") == []
        shot(page, "09-adapters-without-admin")
        status = page.evaluate(
            """async (id) => (await fetch(`/v1/adapters/${id}/activate`, {method: "POST",
                 headers: {Authorization: `Bearer ${sessionStorage.getItem("lethe.apiKey")}`}})).status""",
            adapter_id,
        )
        assert status == 403
        assert client.get(f"/v1/adapters/{adapter_id}").json()["state"] == "inactive"

        # /docs and /redoc render with nothing but the assets the project ships (the browser reaches no CDN).
        page.goto(f"{base_url}/docs")
        page.wait_for_selector(".swagger-ui .opblock")
        shot(page, "10-docs")
        page.goto(f"{base_url}/redoc")
        page.wait_for_selector('h1:has-text("Lethe")')
        shot(page, "11-redoc")
        # Nothing left for another host: ReDoc's bundle asks for its vendor's logo, which the page's CSP blocks.
        assert set(page.outbound) <= set(page.blocked), page.outbound  # type: ignore[attr-defined]
    finally:
        stop(api)
        stop(worker)
    api_log = (log_dir / "api.log").read_text()
    assert ADMIN_TOKEN not in api_log and reader_token not in api_log  # keys are never logged
