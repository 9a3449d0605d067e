// Lethe operator console: reads the /v1 JSON API with the tab's API key. Every string from the API is put into
// the page as text (textContent or DOM nodes, never parsed as markup); the page's CSP allows no inline script or
// style.
"use strict";

const API = document.body.dataset.api || "";
const KEY = "lethe.apiKey"; // sessionStorage only: gone with the tab, never in a URL or a cookie
const PAGE = 20;
const IN_FLIGHT = new Set(["validating", "queued", "training", "verifying"]);
const $ = (id) => document.getElementById(id);
let me = null; // {id, name, scopes} of the signed-in key
let generation = 0; // bumped on every navigation, so a stale poll stops itself

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(API + path, {
    method: options.method || "GET",
    headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    signOut("The key was refused (unknown or revoked): sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function can(scope) {
  return !!me && (me.scopes.includes("admin") || me.scopes.includes(scope));
}

// ---- building the page from text only ------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = String(text);
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === "boolean") return value ? "yes" : "no";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function row(cells) {
  return el("tr", {}, ...cells.map((c) => el("td", {}, c)));
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function badge(status) {
  return el("span", { class: `badge s-${String(status).replace(/[^a-z_]/g, "")}`, "data-status": status }, status);
}

function flash(message) {
  const node = $("flash");
  node.textContent = message || "";
  node.hidden = !message;
}

function confirmAction(text) {
  // A modal <dialog>: window.confirm would work too, but cannot be styled or tested as part of the page.
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = $("confirm-no").onclick = null;
      dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
    dialog.showModal();
  });
}

function pager(name, offset, total, go) {
  const box = document.querySelector(`[data-pager="${name}"]`);
  const shown = total === 0 ? "none" : `${offset + 1}-${Math.min(offset + PAGE, total)} of ${total}`;
  box.querySelector('[data-page="info"]').textContent = shown;
  const prev = box.querySelector('[data-page="prev"]');
  const next = box.querySelector('[data-page="next"]');
  prev.disabled = offset === 0;
  next.disabled = offset + PAGE >= total;
  prev.onclick = () => go(Math.max(0, offset - PAGE));
  next.onclick = () => go(offset + PAGE);
}

// ---- routing ---------------------------------------------------------------------------------------------------
function route() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts, params: new URLSearchParams(query) };
}

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === view || (view === "request" && link.dataset.nav === "requests"));
  }
}

async function render() {
  const token = ++generation;
  flash("");
  if (!sessionStorage.getItem(KEY) || !me) {
    show("signin");
    return;
  }
  const { parts, params } = route();
  const views = { requests: viewRequests, adapters: viewAdapters, audit: viewAudit, health: viewHealth };
  try {
    if (parts[0] === "requests" && parts[1]) {
      show("request");
      await viewRequest(parts[1], token);
    } else {
      const name = views[parts[0]] ? parts[0] : "requests";
      show(name);
      await views[name](params, token);
    }
  } catch (error) {
    if (token === generation) flash(error.status === 403 ? `Not allowed for this key: ${error.message}` : error.message);
  }
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

// ---- sign-in ---------------------------------------------------------------------------------------------------
async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    me = await api("/v1/me");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    me = null;
    throw error;
  }
  $("whoami").textContent = `${me.name || me.id} (${me.scopes.join(", ")})`;
  $("nav").hidden = false;
  $("signout").hidden = false;
  for (const node of document.querySelectorAll("[data-scope]")) node.hidden = !can(node.dataset.scope);
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  generation++;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("whoami").textContent = "";
  show("signin");
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
}

