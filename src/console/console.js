// switcher-api console: plain JavaScript against this service's own API. The admin key is
// kept in sessionStorage (this tab only) and sent as a bearer key. Every text that comes
// from the API is put into the page with textContent, never parsed as HTML.
"use strict";

const KEY_SLOT = "switcher-admin-key";
const $ = (id) => document.getElementById(id);

const state = {
  targets: [], // enabled models: {profile_name, model_name}
  history: null, // the agent whose history is open
  requestsBefore: null,
};

// ------------------------------------------------------------------------------------------
// The API
// ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + (sessionStorage.getItem(KEY_SLOT) || "") };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError("the service could not be reached: " + e.message, 0);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    // The API's own message: `{"error":{"message"}}`, or sync-models' `{"ok":false,"error"}`.
    let message = response.status + " " + response.statusText;
    if (data && data.error && typeof data.error.message === "string") {
      message = data.error.message;
    } else if (data && typeof data.error === "string") {
      message = data.error;
    }
    throw new ApiError(message, response.status);
  }
  return data;
}

const q = encodeURIComponent;

// ------------------------------------------------------------------------------------------
// Page helpers
// ------------------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

/// A table cell; `label` names its column on a phone, where rows become cards.
function cell(label, content, className) {
  const td = el("td", { "data-label": label });
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content === null || content === undefined ? "—" : String(content);
  return td;
}

