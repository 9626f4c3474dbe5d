// The dashboard: plain JS, no build step. Text reaches the DOM through textContent only.
// Live data comes from GET /api/v1/events (Server-Sent Events) read with fetch, so the
// token goes in the Authorization header and never in a URL. Format: docs/dashboard.md.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "edgeplane.token";
const PAGE = 50;
const TASK_STATES = ["pending", "scheduled", "running", "completed", "failed", "skipped",
  "cancelled"];
const KNOWN = new Set([...TASK_STATES, "online", "offline", "draining", "deploying",
  "degraded", "deleting", "active", "paused", "installing", "stopped", "unhealthy", "queued",
  "done", "rolled_back", "open", "closed"]);
/** Completions counted per bucket of the throughput sparkline, over the last 5 minutes. */
const BUCKET_MS = 5000;
const BUCKETS = 60;
/** How often a running task's page reads its usage samples again. */
const METRICS_MS = 5000;

const $ = (id) => document.getElementById(id);
class AuthError extends Error {}
class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; }
}

let token = takeTokenFromFragment() || localStorage.getItem(TOKEN_KEY);
let stream = null;          // the AbortController of the open event stream
let current = null;         // the view shown: { name, arg, refresh(kind, doc), render() }
let reloadTimer = null;
const completions = new Array(BUCKETS).fill(0);
let bucketStart = Date.now();

/** `#token=...` in the URL: remember it, then drop it from the address bar and history. */
function takeTokenFromFragment() {
  const found = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!found) return null;
  localStorage.setItem(TOKEN_KEY, found);
  history.replaceState(null, "", location.pathname + location.search + "#overview");
  return found;
}

// ---------------------------------------------------------------- API
async function api(path, { params, method = "GET", body } = {}) {
  const url = params ? `${API}${path}?${new URLSearchParams(params)}` : `${API}${path}`;
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) throw new AuthError("the token was refused");
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response.status === 204 ? null : response.json();
}

/** A page of a list, newest first: the API pages oldest first, so read from the tail. */
async function newestPage(path, page, params = {}, size = PAGE) {
  const { total } = await api(path, { params: { ...params, limit: 1 } });
  const end = Math.max(0, total - page * size);
  const start = Math.max(0, end - size);
  if (end === 0) return { items: [], total };
  const found = await api(path, { params: { ...params, limit: end - start, offset: start } });
  return { items: found.items.reverse(), total: found.total };
}

// ---------------------------------------------------------------- DOM helpers
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}
function badge(state, count) {
  const cls = KNOWN.has(state) ? `st st-${state}` : "st";
  const node = el("span", cls, count === undefined ? state : `${count} ${state}`);
  node.dataset.state = state;
  return node;
}
function link(href, text) { const a = el("a", null, text); a.href = href; return a; }
function button(text, onClick) {
  const b = el("button", null, text);
  b.type = "button";
  b.addEventListener("click", () => act(b, onClick));
  return b;
}
async function act(b, action) {
  b.disabled = true;
  try { await action(); } catch (err) { failed(err); } finally { b.disabled = false; }
}
function table(headers, rows, ids) {
  if (rows.length === 0) return el("p", "empty", "none");
  const head = el("tr", null, ...headers.map((h) => el("th", null, h)));
  const body = rows.map((cells, i) => {
    const row = el("tr", null, ...cells.map((c) => el("td", null, c)));
    if (ids) row.dataset.id = ids[i];
    return row;
  });
  return el("table", null, el("thead", null, head), el("tbody", null, ...body));
}
function mono(text) { return el("span", "mono", text ?? ""); }
function time(epoch) { return epoch ? new Date(epoch * 1000).toLocaleString() : ""; }
function section(title, ...children) {
  // each part of a title its own element, so the heading's gap parts them
  const parts = [].concat(title).map((t) => (t instanceof Node ? t : el("span", null, t)));
  return el("section", null, el("h2", null, ...parts), ...children);
}
function pager(page, total, go) {
  const pages = Math.max(1, Math.ceil(total / PAGE));
  const prev = button("newer", () => go(page - 1));
  const next = button("older", () => go(page + 1));
  prev.disabled = page <= 0;
  next.disabled = page + 1 >= pages;
  return el("div", "bar", prev, el("span", "dim", `page ${page + 1} of ${pages} (${total})`),
    next);
}
function failed(err) {
  if (err instanceof AuthError) { logout(err.message); return; }
  let box = document.querySelector("#view > .error");
  if (!box) { box = el("p", "error"); $("view").prepend(box); }
  box.textContent = err.message || String(err);
}

// ---------------------------------------------------------------- login
function showLogin(message) {
  $("login").hidden = false;
  $("view").hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("view").replaceChildren();
  $("login-error").textContent = message || "";
  $("status").textContent = "not connected";
}

function logout(message) {
  token = null;
  localStorage.removeItem(TOKEN_KEY);
  if (stream) { stream.abort(); stream = null; }
  if (bus) { bus.close(); bus = null; }
  if (current && current.close) current.close();
  current = null;
  showLogin(message);
}

async function start() {
  try {
    await api("/clusters", { params: { limit: 1 } });
  } catch (err) {
    logout(err instanceof AuthError ? "the token was refused" : err.message);
    return;
  }
  $("login").hidden = true;
  $("view").hidden = false;
  $("nav").hidden = false;
  $("logout").hidden = false;
  connect();
  await route();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  $("token-input").value = "";
  localStorage.setItem(TOKEN_KEY, token);
  start();
});
$("password-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch(`${API}/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ name: $("user-input").value, password: $("password-input").value }),
  });
  $("password-input").value = "";
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    $("login-error").textContent = detail;
    return;
  }
  token = (await response.json()).access_token;
  localStorage.setItem(TOKEN_KEY, token);
  start();
});
$("logout").addEventListener("click", () => logout());