// ---- forget requests -------------------------------------------------------------------------------------------
async function viewRequests(params, token) {
  const status = params.get("status") || "";
  const label = (params.get("label") || "").trim().toLowerCase();
  const offset = Number(params.get("offset") || 0);
  $("requests-status").value = status;
  $("requests-label").value = label;
  const query = new URLSearchParams({ limit: PAGE, offset });
  if (status) query.set("status", status);
  if (label) query.set("label", label);
  const note = $("requests-note");
  const page = await api(`/v1/forget-requests?${query}`).catch((error) => {
    if (error.status !== 422) throw error;
    note.hidden = false;
    note.textContent = `Not a label prefix: "${label}". ${error.message}`;
    return { items: [], total: 0 };
  });
  if (token !== generation) return;
  if (page.items.length || !label) note.hidden = true;
  if (!page.items.length && label && note.hidden) {
    note.hidden = false;
    note.textContent = `No request has a subject label starting with "${label}".`;
  }
  $("requests-rows").replaceChildren(
    ...page.items.map((r) =>
      el(
        "tr",
        { "data-request": r.id },
        el("td", {}, when(r.created_at)),
        el("td", {}, el("a", { href: `#/requests/${r.id}` }, el("code", {}, r.subject_label.slice(0, 16)))),
        el("td", {}, badge(r.status)),
        el("td", {}, r.method),
        el("td", {}, r.n_images),
        el("td", {}, r.n_qa_pairs),
        el("td", {}, r.adapter_id ? el("code", {}, r.adapter_id.slice(0, 8)) : ""),
      ),
    ),
  );
  pager("requests", offset, page.total, (next) => {
    const q = new URLSearchParams({ offset: next });
    if (status) q.set("status", status);
    if (label) q.set("label", label);
    navigate(`#/requests?${q}`);
  });
}

async function viewRequest(id, token) {
  $("request-id").textContent = id;
  $("request-events").replaceChildren();
  $("request-loss").replaceChildren();
  $("request-report").replaceChildren(el("p", { class: "muted" }, "no report yet"));
  $("request-progress").value = 0;
  $("request-progress-text").textContent = "waiting for progress";
  const events = [];
  let request = null;
  let lastId = 0;
  for (;;) {
    request = await api(`/v1/forget-requests/${id}`);
    let batch;
    do {
      batch = await api(`/v1/forget-requests/${id}/events?after=${lastId}`);
      events.push(...batch);
      if (batch.length) lastId = batch[batch.length - 1].id;
    } while (batch.length === 500);
    if (token !== generation) return;
    showRequest(request, events);
    if (!IN_FLIGHT.has(request.status)) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (token !== generation) return;
  }
  const report = await api(`/v1/forget-requests/${id}/report`);
  if (token === generation) showReport(report.report);
}

function showRequest(request, events) {
  facts($("request-facts"), [
    ["Status", badge(request.status)],
    ["Subject label", el("code", {}, request.subject_label)],
    ["Method", request.method],
    ["Parameters", el("code", {}, JSON.stringify(request.params))],
    ["Photos / QA pairs / aliases", `${request.n_images} / ${request.n_qa_pairs} / ${request.n_aliases}`],
    ["Adapter", request.adapter_id ? el("a", { href: "#/adapters" }, el("code", {}, request.adapter_id)) : "none"],
    ["Error", request.error || ""],
    ["Filed / updated", `${when(request.created_at)} / ${when(request.updated_at)}`],
  ]);
  const cert = $("request-certificate");
  cert.hidden = !request.adapter_id;
  cert.onclick = () => downloadCertificate(request.id);
  const cancel = $("request-cancel");
  cancel.hidden = !can("forget:write") || !IN_FLIGHT.has(request.status) || request.cancel_requested;
  cancel.onclick = async () => {
    if (!(await confirmAction(`Cancel request ${request.id}? Training stops at its next step.`))) return;
    await api(`/v1/forget-requests/${request.id}/cancel`, { method: "POST" }).catch((e) => flash(e.message));
    render();
  };
  $("request-events").replaceChildren(
    ...events
      .filter((e) => e.kind === "status")
      .map((e) =>
        el("li", { "data-event": e.id }, el("time", {}, when(e.created_at)), " ", badge(e.status), " ", e.message || ""),
      ),
  );
  const progress = events.filter((e) => e.kind === "progress");
  const last = progress[progress.length - 1];
  if (last) {
    $("request-progress").max = last.total || 1;
    $("request-progress").value = last.step || 0;
    const eta = last.eta_seconds === null ? "" : `, about ${Math.round(last.eta_seconds)} s left`;
    $("request-progress-text").textContent =
      `${last.phase}: step ${last.step} of ${last.total}, loss ${fmt(last.loss)}${eta}`;
  }
  lossPlot($("request-loss"), progress);
}