function fill(tbodyParent, rows) {
  const tbody = $(tbodyParent).querySelector("tbody");
  tbody.replaceChildren(...rows);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function target(t) {
  return t ? t.profile_name + " / " + t.model_name : "—";
}

function showError(e) {
  const box = $("message");
  box.textContent = e instanceof Error ? e.message : String(e);
  box.hidden = false;
  $("notice").textContent = "";
}

function notify(text) {
  $("message").hidden = true;
  $("notice").textContent = text;
}

/// Runs an action from a button or a form: the button is disabled meanwhile, and any error
/// of the API is shown by its message.
async function act(button, action) {
  if (button) button.disabled = true;
  try {
    await action();
  } catch (e) {
    showError(e);
    if (e.status === 401) logout(false);
  } finally {
    if (button) button.disabled = false;
  }
}

function targetOptions(select, current) {
  const options = state.targets.map((t, i) => {
    const o = el("option", { value: String(i), text: t.profile_name + " / " + t.model_name });
    if (current && t.profile_name === current.profile_name && t.model_name === current.model_name) {
      o.selected = true;
    }
    return o;
  });
  if (options.length === 0) options.push(el("option", { value: "", text: "no enabled model" }));
  select.replaceChildren(...options);
}

// ------------------------------------------------------------------------------------------
// Agents, switching, history and rollback
// ------------------------------------------------------------------------------------------

async function switchAgent(agentId, select) {
  const t = state.targets[Number(select.value)];
  if (!t) throw new ApiError("choose an enabled model first", 0);
  const r = await api("POST", "/api/switch", {
    agent_id: agentId,
    profile_name: t.profile_name,
    model_name: t.model_name,
  });
  notify("Switched " + r.agent_id + " to " + target(r) + " (was " + target(r.previous) + ").");
  await loadAgents();
  if (state.history === agentId) await loadHistory(agentId);
}

async function loadAgents() {
  const [agents, models] = await Promise.all([
    api("GET", "/api/agents"),
    api("GET", "/api/models"),
  ]);
  state.targets = models.data.filter((m) => m.enabled);
  targetOptions($("new-agent-target"));
  $("agents-empty").hidden = agents.data.length > 0;
  fill("agents-table", agents.data.map((a) => {
    const select = el("select", { "aria-label": "Switch " + a.agent_id + " to" });
    targetOptions(select, a);
    const go = el("button", { type: "button", text: "Switch", "aria-label": "Switch " + a.agent_id });
    go.addEventListener("click", () => act(go, () => switchAgent(a.agent_id, select)));
    const hist = el("button", {
      type: "button", className: "secondary", text: "History",
      "aria-label": "History of " + a.agent_id,
    });
    hist.addEventListener("click", () => act(hist, async () => {
      await loadHistory(a.agent_id);
      $("history-title").focus();
    }));
    const row = el("tr", { "data-agent": a.agent_id },
      cell("Agent", a.agent_id), cell("Profile", a.profile_name + " (" + a.provider_type + ")"),
      cell("Model", a.model_name), cell("Since", when(a.updated_at)),
      cell("Switch to", el("div", { className: "control" }, select, go)),
      cell("History", hist));
    if (a.agent_id === state.history) row.className = "current";
    return row;
  }));
}

async function rollback(agentId, toSwitchId, button) {
  const body = { agent_id: agentId };
  if (toSwitchId !== undefined) body.to_switch_id = toSwitchId;
  await act(button, async () => {
    const r = await api("POST", "/api/rollback", body);
    notify("Rolled " + r.agent_id + " back to " + target(r) + " (was " + target(r.previous) + ").");
    await loadAgents();
    await loadHistory(agentId);
  });
}

async function loadHistory(agentId) {
  const h = await api("GET", "/api/history?agent_id=" + q(agentId) + "&limit=100");
  state.history = agentId;
  $("history").hidden = false;
  $("history-title").textContent = "History of " + agentId;
  fill("history-table", h.data.map((s, i) => {
    let back = "current";
    if (i > 0) {
      back = el("button", {
        type: "button", className: "secondary", text: "Roll back to this",
        "aria-label": "Roll back " + agentId + " to switch " + s.id,
      });
      back.addEventListener("click", () => rollback(agentId, s.id, back));
    }
    return el("tr", { "data-switch": String(s.id) },
      cell("Switch", s.id, "num"), cell("When", when(s.switched_at)),
      cell("From", target(s.from)), cell("To", target(s.to)),
      cell("Rollback of", s.rollback_of), cell("Go back", back));
  }));
  for (const row of $("agents-table").querySelectorAll("tr[data-agent]")) {
    row.className = row.dataset.agent === agentId ? "current" : "";
  }
}

// ------------------------------------------------------------------------------------------
// Profiles, models, agent keys, requests
// ------------------------------------------------------------------------------------------

async function loadCatalog() {
  const [profiles, models] = await Promise.all([
    api("GET", "/admin/profiles"),
    api("GET", "/api/models"),
  ]);
  fill("profiles-table", profiles.data.map((p) => {
    const sync = el("button", {
      type: "button", className: "secondary", text: "Sync models",
      "aria-label": "Sync the models of " + p.profile_name,
    });
    sync.addEventListener("click", () => act(sync, async () => {
      const r = await api("POST", "/admin/profiles/" + p.id + "/sync-models");
      notify("Synced " + p.profile_name + ": " + r.discovered + " discovered, " + r.created + " new.");
      await Promise.all([loadCatalog(), loadAgents()]);
    }));
    return el("tr", {}, cell("Profile", p.profile_name), cell("Provider", p.provider_type),
      cell("Base URL", p.base_url), cell("Models", sync));
  }));
  const profileSelect = $("model-profile");
  const chosen = profileSelect.value;
  profileSelect.replaceChildren(...profiles.data.map((p) =>
    el("option", { value: p.profile_name, text: p.profile_name })));
  if (chosen) profileSelect.value = chosen;
  fill("models-table", models.data.map((m) => {
    const toggle = el("button", {
      type: "button", className: m.enabled ? "danger" : "secondary",
      text: m.enabled ? "Disable" : "Enable",
      "aria-label": (m.enabled ? "Disable " : "Enable ") + m.profile_name + " / " + m.model_name,
    });
    toggle.addEventListener("click", () => act(toggle, async () => {
      await api("POST", "/admin/models", {
        profile_name: m.profile_name, model_name: m.model_name, enabled: !m.enabled,
      });
      notify((m.enabled ? "Disabled " : "Enabled ") + m.profile_name + " / " + m.model_name + ".");
      await Promise.all([loadCatalog(), loadAgents()]);
    }));
    const badge = el("span", { className: "badge " + (m.enabled ? "on" : "off"),
      text: m.enabled ? "enabled" : "disabled" });
    return el("tr", {}, cell("Profile", m.profile_name), cell("Model", m.model_name),
      cell("Enabled", badge), cell("Change", toggle));
  }));
}

async function loadKeys() {
  const keys = await api("GET", "/admin/agent-keys");
  fill("keys-table", keys.data.map((k) => {
    const del = el("button", {
      type: "button", className: "danger", text: "Delete",
      "aria-label": "Delete key " + k.id + " of " + k.agent_id,
    });
    del.addEventListener("click", () => act(del, async () => {
      if (!window.confirm("Delete key " + k.id + " of " + k.agent_id + "? It stops working at once.")) return;
      await api("DELETE", "/admin/agent-keys/" + k.id);
      notify("Deleted key " + k.id + " of " + k.agent_id + ".");
      await loadKeys();
    }));
    return el("tr", {}, cell("Key", k.id, "num"), cell("Agent", k.agent_id), cell("Name", k.name),
      cell("Created", when(k.created_at)), cell("Last used", when(k.last_used_at)),
      cell("Delete", del));
  }));
}

async function loadRequests(older) {
  const agent = $("requests-agent").value.trim();
  let path = "/admin/requests?limit=50";
  if (agent) path += "&agent_id=" + q(agent);
  if (older && state.requestsBefore) path += "&before_id=" + state.requestsBefore;
  const page = await api("GET", path);
  const rows = page.data.map((r) => el("tr", {},
    cell("Id", r.id, "num"), cell("When", when(r.created_at)), cell("Agent", r.agent_id),
    cell("Endpoint", r.endpoint), cell("Profile / model", r.profile_name ? target(r) : null),
    cell("Status", r.status, "num"), cell("Latency", r.latency_ms + " ms", "num"),
    cell("Tokens", r.total_tokens, "num"), cell("Error", r.error)));
  const tbody = $("requests-table").querySelector("tbody");
  if (older) tbody.append(...rows);
  else tbody.replaceChildren(...rows);
  state.requestsBefore = page.data.length ? page.data[page.data.length - 1].id : null;
  $("requests-older").hidden = page.data.length < 50;
}

// ------------------------------------------------------------------------------------------
// Logging in and out
// ------------------------------------------------------------------------------------------

async function loadAll() {
  await loadAgents();
  await Promise.all([loadCatalog(), loadKeys(), loadRequests(false)]);
}

function logout(clearMessage) {
  sessionStorage.removeItem(KEY_SLOT);
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("history").hidden = true;
  state.history = null;
  if (clearMessage) {
    $("message").hidden = true;
    $("notice").textContent = "";
  }
  $("admin-key").focus();
}

async function enter() {
  // An admin route first: the agent key would pass the agent routes and fail later.
  await api("GET", "/admin/profiles");
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  await loadAll();
  $("agents-title").focus();
}

function start() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("admin-key").value.trim();
    if (!key) {
      showError("enter the admin key");
      return;
    }
    sessionStorage.setItem(KEY_SLOT, key);
    $("admin-key").value = "";
    const button = event.submitter || $("login-form").querySelector("button");
    act(button, async () => {
      try {
        await enter();
        notify("Logged in.");
      } catch (e) {
        sessionStorage.removeItem(KEY_SLOT);
        $("app").hidden = true;
        $("login").hidden = false;
        throw e;
      }
    });
  });
  $("logout").addEventListener("click", () => logout(true));
  $("new-agent-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("new-agent-id").value.trim();
    act(event.submitter, () => switchAgent(id, $("new-agent-target")));
  });
  $("undo").addEventListener("click", () => rollback(state.history, undefined, $("undo")));
  $("history-close").addEventListener("click", () => {
    $("history").hidden = true;
    state.history = null;
    for (const row of $("agents-table").querySelectorAll("tr.current")) row.className = "";
    $("agents-title").focus();
  });
  $("model-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter, async () => {
      const m = await api("POST", "/admin/models", {
        profile_name: $("model-profile").value,
        model_name: $("model-name").value.trim(),
      });
      notify("Model " + m.profile_name + " / " + m.model_name + " saved.");
      $("model-name").value = "";
      await Promise.all([loadCatalog(), loadAgents()]);
    });
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter, async () => {
      const body = { agent_id: $("key-agent").value.trim() };
      const name = $("key-name").value.trim();
      if (name) body.name = name;
      const k = await api("POST", "/admin/agent-keys", body);
      $("new-key-value").textContent = k.key;
      $("new-key").hidden = false;
      notify("Key " + k.id + " created for " + k.agent_id + ": copy it now, it is not shown again.");
      await loadKeys();
    });
  });
  $("requests-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(event.submitter, () => loadRequests(false));
  });
  $("requests-older").addEventListener("click", () =>
    act($("requests-older"), () => loadRequests(true)));

  if (sessionStorage.getItem(KEY_SLOT)) {
    act(null, enter).catch(() => {});
  } else {
    $("admin-key").focus();
  }
}

start();
