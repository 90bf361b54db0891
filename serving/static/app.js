// crossrec inspection page: plain JS over the JSON API, no build step.
// All data is inserted with textContent (never innerHTML), so titles from the catalogue
// cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const res = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const msg = body && body.message ? body.message : `HTTP ${res.status}`;
    throw new Error(msg);
  }
  return body;
}

function el(tag, opts = {}, children = []) {
  const node = document.createElement(tag);
  if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
  if (opts.cls) node.className = opts.cls;
  if (opts.title) node.title = opts.title;
  for (const c of children) node.appendChild(c);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

function fmtAge(s) {
  if (s === null || s === undefined) return "unknown age";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function itemCell(title, itemId) {
  return el("td", {}, [el("span", { text: title || "(no title)" }), el("span", { cls: "id", text: itemId })]);
}

function renderHistory(data) {
  const body = $("history").querySelector("tbody");
  body.replaceChildren();
  for (const e of data.entries) {
    const tr = el("tr", {}, [
      el("td", { cls: "num", text: fmtTime(e.ts) }),
      el("td", {}, [el("span", { cls: `dom ${e.domain}`, text: e.domain })]),
      el("td", { text: e.event_type }),
      itemCell(e.title, e.item_id),
    ]);
    tr.dataset.itemId = e.item_id;
    body.appendChild(tr);
  }
  const skipped = data.skipped ? `, ${data.skipped} unreadable` : "";
  $("history-count").textContent = `${data.entries.length} most recent${skipped}`;
  $("history-empty").hidden = data.entries.length > 0;
}

function renderRecs(data) {
  const body = $("recs").querySelector("tbody");
  body.replaceChildren();
  const top = data.items.length ? Math.max(...data.items.map((i) => Math.abs(i.score))) || 1 : 1;
  for (const it of data.items) {
    const bar = el("div", { cls: "bar" });
    bar.style.width = `${Math.max(4, (100 * Math.abs(it.score)) / top)}%`;
    const why = it.because
      ? el("td", { cls: "why", text: it.because.text, title: `${it.because.domain || "?"} item ${it.because.item_id}` })
      : el("td", { cls: "muted", text: data.fallback ? "popular in this domain" : "–" });
    const tr = el("tr", {}, [
      el("td", { cls: "num", text: it.rank }),
      itemCell(it.title, it.item_id),
      el("td", { cls: "num" }, [el("span", { text: it.score.toFixed(4) }), bar]),
      why,
    ]);
    tr.dataset.itemId = it.item_id;
    body.appendChild(tr);
  }
  $("fallback").hidden = !data.fallback;
  $("recs-empty").hidden = data.items.length > 0;
  const model = data.model_version ? `model ${data.model_version}` : "no model";
  const route = data.route ? ` · route ${data.route}` : "";
  $("recs-meta").textContent = `${model}${route} · ${data.source} · updated ${fmtAge(data.age_s)}`;
  // Which writer produced this list (batch publish, stream consumer or the popular fallback) and
  // with which model, beside the model serving now: after a rollback the two may differ.
  $("recs-source").textContent = data.source;
  $("recs-model").textContent = data.model_version || "none";
  $("recs-current").textContent = data.current_model || "none";
  // The routed model's route for this user (by their segment); lists of unrouted models have none.
  $("recs-route").textContent = data.route || "";
  $("recs-route-wrap").hidden = !data.route;
  $("recs-model").classList.toggle("stale", Boolean(data.model_version && data.current_model && data.model_version !== data.current_model));
  $("recs-origin").hidden = false;
}

// The user's fresh features as Feast's online store holds them (pushed by the stream).
function renderFeatures(f) {
  const body = $("features").querySelector("tbody");
  body.replaceChildren();
  const note = $("features-note");
  if (!f.found) {
    note.textContent = "No features stored for this user.";
    note.hidden = false;
    return;
  }
  note.hidden = true;
  const recent = (f.recent_items || []).map((id, i) => `${id} (${(f.recent_domains || [])[i] || "?"})`);
  const rowsOut = [
    ["events", f.n_events],
    ["last event", f.last_event_ts_ms === null ? "–" : fmtTime(f.last_event_ts_ms / 1000)],
    ["recent items", recent.slice(0, 5).join(", ") + (recent.length > 5 ? ` … (${recent.length})` : "")],
    ["user vector", f.user_vector ? `${f.user_vector.length} dims` : "–"],
  ];
  for (const [name, value] of rowsOut) {
    const tr = el("tr", {}, [el("th", { text: name }), el("td", { text: value })]);
    tr.dataset.feature = name;
    body.appendChild(tr);
  }
}

async function loadFeatures(user) {
  const table = $("features");
  table.dataset.state = "loading";
  try {
    renderFeatures(await getJSON(`/users/${encodeURIComponent(user)}/features`));
    table.dataset.state = "ready";
  } catch (err) {
    // Features are extra: their failure is shown in their panel, the lists stay usable.
    $("features").querySelector("tbody").replaceChildren();
    $("features-note").textContent = `features unavailable: ${err.message}`;
    $("features-note").hidden = false;
    table.dataset.state = "error";
  }
}

// Highlight the history items that explain at least one recommendation, with how many.
function markExplaining(recs) {
  const counts = new Map();
  for (const it of recs.items) {
    if (it.because) counts.set(it.because.item_id, (counts.get(it.because.item_id) || 0) + 1);
  }
  for (const row of $("history").querySelectorAll("tbody tr")) {
    const n = counts.get(row.dataset.itemId) || 0;
    row.classList.toggle("explains", n > 0);
    row.title = n ? `explains ${n} recommendation${n > 1 ? "s" : ""}` : "";
  }
}

async function loadUsers() {
  const list = $("user-list");
  list.replaceChildren();
  try {
    const data = await getJSON(`/users?domain=${encodeURIComponent($("domain").value)}&limit=50`);
    for (const u of data.users) list.appendChild(el("option", { text: u }));
  } catch (err) {
    showError(`could not list users: ${err.message}`);
  }
}

async function show(event) {
  if (event) event.preventDefault();
  const user = $("user").value.trim();
  const domain = $("domain").value;
  const k = $("k").value || "10";
  if (!user) return;
  showError("");
  document.body.dataset.state = "loading";
  const u = encodeURIComponent(user);
  try {
    const [hist, recs] = await Promise.all([
      getJSON(`/users/${u}/history?limit=50`),
      getJSON(`/recommendations/${encodeURIComponent(domain)}/${u}?k=${encodeURIComponent(k)}`),
    ]);
    renderHistory(hist);
    renderRecs(recs);
    markExplaining(recs);
    loadFeatures(user);  // not awaited: Feast's first read may take seconds
    const params = new URLSearchParams({ domain, user, k });
    history.replaceState(null, "", `?${params}`);
    document.body.dataset.state = "ready";
  } catch (err) {
    showError(err.message);
    document.body.dataset.state = "error";
  }
}

async function init() {
  const health = $("health");
  try {
    const h = await getJSON("/health");
    health.textContent = `Redis up · model ${h.model_version || "none yet"}`;
    health.className = "badge ok";
  } catch (err) {
    health.textContent = `Redis down: ${err.message}`;
    health.className = "badge down";
  }
  try {
    const d = await getJSON("/domains");
    for (const name of d.domains) $("domain").appendChild(el("option", { text: name }));
    $("domain").value = d.default_domain;
    $("k").max = d.max_k;
    $("k").value = d.default_k;
  } catch (err) {
    showError(`could not load domains: ${err.message}`);
    return;
  }
  const params = new URLSearchParams(location.search);
  if (params.get("domain")) $("domain").value = params.get("domain");
  if (params.get("k")) $("k").value = params.get("k");
  $("domain").addEventListener("change", loadUsers);
  $("picker").addEventListener("submit", show);
  await loadUsers();
  document.body.dataset.state = "idle";
  if (params.get("user")) {
    $("user").value = params.get("user");
    await show();
  }
}

init();