// ---------------------------------------------------------------- live events
/** Read a Server-Sent Events stream with fetch, so the token goes in the Authorization
 *  header and never in a URL: `onEvent(name, data)` per frame (data lines joined by
 *  newlines), `onOpen()` once it answers; resolves when the stream ends. */
async function readEvents(path, signal, onEvent, onOpen) {
  const response = await fetch(`${API}${path}`, {
    headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
    signal, cache: "no-store",
  });
  if (response.status === 401) throw new AuthError("the token was refused or expired");
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      let event = "message";
      const data = [];
      for (const line of buffer.slice(0, cut).split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      buffer = buffer.slice(cut + 2);
      if (data.length) onEvent(event, data.join("\n"));  // none: a keepalive comment
    }
  }
}

// One event stream per browser for the dashboard's tabs that hold the same token. Over
// HTTP/1.1 a browser opens at most 6 connections to a host and a stream holds one for
// good, so with a stream per tab the 7th tab of a dashboard could not even load, and
// from the 4th on the tabs' API calls queued behind the streams (bench/dashboard.py).
// The tab holding a Web Lock reads the stream and hands its events to the other tabs on a
// BroadcastChannel; when it closes, a waiting tab takes the lock and opens the stream,
// and every tab reads its page again (what happened meanwhile was not seen).
// Web Locks need a secure context (https, or localhost): elsewhere each tab reads its own.
let bus = null;             // the BroadcastChannel of the shared stream, when shared

/** The lock's and channel's name: a hash of the token (the tabs of an origin share its
 * storage, where the token is anyway), so tabs of different users never share. */
function streamName() {
  let hash = 0x811c9dc5;
  for (let i = 0; i < token.length; i++) {
    hash = Math.imul(hash ^ token.charCodeAt(i), 0x01000193);
  }
  return `edgeplane.events.${(hash >>> 0).toString(16)}`;
}

/** Follow GET /events, this tab's own or shared (see above). */
function connect() {
  if (stream) stream.abort();
  if (bus) { bus.close(); bus = null; }
  const controller = new AbortController();
  stream = controller;
  if (!navigator.locks || typeof BroadcastChannel !== "function") {
    follow(controller, null, false);
    return;
  }
  const name = streamName();
  const channel = new BroadcastChannel(name);
  bus = channel;
  let leading = false;
  let followed = false;     // this tab has heard a leading tab
  channel.onmessage = ({ data }) => {
    if (stream !== controller || !data) return;
    if (data.ask) {         // a new tab wants the stream's status
      if (leading) channel.postMessage({ status: $("status").textContent });
      return;
    }
    followed = true;
    if (data.status) {
      $("status").textContent = data.status;
      if (data.fresh) reload(0);
    }
    if (data.events) for (const [event, payload] of data.events) dispatch(event, payload);
  };
  channel.postMessage({ ask: true });
  navigator.locks.request(name, { signal: controller.signal }, async () => {
    leading = true;
    await follow(controller, channel, followed);
  }).catch(() => { /* aborted while waiting: logged out, or connecting anew */ });
}

/** Read the stream while this tab keeps it (``controller`` is the current one), passing
 * its events to the other tabs (``channel``: those of one read go in one message); after
 * a drop (overflow, expiry, network) reconnect in 1 s. ``takeover``: the stream was
 * another tab's, so every tab reads its page again. */
async function follow(controller, channel, takeover) {
  let fresh = takeover;
  while (stream === controller && token) {
    let batch = null;
    const pass = (event, data) => {
      dispatch(event, data);
      if (!channel) return;
      if (!batch) {
        batch = [];
        queueMicrotask(() => {
          if (stream === controller) channel.postMessage({ events: batch });
          batch = null;
        });
      }
      batch.push([event, data]);
    };
    try {
      await readEvents("/events", controller.signal, pass,
        () => announce(channel, "live", fresh));
    } catch (err) {
      if (controller.signal.aborted) return;
      if (err instanceof AuthError) { logout(err.message); return; }
    }
    if (stream !== controller || !token) return;
    announce(channel, "reconnecting", false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    fresh = true;
  }
}

function announce(channel, status, fresh) {
  $("status").textContent = status;
  if (fresh) reload(0);
  if (channel) channel.postMessage({ status, fresh });
}

function dispatch(event, data) {
  const doc = JSON.parse(data);
  if (event === "task" && doc.state === "completed") countCompletion();
  if (current && current.refresh) current.refresh(event, doc);
}

function countCompletion() {
  rollBuckets();
  completions[BUCKETS - 1] += 1;
}
function rollBuckets() {
  while (Date.now() - bucketStart >= BUCKET_MS) {
    completions.shift();
    completions.push(0);
    bucketStart += BUCKET_MS;
  }
}

/** Re-read the view's data soon: changes arriving together cost one reload. */
function reload(delay = 300) {
  if (reloadTimer) return;
  reloadTimer = setTimeout(async () => {
    reloadTimer = null;
    if (current) { try { await current.render(); } catch (err) { failed(err); } }
  }, delay);
}

// ---------------------------------------------------------------- routing
const VIEWS = {
  overview, workers, tasks, task, workflows: (a) => runs("workflow", a),
  jobs: (a) => runs("job", a), run, schedules, applications, chutes, chute, store, fl,
};

async function route() {
  if (!token) return;
  const [name, ...rest] = (location.hash.slice(1) || "overview").split("/");
  const make = VIEWS[name] || overview;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#${name}`);
  }
  if (current && current.close) current.close();  // its own streams and timers end with it
  current = make(decodeURIComponent(rest.join("/")));
  try { await current.render(); } catch (err) { failed(err); }
}
window.addEventListener("hashchange", route);