function lossPlot(box, progress) {
  const points = progress.filter((e) => typeof e.loss === "number" && e.step !== null);
  if (!points.length) {
    box.replaceChildren(el("p", { class: "muted" }, "no training steps yet"));
    return;
  }
  const W = 640, H = 220, PAD = 40;
  const phases = [...new Set(points.map((p) => p.phase))];
  const maxLoss = Math.max(...points.map((p) => p.loss)) || 1;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "training loss by step" });
  chart.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - 10, y2: H - PAD, class: "axis" }));
  chart.append(svg("line", { x1: PAD, y1: 10, x2: PAD, y2: H - PAD, class: "axis" }));
  chart.append(svg("text", { x: 4, y: 18, class: "tick" }, fmt(maxLoss)));
  chart.append(svg("text", { x: 4, y: H - PAD, class: "tick" }, "0"));
  phases.forEach((phase, i) => {
    const own = points.filter((p) => p.phase === phase);
    const maxStep = Math.max(...own.map((p) => p.total || p.step)) || 1;
    const xy = own.map((p) => {
      const x = PAD + ((W - PAD - 10) * p.step) / maxStep;
      const y = H - PAD - ((H - PAD - 10) * p.loss) / maxLoss;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    chart.append(svg("polyline", { points: xy.join(" "), class: `series series-${i % 4}`, "data-phase": phase }));
    chart.append(svg("text", { x: PAD + 10 + i * 160, y: H - 10, class: `legend series-${i % 4}` }, phase));
  });
  box.replaceChildren(chart);
}

function showReport(report) {
  const box = $("request-report");
  if (!report) {
    box.replaceChildren(el("p", { class: "muted" }, "no report"));
    return;
  }
  const verification = report.verification || {};
  const criteria = verification.criteria || [];
  const head = ["Criterion", "Reference", "Module", "Bound", "Threshold", "Cases", "Passed"];
  const table = el(
    "table",
    { id: "report-criteria" },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el(
      "tbody",
      {},
      ...criteria.map((c) =>
        el(
          "tr",
          { "data-criterion": c.name },
          ...[c.name, fmt(c.reference), fmt(c.module), fmt(c.bound), fmt(c.threshold), fmt(c.cases)].map((v) =>
            el("td", {}, v),
          ),
          el("td", {}, el("span", { class: c.passed ? "pass" : "fail" }, c.passed ? "passed" : "failed")),
        ),
      ),
    ),
  );
  const outcome = verification.outcome || (verification.passed ? "passed" : "not passed");
  const reasons = (verification.reasons || []).map((r) => el("li", {}, r));
  const attempts = (report.attempts || []).map((a) =>
    el("li", {}, `attempt ${a.attempt}: ${a.passed ? "passed" : "failed"}; ${a.strengthened || ""}`),
  );
  box.replaceChildren(
    el("p", {}, "Outcome: ", el("strong", { id: "report-outcome" }, outcome)),
    table,
    reasons.length ? el("ul", { class: "reasons" }, ...reasons) : "",
    attempts.length ? el("ol", { class: "attempts" }, ...attempts) : "",
  );
}

async function downloadCertificate(id) {
  try {
    const signed = await api(`/v1/forget-requests/${id}/certificate`);
    const blob = new Blob([JSON.stringify(signed, null, 2)], { type: "application/json" });
    const link = el("a", { href: URL.createObjectURL(blob), download: `lethe-certificate-${id}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (error) {
    flash(error.message);
  }
}

// ---- adapters --------------------------------------------------------------------------------------------------
async function viewAdapters(params, token) {
  const offset = Number(params.get("offset") || 0);
  const [set, page] = await Promise.all([
    api("/v1/adapter-set"),
    api(`/v1/adapters?limit=${PAGE}&offset=${offset}`),
  ]);
  if (token !== generation) return;
  facts($("adapter-set"), [
    ["Registry version", set.version],
    ["Served version", fmt(set.served_version)],
    ["Ready", fmt(set.ready)],
    ["Active modules", set.adapter_ids.length ? set.adapter_ids.join(", ") : "none"],
  ]);
  $("adapters-rows").replaceChildren(
    ...page.items.map((a) => {
      let action = "";
      if (can("admin") && (a.state === "active" || a.state === "inactive")) {
        const verb = a.state === "active" ? "deactivate" : "activate";
        action = el("button", { type: "button", "data-action": verb, class: verb === "deactivate" ? "danger" : "" }, verb);
        action.addEventListener("click", () => setActive(a, verb));
      }
      return el(
        "tr",
        { "data-adapter": a.id },
        el("td", {}, when(a.created_at)),
        el("td", {}, el("code", {}, a.id)),
        el("td", {}, badge(a.state)),
        el("td", {}, el("a", { href: `#/requests/${a.request_id}` }, el("code", {}, a.request_id.slice(0, 8)))),
        el("td", {}, a.version),
        el("td", {}, a.trainable_params),
        el("td", {}, el("code", {}, a.sha256.slice(0, 12))),
        el("td", {}, action),
      );
    }),
  );
  pager("adapters", offset, page.total, (next) => navigate(`#/adapters?offset=${next}`));
}