/** Show a view's nodes, unless another view was opened while it was reading. */
function mount(view, ...nodes) {
  if (current === view) $("view").replaceChildren(el("p", "error"), ...nodes);
}

// ---------------------------------------------------------------- overview
function overview() {
  const view = {
    async render() {
      const [clusters, workersPage, failures, counts] = await Promise.all([
        api("/clusters", { params: { limit: 100 } }),
        api("/workers", { params: { limit: 1000 } }).catch((err) => {
          if (err instanceof ApiError && err.status === 404) return null;  // a root
          throw err;
        }),
        api("/tasks", { params: { state: "failed", order: "newest", limit: 10 } }),
        api("/tasks/counts"),  // every state in one read of the store
      ]);
      const online = workersPage ? workersPage.items.filter((w) => w.state !== "offline") : [];
      rollBuckets();
      mount(view, 
        el("div", "cards",
          section("Clusters", el("div", "card-num", clusters.total)),
          section("Workers online", el("div", "card-num", workersPage
            ? `${online.length} / ${workersPage.total}` : "–")),
          section("Tasks by state", el("div", null, ...TASK_STATES.map(
            (s) => badge(s, counts[s] ?? 0))))),
        section("Completed tasks (last 5 minutes, live)", spark(completions)),
        section("Clusters", table(["id", "name", "state", "workers", "active tasks"],
          clusters.items.map((c) => [mono(c.id), c.name, badge(c.state),
            c.aggregate?.workers ?? 0, c.active_tasks]))),
        section("Recent failures", table(["task", "name", "worker", "error", "finished"],
          failures.items.map((t) => [link(`#task/${t.id}`, t.id.slice(0, 12)), t.name,
            mono(t.worker_id), el("span", "wrap", t.error || t.reason || ""),
            time(t.finished_at)]))),
      );
    },
    refresh(kind) { if (kind !== "hello") reload(2000); },
  };
  return view;
}

function short(value) { return Number(value.toPrecision(4)).toLocaleString(); }

function spark(values, label) {
  const max = Math.max(1, ...values);
  const w = 400, h = 60;
  const points = values.map((v, i) =>
    `${(i * w / Math.max(1, values.length - 1)).toFixed(1)},${(h - 2 - v * (h - 4) / max).toFixed(1)}`);
  return el("div", null, svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`,
    preserveAspectRatio: "none" }, svg("polyline", { points: points.join(" ") })),
    el("span", "dim", label ?? `max ${max} per ${BUCKET_MS / 1000} s`));
}

// ---------------------------------------------------------------- workers
function workers() {
  let page = 0;
  const view = {
    async render() {
      let found;
      try {
        found = await api("/workers", { params: { limit: PAGE, offset: page * PAGE } });
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) throw err;
        mount(view, section("Workers", el("p", "note", "workers are listed by each cluster's manager")));
        return;
      }
      mount(view, section(["Workers", el("span", "total", `(${found.total})`)],
        pager(page, found.total, (p) => { page = p; view.render(); }),
        table(["id", "cluster", "state", "runtimes", "cpus", "memory MB", "cpu %",
          "running tasks", "seen", ""],
        found.items.map((w) => [mono(w.id), mono(w.cluster_id), badge(w.state),
          el("span", null, ...(w.capabilities?.runtimes || []).map((r) => el("span", "chip", r))),
          w.capabilities?.cpus ?? "", w.capabilities?.memory_mb ?? "",
          (w.usage?.cpu_percent ?? 0).toFixed(0),
          link(`#tasks/state=running&worker=${encodeURIComponent(w.id)}`, w.active_tasks),
          time(w.last_seen), drainButton(w)]), found.items.map((w) => w.id))));
    },
    refresh(kind) { if (kind === "worker") reload(); },
  };
  return view;
}

function drainButton(w) {
  const draining = w.state === "draining";
  const b = button(draining ? "undrain" : "drain", async () => {
    await api(`/workers/${encodeURIComponent(w.id)}/${draining ? "undrain" : "drain"}`,
      { method: "POST" });
    reload(0);
  });
  b.dataset.action = draining ? "undrain" : "drain";
  return b;
}

// ---------------------------------------------------------------- tasks
/** The tasks page: the API filters (state, name prefix, worker, workflow) and pages the
 *  whole store, newest first, by cursor; nothing is filtered here. */
function tasks(arg) {
  const initial = new URLSearchParams(arg || "");
  const filters = { state: initial.get("state") || "", workflow_id: initial.get("workflow") || "",
    name: initial.get("name") || "", worker_id: initial.get("worker") || "" };
  let page = 0;
  let cursors = [null];  // cursors[i]: where page i starts (null: the newest task)
  const stateSelect = el("select", null, el("option", null, ""),
    ...TASK_STATES.map((s) => el("option", null, s)));
  stateSelect.id = "filter-state";
  stateSelect.value = filters.state;
  const placeholders = { workflow_id: "workflow id", name: "name starts with",
    worker_id: "worker id" };
  const inputs = Object.fromEntries(Object.keys(placeholders).map((k) => {
    const input = el("input");
    input.placeholder = placeholders[k];
    input.value = filters[k];
    input.id = `filter-${k.replace("_id", "")}`;
    return [k, input];
  }));
  const apply = el("button", null, "filter");
  apply.id = "filter-apply";
  const form = el("form", "bar", stateSelect, inputs.name, inputs.worker_id, inputs.workflow_id,
    apply);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    filters.state = stateSelect.value;
    for (const k of Object.keys(inputs)) filters[k] = inputs[k].value.trim();
    page = 0;
    cursors = [null];
    view.render().catch(failed);
  });
  const list = el("div");
  const go = (p) => { page = p; view.render().catch(failed); };
  const view = {
    async render() {
      const params = { order: "newest", limit: PAGE };
      for (const [k, v] of Object.entries(filters)) if (v) params[k] = v;
      if (cursors[page]) params.cursor = cursors[page];
      const found = await api("/tasks", { params });
      cursors[page + 1] = found.next;
      const nav = pager(page, found.total, go);
      nav.querySelectorAll("button")[1].disabled = !found.next;
      list.replaceChildren(nav,
        table(["id", "name", "runtime", "state", "worker", "attempt", "created"],
          found.items.map((t) => [link(`#task/${t.id}`, t.id.slice(0, 12)), t.name, t.runtime,
            badge(t.state), mono(t.worker_id), t.attempt, time(t.created_at)]),
          found.items.map((t) => t.id)));
      list.dataset.total = found.total;
      if (!list.isConnected) {
        mount(view, submitForm(), section("Tasks", form, list));
      }
    },
    refresh(kind, doc) {
      if (kind !== "task") return;
      const row = list.querySelector(`tr[data-id="${CSS.escape(doc.id)}"]`);
      if (row) row.cells[3].replaceChildren(badge(doc.state));
      else if (page === 0) reload(1000);  // perhaps a new task for this page: at most 1/s
    },
  };
  return view;
}

function submitForm() {
  const name = el("input"); name.id = "submit-name"; name.placeholder = "name";
  const runtime = el("select", null, ...["host", "wasm", "container"].map(
    (r) => el("option", null, r)));
  runtime.id = "submit-runtime";
  const command = el("input", "wide"); command.id = "submit-command";
  command.placeholder = 'command: echo hello, or ["sh", "-c", "echo $HOME"]';
  const image = el("input"); image.id = "submit-image";
  image.placeholder = "image (container) or artifact (wasm)";
  const go = el("button", null, "submit"); go.id = "submit-task";
  const result = el("span", "dim");
  const form = el("form", "bar", name, runtime, command, image, go, result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), runtime: runtime.value, start: true };
    const text = command.value.trim();
    if (text) {  // words, or a JSON array when an argument holds spaces
      try {
        body.command = text.startsWith("[") ? JSON.parse(text) : text.split(/\s+/);
      } catch (err) { failed(new Error(`command: ${err.message}`)); return; }
    }
    if (image.value.trim()) {
      if (runtime.value === "wasm") body.artifact = image.value.trim();
      else body.image = image.value.trim();
    }
    go.disabled = true;
    try {
      const created = await api("/tasks", { method: "POST", body });
      result.replaceChildren("submitted ", link(`#task/${created.id}`, created.id));
      result.dataset.taskId = created.id;
    } catch (err) { failed(err); } finally { go.disabled = false; }
  });
  return section("Submit a task", form);
}

function task(id) {
  const path = `/tasks/${encodeURIComponent(id)}`;
  const view = {
    async render() {
      const [t, results, logs] = await Promise.all([
        api(path), api(`${path}/results`).catch(() => null), api(`${path}/logs`).catch(() => null),
      ]);
      const actions = el("div", "bar");
      if (!t.started) actions.append(button("start", () => api(`${path}/start`, { method: "POST" })));
      if (!["completed", "failed", "skipped", "cancelled"].includes(t.state)) {
        actions.append(button("stop", () => api(`${path}/stop`, { method: "POST" })));
      } else if (!t.workflow_id && !t.job_id) {  // a run's step is rerun with its run
        const again = button("retry", async () => {
          const copy = await api(`${path}/retry`, { method: "POST" });
          location.hash = `#task/${copy.id}`;
        });
        again.dataset.action = "retry";
        actions.append(again);
      }
      const state = badge(t.state);
      state.id = "task-state";
      mount(view, 
        section(["Task", mono(t.id), state], actions, table(["field", "value"], [
          ["name", t.name], ["runtime", t.runtime], ["worker", mono(t.worker_id)],
          ["cluster", mono(t.cluster_id)], ["attempt", t.attempt],
          ["endpoints", mono((t.endpoints || [])
            .map((e) => `${e.address}:${e.host_port}->${e.port}/${e.protocol}`).join(" "))],
          ["workflow", t.workflow_id ? link(`#run/${t.workflow_id}`, t.workflow_id) : ""],
          ["job", t.job_id ? link(`#run/${t.job_id}`, t.job_id) : ""],
          ["retry of", t.retry_of ? link(`#task/${t.retry_of}`, t.retry_of) : ""],
          ["created", time(t.created_at)], ["finished", time(t.finished_at)],
          ["reason", t.reason || ""], ["error", el("span", "wrap", t.error || "")],
        ])),
        section("Results", el("pre", null, JSON.stringify(results ? results.results : null,
          null, 2))),
        section("Logs", el("pre", null, logs ? (logs.stdout || "") + (logs.stderr || "") : "")),
        await metrics(`${path}/metrics`),
      );
      view.ended = ["completed", "failed", "skipped", "cancelled"].includes(t.state);
      if (!view.ended) keepMetrics(view, `${path}/metrics`);
    },
    refresh(kind, doc) { if (kind === "task" && doc.id === id) reload(0); },
    close() { clearTimeout(view.metricsTimer); },
  };
  return view;
}

/** Read a running task's (or chute service's) samples again every METRICS_MS while its
 * page is shown (they come on no stream: one small bounded series, only while someone
 * looks at it). `path`: the series' path, or a function giving it (a chute's service
 * can be changed on its page). */
function keepMetrics(view, path) {
  if (view.metricsTimer) return;
  view.metricsTimer = setTimeout(async () => {
    view.metricsTimer = null;
    if (current !== view || view.ended) return;
    const fresh = await metrics(typeof path === "function" ? path() : path);
    const shown = $("metrics");
    if (current === view && shown) shown.replaceWith(fresh);
    keepMetrics(view, path);
  }, METRICS_MS);
}