async function setActive(adapter, verb) {
  const effect =
    verb === "deactivate"
      ? "The model will answer about this subject again and the request becomes revoked."
      : "The module will be served again.";
  if (!(await confirmAction(`${verb[0].toUpperCase()}${verb.slice(1)} adapter ${adapter.id}? ${effect}`))) return;
  try {
    await api(`/v1/adapters/${adapter.id}/${verb}`, { method: "POST" });
    flash(`Adapter ${adapter.id}: ${verb}d.`);
  } catch (error) {
    flash(error.message);
    return;
  }
  const message = $("flash").textContent;
  await render();
  flash(message);
}

// ---- audit and health ------------------------------------------------------------------------------------------
async function viewAudit(params, token) {
  const offset = Number(params.get("offset") || 0);
  const target = (params.get("target") || "").trim();
  $("audit-target").value = target;
  const query = new URLSearchParams({ limit: PAGE, offset });
  if (target) query.set("target", target);
  const page = await api(`/v1/audit?${query}`);
  if (token !== generation) return;
  $("audit-rows").replaceChildren(
    ...page.items.map((e) =>
      row([e.id, when(e.at), e.actor, e.action, e.target || "", el("code", {}, JSON.stringify(e.detail))]),
    ),
  );
  pager("audit", offset, page.total, (next) => {
    const q = new URLSearchParams({ offset: next });
    if (target) q.set("target", target);
    navigate(`#/audit?${q}`);
  });
}

async function viewHealth(_params, token) {
  const ops = await api("/v1/operations");
  if (token !== generation) return;
  const q = ops.queue;
  facts($("health-facts"), [
    ["Ready", `${fmt(ops.readiness.ready)}: ${ops.readiness.detail}`],
    ["Served set version", fmt(ops.readiness.adapter_set_version)],
    ["Jobs waiting", el("span", { id: "health-waiting" }, q.waiting)],
    ["Jobs running", q.running],
    ["Oldest waiting", q.oldest_waiting_s === null ? "none" : `${q.oldest_waiting_s} s`],
    ["Workers seen", el("span", { id: "health-worker-count" }, ops.workers.length)],
  ]);
  $("health-workers").replaceChildren(
    ...ops.workers.map((w) => row([w.name, when(w.last_heartbeat), w.running_jobs, w.alive ? "alive" : "silent"])),
  );
  $("health-gate").textContent = `${ops.gate.images} image(s) gated; modules that fired:`;
  $("health-fires").replaceChildren(
    ...ops.gate.fires.map((f) => el("tr", { "data-fires": f.adapter_id }, el("td", {}, el("code", {}, f.adapter_id)), el("td", {}, f.fires))),
  );
  setTimeout(() => token === generation && viewHealth(_params, token).catch(() => {}), 5000);
}

// ---- wiring ----------------------------------------------------------------------------------------------------
$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("signin-key");
  const key = input.value.trim();
  input.value = "";
  try {
    await signIn(key);
    $("signin-error").hidden = true;
    if (!location.hash || location.hash === "#/") location.hash = "#/requests";
    else render();
  } catch (error) {
    signOut(error.status === 401 ? "That key is unknown or revoked." : error.message);
  }
});
$("signout").addEventListener("click", () => signOut("Signed out."));
$("requests-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = new URLSearchParams();
  if ($("requests-status").value) q.set("status", $("requests-status").value);
  if ($("requests-label").value.trim()) q.set("label", $("requests-label").value.trim());
  navigate(`#/requests?${q}`);
});
$("audit-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  const target = $("audit-target").value.trim();
  navigate(target ? `#/audit?${new URLSearchParams({ target })}` : "#/audit");
});
window.addEventListener("hashchange", render);

(async () => {
  if (sessionStorage.getItem(KEY)) {
    try {
      await signIn(sessionStorage.getItem(KEY));
    } catch (error) {
      signOut(error.message);
    }
  }
  render();
})();