/** A chart per value of a task's or chute service's usage samples (docs/metrics.md). */
async function metrics(path) {
  let samples = [];
  try { samples = (await api(path)).samples || []; } catch (_) { /* none to show */ }
  const charts = [...new Set(samples.flatMap((s) => Object.keys(s.values)))].sort().map((k) => {
    const values = samples.map((s) => s.values[k] ?? 0);
    const box = el("div", "metric", el("span", "dim", k),
      spark(values, `last ${short(values[values.length - 1])}, max ${short(Math.max(...values))}`));
    box.dataset.metric = k;
    return box;
  });
  const found = section("Metrics", ...(charts.length ? charts
    : [el("p", "empty", "no samples (the first comes one monitoring interval after the start)")]));
  found.id = "metrics";
  return found;
}

// ---------------------------------------------------------------- workflows and jobs
function runs(kind) {
  let page = 0;
  const path = kind === "job" ? "/jobs" : "/workflows";
  const view = {
    async render() {
      const found = await newestPage(path, page);
      mount(view, section([kind === "job" ? "Jobs" : "Workflows", el("span", "total",
        `(${found.total})`)], pager(page, found.total, (p) => { page = p; view.render(); }),
      table(["id", "name", "state", "tasks", "created", "finished", "reason"],
        found.items.map((w) => [link(`#run/${w.id}`, w.id.slice(0, 12)), w.name, badge(w.state),
          w.task_ids.length, time(w.created_at), time(w.finished_at), w.reason || ""]),
        found.items.map((w) => w.id))));
    },
    refresh(k) { if (k === "workflow") reload(1000); },
  };
  return view;
}

function run(id) {
  const nodes = new Map();  // task id → its SVG group
  const view = {
    async render() {
      let w;
      try { w = await api(`/workflows/${encodeURIComponent(id)}`); } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) throw err;
        w = await api(`/jobs/${encodeURIComponent(id)}`);
      }
      const state = badge(w.state);
      state.id = "run-state";
      const actions = el("div", "bar");
      if (!["completed", "failed", "cancelled"].includes(w.state)) {
        actions.append(button("stop", () => api(`/${w.kind === "job" ? "jobs" : "workflows"}/${
          encodeURIComponent(id)}/stop`, { method: "POST" })));
      }
      mount(view, section([w.kind === "job" ? "Job" : "Workflow", mono(w.id), w.name, state], actions,
        dag(w.tasks, nodes)));
    },
    refresh(kind, doc) {
      if (kind === "workflow" && doc.id === id) {
        const state = $("run-state");
        if (state) state.replaceWith(Object.assign(badge(doc.state), { id: "run-state" }));
      } else if (kind === "task" && nodes.has(doc.id)) {
        const g = nodes.get(doc.id);
        g.setAttribute("class", `node st-${doc.state}`);
        g.dataset.state = doc.state;
        g.querySelector("title").textContent = `${doc.name}: ${doc.state}`;
      }
    },
  };
  return view;
}

/** The DAG as layered SVG: a task's layer is the longest path to it from a root. */
function dag(items, nodes) {
  const byId = new Map(items.map((t) => [t.id, t]));
  const layer = new Map();
  const depth = (t, seen = new Set()) => {
    if (layer.has(t.id)) return layer.get(t.id);
    if (seen.has(t.id)) return 0;  // a cycle cannot be stored, but never loop on one
    seen.add(t.id);
    const parents = (t.depends_on || []).map((d) => byId.get(d)).filter(Boolean);
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depth(p, seen))) : 0;
    layer.set(t.id, d);
    return d;
  };
  items.forEach((t) => depth(t));
  const columns = [];
  for (const t of items) (columns[layer.get(t.id)] ||= []).push(t);
  const W = 150, H = 34, GX = 50, GY = 16;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((t, y) => pos.set(t.id,
    { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + columns.length * (W + GX);
  const height = 20 + Math.max(1, ...columns.map((c) => c.length)) * (H + GY);
  const edges = [];
  for (const t of items) {
    for (const d of t.depends_on || []) {
      const a = pos.get(d), b = pos.get(t.id);
      if (a && b) edges.push(svg("line", { x1: a.x + W, y1: a.y + H / 2, x2: b.x, y2: b.y + H / 2 }));
    }
  }
  const groups = items.map((t) => {
    const p = pos.get(t.id);
    const g = svg("g", { class: `node st-${t.state}`, transform: `translate(${p.x},${p.y})` },
      svg("title", {}, `${t.name}: ${t.state}`),
      svg("rect", { width: W, height: H }),
      svg("text", { x: 8, y: H / 2 + 4 }, (t.name || t.id).slice(0, 20)));
    g.dataset.id = t.id;
    g.dataset.state = t.state;
    g.addEventListener("click", () => { location.hash = `#task/${t.id}`; });
    nodes.set(t.id, g);
    return g;
  });
  return svg("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}` },
    ...edges, ...groups);
}

// ---------------------------------------------------------------- schedules
function schedules() {
  let page = 0;
  const view = {
    async render() {
      const found = await newestPage("/schedules", page);
      mount(view, section(["Schedules", el("span", "total", `(${found.total})`)],
        pager(page, found.total, (p) => { page = p; view.render(); }),
        table(["id", "name", "kind", "cron", "timezone", "catch up", "state", "next run", "runs",
          ""],
        found.items.map((s) => [mono(s.id), s.name, s.kind, mono(s.cron), s.timezone,
          s.catch_up, badge(s.paused ? "paused" : "active"),
          s.paused ? "" : time(s.next_run), s.runs,
          el("span", null, pauseButton(s), button("delete", async () => {
            if (!confirm(`Delete schedule ${s.name || s.id}?`)) return;
            await api(`/schedules/${encodeURIComponent(s.id)}`, { method: "DELETE" });
            reload(0);
          }))]), found.items.map((s) => s.id))));
    },
    refresh(kind, doc) {
      if (kind === "schedule" || (kind === "deleted" && doc.kind === "schedule")) reload();
    },
  };
  return view;
}

function pauseButton(s) {
  const verb = s.paused ? "resume" : "pause";
  const b = button(verb, async () => {
    await api(`/schedules/${encodeURIComponent(s.id)}/${verb}`, { method: "POST" });
    reload(0);
  });
  b.dataset.action = verb;
  return b;
}

// ---------------------------------------------------------------- applications
function applications() {
  let page = 0;
  const view = {
    async render() {
      const found = await newestPage("/applications", page);
      const rows = [];
      for (const a of found.items) {
        for (const s of a.services) {
          rows.push([a.name, badge(a.state), s.name, `${s.running} / ${s.replicas}`,
            el("span", null, ...s.instances.map((i) => el("span", "chip",
              `${i.state} ${i.cluster_id || ""}${i.worker_id ? "/" + i.worker_id : ""}` +
              (i.endpoints || []).map((e) => ` ${e.address}:${e.host_port}`).join(""))))]);
        }
      }
      mount(view, section(["Applications", el("span", "total", `(${found.total})`)],
        pager(page, found.total, (p) => { page = p; view.render(); }),
        table(["application", "state", "service", "running / replicas", "instances"], rows)));
    },
    refresh(kind, doc) {
      if (kind === "application" || (kind === "deleted" && doc.kind === "application")) reload();
    },
  };
  return view;
}

// ---------------------------------------------------------------- chutes
const chutePath = (worker, name = "") => `/workers/${encodeURIComponent(worker)}/chutes` +
  (name ? `/${encodeURIComponent(name)}` : "");
const ENDED = new Set(["done", "failed", "rolled_back"]);

/** Follow a chute change's steps on its stream into `box` until it ends; its end state. */
async function followChange(worker, changeId, box, signal) {
  let last = null;
  box.dataset.change = changeId;
  await readEvents(`/workers/${encodeURIComponent(worker)}/changes/${
    encodeURIComponent(changeId)}/stream`, signal, (event, data) => {
    const doc = JSON.parse(data);
    if (event === "error") throw new Error(doc.detail);
    last = doc;
    const done = (doc.steps || []).filter((s) => s.state === "done").length;
    box.replaceChildren(`${doc.kind} ${doc.chute}: `, badge(doc.state),
      ` ${done} / ${(doc.steps || []).length} steps`, doc.error ? ` (${doc.error})` : "");
    box.dataset.state = doc.state;
  });
  return last ? last.state : null;
}

/** A button that calls a chute route (202 with a change) and shows the change to its end. */
function changeButton(text, worker, path, method, box, after) {
  const b = button(text, async () => {
    if (method === "DELETE" && !confirm(`Delete chute ${path.split("/").pop()}?`)) return;
    const { change_id: changeId } = await api(path, { method });
    await followChange(worker, changeId, box);
    after();
  });
  b.dataset.action = text;
  return b;
}

function chuteActions(worker, c, box, after) {
  const path = chutePath(worker, c.name);
  return el("span", null, ...["start", "stop", "restart"].map((verb) =>
    changeButton(verb, worker, `${path}/${verb}`, "POST", box, after)),
  changeButton("delete", worker, path, "DELETE", box, after));
}

function services(c) {
  return el("span", null, ...(c.services || []).map((s) => el("span", "chip",
    `${s.name} ${s.state}${s.state === "running" && s.healthy === false ? " unhealthy" : ""}` +
    (s.address ? ` ${s.address}` : "") +
    (s.ports || []).map((p) => ` ${p.host}→${p.chute}/${p.protocol || "tcp"}`).join(""))));
}
const sourceOf = (c) => (c.source && c.source.store ? c.source.store : "");

/** Chutes of each worker of the page: live ones from the worker, others as last reported
 *  (stale). Read again when a worker's state or chute report changes on the stream. */
function chutes() {
  let page = 0;
  const seen = new Map();  // worker id → what of it the page shows (state, chute report)
  const mark = (w) => `${w.state}|${w.chutes?.stream}|${w.chutes?.seq}`;
  const progress = el("p", "dim");
  progress.id = "chute-change";
  const view = {
    async render() {
      const found = await api("/workers", { params: { limit: PAGE, offset: page * PAGE } });
      const lists = await Promise.all(found.items.map((w) =>
        api(chutePath(w.id)).catch((err) => err)));
      const parts = found.items.map((w, i) => {
        seen.set(w.id, mark(w));
        const list = lists[i];
        const title = [mono(w.id), badge(w.state)];
        if (list instanceof ApiError && list.status === 501) return null;  // serves no chutes
        if (list instanceof Error) return section(title, el("p", "error", list.message));
        const stale = list.find((c) => c.stale);
        const part = section(title, stale ? el("p", "note stale",
          `cannot be reached: its chutes as last reported at ${time(stale.reported_at)}; ` +
          `last contact ${time(stale.last_contact)}`) : null,
        table(["chute", "state", "version", "services", "store", ""], list.map((c) => [
          link(`#chute/${encodeURIComponent(w.id)}/${encodeURIComponent(c.name)}`, c.name),
          badge(c.state), c.version, services(c), sourceOf(c),
          c.stale ? "" : chuteActions(w.id, c, progress, () => reload(0))]),
        list.map((c) => `${w.id}/${c.name}`)));
        part.dataset.worker = w.id;
        return part;
      }).filter(Boolean);
      mount(view, section(["Chutes", el("span", "total", `(${found.total} workers)`)],
        pager(page, found.total, (p) => { page = p; view.render().catch(failed); }), progress),
      ...(parts.length ? parts : [el("p", "empty", "no worker on this page serves chutes")]));
    },
    refresh(kind, doc) {
      if (kind === "worker" && seen.has(doc.id) && seen.get(doc.id) !== mark(doc)) reload(1000);
    },
  };
  return view;
}

/** A chute's detail and its logs, followed live until the page is left. */
function chute(arg) {
  const cut = arg.lastIndexOf("/");
  const worker = arg.slice(0, cut), name = arg.slice(cut + 1);
  const logs = el("pre");
  logs.id = "chute-logs";
  const progress = el("p", "dim");
  progress.id = "chute-change";
  let following = null;  // { service, controller }
  const follow = (service) => {
    if (following && following.service === service) return;
    if (following) following.controller.abort();
    following = { service, controller: new AbortController() };
    const { signal } = following.controller;
    logs.replaceChildren();
    const add = (text) => { logs.append(text); logs.scrollTop = logs.scrollHeight; };
    const params = new URLSearchParams({ follow: "true", ...(service ? { service } : {}) });
    readEvents(`${chutePath(worker, name)}/logs?${params}`, signal, (event, data) => {
      if (event === "log") add(data);
      else if (event === "gap") add(`\n[${JSON.parse(data).lost} chunks lost: reading too slowly]\n`);
      else if (event === "end") add(`\n[${JSON.parse(data).reason}]\n`);
    }).catch((err) => { if (!signal.aborted) add(`\n[${err.message}]\n`); });
  };
  const view = {
    async render() {
      const c = await api(chutePath(worker, name));
      const state = badge(c.state);
      state.id = "chute-state";
      const pick = el("select", null, ...(c.services || []).map((s) => el("option", null, s.name)));
      pick.value = following ? following.service : pick.value;
      // the picked service's usage samples, kept by the manager (shown when stale too)
      view.usage = () => `${chutePath(worker, name)}/metrics${pick.value
        ? `?${new URLSearchParams({ service: pick.value })}` : ""}`;
      pick.addEventListener("change", async () => {
        follow(pick.value);
        const fresh = await metrics(view.usage());
        const shown = $("metrics");
        if (current === view && shown) shown.replaceWith(fresh);
      });
      const usage = await metrics(view.usage());
      mount(view, section(["Chute", name, "on", mono(worker), state],
        c.stale ? el("p", "note stale", `cannot be reached: as last reported at ${
          time(c.reported_at)}; last contact ${time(c.last_contact)}`) : null,
        el("div", "bar", c.stale ? null : chuteActions(worker, c, progress, () => reload(0)),
          progress),
        table(["field", "value"], [["version", c.version], ["store", sourceOf(c)],
          ["store digest", mono(c.source?.digest || "")], ["last change", mono(c.change_id)],
          ["web", c.web ? `${c.web.service}:${c.web.port}` : ""]]),
        table(["service", "state", "healthy", "address", "ports", "restarts"],
          (c.services || []).map((s) => [s.name, badge(s.state), String(s.healthy ?? ""),
            mono(s.address || ""), mono((s.ports || []).map((p) =>
              `${p.host}→${p.chute}/${p.protocol || "tcp"}`).join(" ")), s.health_restarts ?? ""]))),
      section(["Logs", pick], logs), usage);
      if (!c.stale && c.services && c.services.length) follow(pick.value);
      keepMetrics(view, () => view.usage());
    },
    refresh(kind, doc) { if (kind === "worker" && doc.id === worker) reload(1000); },
    close() {
      if (following) following.controller.abort();
      clearTimeout(view.metricsTimer);
    },
  };
  return view;
}

// ---------------------------------------------------------------- chute store
/** The store's chutes; `#store/NAME`: its versions and an install on a worker. */
function store(name) {
  let page = 0;
  const view = {
    async render() {
      const found = await api("/store/chutes", { params: { limit: PAGE, offset: page * PAGE } });
      const parts = [section(["Chute store", el("span", "total", `(${found.total})`)],
        pager(page, found.total, (p) => { page = p; view.render().catch(failed); }),
        table(["chute", "project", "latest", "versions", "description", "updated"],
          found.items.map((c) => [link(`#store/${encodeURIComponent(c.name)}`, c.name), c.project,
            c.latest, c.versions, el("span", "wrap", c.description || ""), time(c.updated_at)]),
          found.items.map((c) => c.name)))];
      if (name) parts.push(await storeChute(name));
      mount(view, ...parts);
    },
  };
  return view;
}

async function storeChute(name) {
  const [c, online] = await Promise.all([
    api(`/store/chutes/${encodeURIComponent(name)}`),
    api("/workers", { params: { limit: 1000 } }).catch(() => ({ items: [] })),
  ]);
  const version = el("select", null, ...c.versions.map((v) => el("option", null, v.version)));
  version.id = "install-version";
  const worker = el("select", null, ...online.items.filter((w) => w.state === "online")
    .map((w) => el("option", null, w.id)));
  worker.id = "install-worker";
  const progress = el("span", "dim");
  progress.id = "install-change";
  const go = button("install on worker", async () => {
    const ref = `${name}@${version.value}`;
    const { change_id: changeId } = await api(chutePath(worker.value), { method: "POST",
      body: { store: ref } });
    const ended = await followChange(worker.value, changeId, progress);
    if (ended === "done") {
      progress.append(" ", link(`#chute/${encodeURIComponent(worker.value)}/${
        encodeURIComponent(name)}`, "open it"));
    }
  });
  go.id = "install";
  return section(["Chute", c.name, el("span", "total", `latest ${c.latest}`)],
    el("p", "wrap", c.description || ""),
    table(["version", "digest", "published", "by"], c.versions.map((v) => [v.version,
      mono(v.digest), time(v.published_at), v.published_by || ""]), c.versions.map((v) => v.version)),
    el("div", "bar", version, worker, go, progress));
}

// ---------------------------------------------------------------- federated learning
const FL_POLL_MS = 2000;

/** Experiments (no events on the stream for them: read again every 2 s while shown and
 *  one is running); `#fl/ID`: its rounds and the accuracy and loss chart. */
function fl(id) {
  let page = 0;
  let timer = null;
  const view = {
    async render() {
      clearTimeout(timer);
      const found = id ? null : await newestPage("/fl/experiments", page);
      const one = id ? await api(`/fl/experiments/${encodeURIComponent(id)}`) : null;
      const running = (one ? [one] : found.items).some((e) => e.state === "running");
      if (one) mount(view, ...experiment(one));
      else {
        mount(view, section(["Experiments", el("span", "total", `(${found.total})`)],
          pager(page, found.total, (p) => { page = p; view.render().catch(failed); }),
          table(["id", "name", "state", "round", "model", "accuracy", "loss", "created"],
            found.items.map((e) => {
              const m = lastMetrics(e);
              return [link(`#fl/${e.id}`, e.id.slice(0, 12)), e.name, badge(e.state),
                `${e.round} / ${e.spec.rounds}`, `v${e.model_version}`, fixed(m.accuracy),
                fixed(m.loss), time(e.created_at)];
            }), found.items.map((e) => e.id))));
      }
      if (running && current === view) timer = setTimeout(() => reload(0), FL_POLL_MS);
    },
    close() { clearTimeout(timer); },
  };
  return view;
}

const fixed = (v) => (typeof v === "number" ? v.toFixed(3) : "");
/** The metrics of each closed round (its last attempt), in round order. */
function closedRounds(e) {
  const byRound = new Map();
  for (const r of e.rounds) if (r.metrics && Object.keys(r.metrics).length) byRound.set(r.round, r);
  return [...byRound.values()].sort((a, b) => a.round - b.round);
}
function lastMetrics(e) { const rounds = closedRounds(e); return rounds.length ? rounds.at(-1).metrics : {}; }

function experiment(e) {
  const state = badge(e.state);
  state.id = "fl-state";
  const actions = el("div", "bar");
  if (e.state === "running") {
    actions.append(button("stop", async () => {
      await api(`/fl/experiments/${encodeURIComponent(e.id)}/stop`, { method: "POST" });
      reload(0);
    }));
  }
  return [section(["Experiment", e.name, mono(e.id), state], actions,
    table(["field", "value"], [["round", `${e.round} / ${e.spec.rounds}`],
      ["model version", e.model_version], ["strategy", e.spec.strategy],
      ["clients per round", `${e.spec.clients_per_round} (at least ${e.spec.min_clients})`],
      ["reason", e.reason || ""], ["created", time(e.created_at)]])),
  section("Accuracy and loss per round", chart(closedRounds(e))),
  section("Rounds", table(["round", "attempt", "state", "clients", "updates", "rejected",
    "accuracy", "loss", "clients' accuracy"], e.rounds.map((r) => [r.round, r.attempt,
    badge(r.state), r.clients.length, r.updates,
    Object.entries(r.rejected || {}).map(([k, v]) => `${k} ${v}`).join(", "),
    fixed(r.metrics.accuracy), fixed(r.metrics.loss), fixed(r.client_metrics.accuracy)])))];
}

/** Accuracy (0–1, left scale) and loss (0–its max, right scale) per round, as SVG. */
function chart(rounds) {
  if (!rounds.length) return el("p", "empty", "no round has closed yet");
  const W = 480, H = 180, L = 40, R = 40, T = 10, B = 24;
  const maxLoss = Math.max(1e-9, ...rounds.map((r) => r.metrics.loss ?? 0));
  const x = (i) => L + (rounds.length === 1 ? (W - L - R) / 2 : i * (W - L - R) / (rounds.length - 1));
  const y = (v, max) => T + (H - T - B) * (1 - v / max);
  const series = (key, max) => {
    const points = rounds.map((r, i) => [r, i]).filter(([r]) => typeof r.metrics[key] === "number");
    return svg("g", { class: `series ${key}` },
      svg("polyline", { points: points.map(([r, i]) => `${x(i)},${y(r.metrics[key], max)}`).join(" ") }),
      ...points.map(([r, i]) => {
        const dot = svg("circle", { cx: x(i), cy: y(r.metrics[key], max), r: 3 },
          svg("title", {}, `round ${r.round} ${key} ${fixed(r.metrics[key])}`));
        dot.dataset.round = r.round;
        dot.dataset.value = r.metrics[key];
        return dot;
      }));
  };
  const label = (attrs, text) => svg("text", attrs, text);
  return el("div", null, svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}` },
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B }),
    label({ x: L - 4, y: T + 8, "text-anchor": "end" }, "1"),
    label({ x: L - 4, y: H - B, "text-anchor": "end" }, "0"),
    label({ x: W - R + 4, y: T + 8 }, maxLoss.toFixed(2)),
    ...rounds.map((r, i) => label({ x: x(i), y: H - 6, "text-anchor": "middle" }, r.round)),
    series("accuracy", 1), series("loss", maxLoss)),
  el("div", "bar", el("span", "key accuracy", "accuracy (left, 0–1)"),
    el("span", "key loss", `loss (right, 0–${maxLoss.toFixed(2)})`), el("span", "dim", "round →")));
}

// ---------------------------------------------------------------- start
if (token) start(); else showLogin();
