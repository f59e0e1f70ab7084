// The phone page: moves bytes and time for the hub in wasm (hub-web), keeps its state in
// IndexedDB, and draws what it says. Nothing here decides: joining, sessions, calls, the checks on
// every call of this phone's tools and the audit chain are all in the wasm module.
import init, { Join, Hub } from "./pkg/hub_web.js";

// The SHA-384 of the wasm module this page was built with (scripts/build-web writes it): a
// module that does not match is not run.
const WASM_SHA384 = "__WASM_SHA384__";
const CALL_TIMEOUT_MS = 30000;
const JOIN_TIMEOUT_MS = 30000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 30000;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) e.append(c);
  return e;
};

// ---------------------------------------------------------------- IndexedDB

let dbPromise;
function db() {
  dbPromise ??= new Promise((resolve, reject) => {
    const open = indexedDB.open("hubrelay-phone", 1);
    open.onupgradeneeded = () => {
      open.result.createObjectStore("kv");
      open.result.createObjectStore("audit", { keyPath: "seq" });
    };
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
  return dbPromise;
}
async function tx(store, mode, f) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(store, mode);
    const req = f(t.objectStore(store));
    t.oncomplete = () => resolve(req?.result);
    t.onerror = () => reject(t.error);
  });
}
const getKept = () => tx("kv", "readonly", (s) => s.get("kept"));
const putKept = (json) => tx("kv", "readwrite", (s) => s.put(json, "kept"));
// The page keeps the newest AUDIT_KEPT entries of its chain (the chain's head is in the kept
// state): calls from other hubs cannot fill the phone's storage.
const AUDIT_KEPT = 5000;
const putAudit = (entry) => tx("audit", "readwrite", (s) => {
  s.put(entry);
  if (entry.seq > AUDIT_KEPT) s.delete(IDBKeyRange.upperBound(entry.seq - AUDIT_KEPT));
});
const lastAudit = (seq) => tx("audit", "readonly", (s) => s.getAll(IDBKeyRange.lowerBound(Math.max(0, seq - 50))));
async function forget() {
  await tx("kv", "readwrite", (s) => s.clear());
  await tx("audit", "readwrite", (s) => s.clear());
}

// ---------------------------------------------------------------- page state

function show(section) {
  for (const id of ["loading", "join", "revoked", "hub"]) $(id).hidden = id !== section;
}
function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}
function wsUrl(relay, path, query) {
  const u = new URL(relay);
  u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
  u.pathname = u.pathname.replace(/\/+$/, "") + path;
  u.search = query;
  u.hash = "";
  return u.toString();
}

// ---------------------------------------------------------------- joining

function tokenFromFragment() {
  const h = location.hash.replace(/^#/, "");
  const token = new URLSearchParams(h).get("token") ?? (h.startsWith("hubpair1_") ? h : null);
  // The token stays out of the history and of anything that reads the URL later.
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  return token;
}

function join(token, name) {
  return new Promise((resolve, reject) => {
    let joining;
    try { joining = new Join(token.trim(), name.trim()); } catch (e) { reject(e); return; }
    const ws = new WebSocket(wsUrl(joining.relayUrl, joining.path, joining.query));
    ws.binaryType = "arraybuffer";
    let done = false;
    const finish = (f) => { if (!done) { done = true; clearTimeout(timer); f(); } };
    const timer = setTimeout(() => finish(() => { ws.close(1000); reject(new Error("no answer from the hub that made the token within 30 s")); }), JOIN_TIMEOUT_MS);
    const flush = () => { for (let m; (m = joining.pollSend()) !== undefined;) ws.send(m); };
    ws.onopen = flush;
    ws.onmessage = (e) => {
      if (typeof e.data === "string") return;
      try {
        const kept = joining.handleMessage(new Uint8Array(e.data), Date.now());
        flush();
        if (kept) finish(() => { ws.close(1000, "joined"); resolve(kept); });
      } catch (err) {
        finish(() => { ws.close(1000); reject(err); });
      }
    };
    ws.onclose = (e) => finish(() => reject(new Error(joining.closedReason(e.code, e.reason || "connection closed"))));
  });
}

// ---------------------------------------------------------------- the member hub

let hub;
let ws;
let timer;
let reconnectTimer;
let backoff = RECONNECT_MIN_MS;
const waiting = new Map(); // request id -> resolve
const asks = new Map(); // served call id -> element

function connect() {
  clearTimeout(reconnectTimer);
  if (hub.revoked || (ws && ws.readyState <= WebSocket.OPEN)) return;
  const socket = new WebSocket(wsUrl(hub.relayUrl, hub.path, hub.query));
  socket.binaryType = "arraybuffer";
  ws = socket;
  socket.onopen = () => {
    try { hub.opened(Date.now()); } catch (e) { toast(e.message); }
    pump();
  };
  socket.onmessage = (e) => {
    if (ws !== socket) return;
    if (typeof e.data === "string") {
      hub.handleText(e.data, Date.now());
    } else {
      try {
        hub.handleMessage(new Uint8Array(e.data), Date.now());
      } catch (err) {
        const [code, ...reason] = String(err.message).split(" ");
        socket.close(Number(code) || 1002, reason.join(" ").slice(0, 120));
      }
    }
    pump();
  };
  socket.onclose = (e) => abandon(socket, e.code, e.reason || "");
}

// The socket is over (closed, or found dead: a dead path may hold a close for minutes, so the
// page does not wait for it): the hub is told once, and a new socket goes out after a backoff,
// or when the relay asked.
function abandon(socket, code, reason) {
  if (ws !== socket) return;
  ws = undefined;
  if (socket.readyState < WebSocket.CLOSING) socket.close(code >= 4000 ? code : 1000, reason.slice(0, 120));
  hub.closed(code, reason);
  pump();
  if (hub.revoked) return;
  const asked = hub.restartAfter();
  const wait = asked >= 0 ? asked : backoff * (0.75 + Math.random() / 2);
  backoff = Math.min(backoff * 2, RECONNECT_MAX_MS);
  reconnectTimer = setTimeout(connect, wait);
}

// Sends what the hub has for the socket, handles its events, and sets the next timer.
function pump() {
  for (;;) {
    while (ws && ws.readyState === WebSocket.OPEN) {
      const m = hub.pollSend();
      if (m === undefined) break;
      ws.send(m);
    }
    const text = hub.pollEvent();
    if (text === undefined) break;
    onEvent(JSON.parse(text));
  }
  clearTimeout(timer);
  const at = hub.pollTimeout();
  if (at >= 0) {
    timer = setTimeout(() => { hub.handleTimeout(Date.now()); pump(); }, Math.max(0, at - Date.now()));
  }
}

function onEvent(ev) {
  switch (ev.type) {
    case "connected":
      backoff = RECONNECT_MIN_MS;
      break;
    case "hubs":
      drawHubs();
      break;
    case "answer": {
      const resolve = waiting.get(ev.id);
      waiting.delete(ev.id);
      resolve?.(ev);
      break;
    }
    case "serve":
      serve(ev);
      break;
    case "cancelled":
      asks.get(ev.id)?.remove();
      asks.delete(ev.id);
      break;
    case "audit":
      putAudit(ev.entry);
      drawAuditEntry(ev.entry);
      break;
    case "kept":
      putKept(hub.kept());
      break;
    case "revoked":
      $("revoked-reason").textContent = `The cluster revoked this hub (${ev.reason}): it can no longer reach any hub.`;
      show("revoked");
      document.body.dataset.state = "revoked";
      ws?.close(1000, "revoked");
      break;
    case "moved":
      // The cluster moved to a new CA key and this hub followed: its next socket goes to the
      // new room (the kept state was stored on the "kept" event before this one).
      toast(`The cluster moved to a new key (${ev.cluster}); this phone follows it.`);
      backoff = RECONNECT_MIN_MS;
      if (ws) abandon(ws, 1000, "moved");
      break;
    case "move_failed":
      toast(`The cluster moved to a new key, and this phone cannot follow (${ev.error}): pair it again.`);
      break;
    case "dead":
      // No answer from the relay in time: this socket is dead; a new one goes out soon.
      backoff = RECONNECT_MIN_MS;
      if (ws) abandon(ws, 4000, "no answer to a keepalive");
      break;
    case "renewal_failed":
      // Tried again on its own; said only when the end is near (30 days).
      if (ev.not_after_ms && ev.not_after_ms - Date.now() < 30 * 86400000) {
        toast(`This phone's certificate ends ${new Date(ev.not_after_ms).toLocaleDateString()} and could not be renewed (${ev.error}): is the founder's hub running?`);
      }
      break;
    case "closed":
      break;
  }
}

function ask(id) {
  return new Promise((resolve) => waiting.set(id, resolve));
}

// ---------------------------------------------------------------- hubs, apps, calls

const appsOf = new Map(); // hub id -> apps (or an error)

async function drawHubs() {
  const view = JSON.parse(hub.hubs());
  const status = $("status");
  status.classList.toggle("on", view.connected);
  status.title = view.connected ? "connected to the relay" : "not connected";
  document.body.dataset.connected = view.connected;
  $("who").textContent = view.me.name;
  $("who").dataset.id = view.me.id;
  const list = $("hubs");
  list.replaceChildren();
  for (const h of view.hubs) {
    const li = el("li", { className: h.online ? "" : "offline" });
    li.dataset.hub = h.id;
    li.dataset.name = h.name ?? "";
    li.append(el("strong", { textContent: h.name ?? h.id.slice(0, 8) }),
      ` ${h.online ? "online" : "offline"}${h.trust ? ` · ${h.trust}` : ""} `);
    const refresh = el("button", { type: "button", className: "secondary list", textContent: "Apps" });
    refresh.onclick = () => listApps(h.id);
    li.append(refresh);
    const apps = appsOf.get(h.id);
    if (apps?.error) li.append(el("p", { className: "error", textContent: apps.error }));
    for (const app of apps?.apps ?? []) {
      const tools = el("div", { className: "tools" });
      for (const t of app.tools ?? []) {
        const b = el("button", { type: "button", textContent: t.name });
        b.dataset.app = app.name;
        b.dataset.tool = t.name;
        b.onclick = () => openTool(h, app, t);
        tools.append(b);
      }
      li.append(el("div", { className: "apps" }, el("span", { textContent: app.name }), tools));
    }
    list.append(li);
    if (h.online && !appsOf.has(h.id) && view.connected) listApps(h.id);
  }
}

async function listApps(id) {
  appsOf.set(id, { apps: [] });
  try {
    const asked = ask(hub.listApps(id, Date.now()));
    pump();
    const answer = await asked;
    appsOf.set(id, answer.ok ? { apps: answer.apps ?? [] } : { error: answer.error });
  } catch (e) {
    appsOf.set(id, { error: e.message });
  }
  pump();
  drawHubs();
}

// A form made from the tool's input schema: one field per property.
function openTool(h, app, tool) {
  $("tool").hidden = false;
  $("tool-title").textContent = `${h.name ?? h.id.slice(0, 8)} · ${app.name} · ${tool.name}`;
  $("tool-description").textContent = tool.description ?? "";
  $("tool-result").replaceChildren();
  const form = $("tool-form");
  form.replaceChildren();
  const schema = tool.inputSchema ?? {};
  const required = new Set(schema.required ?? []);
  const fields = [];
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    let input;
    if (Array.isArray(prop.enum)) {
      input = el("select", {}, ...prop.enum.map((v) => el("option", { value: JSON.stringify(v), textContent: String(v) })));
      fields.push([name, () => JSON.parse(input.value)]);
    } else if (prop.type === "boolean") {
      input = el("input", { type: "checkbox" });
      fields.push([name, () => input.checked]);
    } else if (prop.type === "number" || prop.type === "integer") {
      input = el("input", { type: "number", step: prop.type === "integer" ? "1" : "any" });
      fields.push([name, () => (input.value === "" ? undefined : Number(input.value))]);
    } else if (prop.type === "string") {
      input = el("input", { type: "text" });
      fields.push([name, () => (input.value === "" && !required.has(name) ? undefined : input.value)]);
    } else {
      input = el("textarea", { rows: 3, placeholder: "JSON" });
      fields.push([name, () => (input.value.trim() === "" ? undefined : JSON.parse(input.value))]);
    }
    input.name = name;
    input.required = required.has(name) && prop.type !== "boolean";
    form.append(el("label", { textContent: `${name}${required.has(name) ? " *" : ""} ` }, input));
    if (prop.description) form.append(el("small", { textContent: prop.description }));
  }
  const submit = el("button", { type: "submit", textContent: "Call" });
  form.append(submit);
  form.onsubmit = async (e) => {
    e.preventDefault();
    const out = $("tool-result");
    let args;
    try {
      args = {};
      for (const [name, read] of fields) {
        const v = read();
        if (v !== undefined) args[name] = v;
      }
    } catch (err) {
      out.replaceChildren(el("p", { className: "error", textContent: `arguments: ${err.message}` }));
      return;
    }
    submit.disabled = true;
    out.replaceChildren(el("p", { textContent: "calling…" }));
    try {
      const asked = ask(hub.call(h.id, app.name, tool.name, JSON.stringify(args), CALL_TIMEOUT_MS, Date.now()));
      pump();
      drawResult(out, await asked);
    } catch (err) {
      out.replaceChildren(el("p", { className: "error", textContent: err.message }));
    } finally {
      submit.disabled = false;
      pump();
    }
  };
  $("tool").scrollIntoView({ behavior: "smooth" });
}

function drawResult(out, answer) {
  out.replaceChildren();
  out.dataset.ok = answer.ok;
  if (!answer.ok) {
    out.append(el("p", { className: "error", textContent: answer.error }));
    return;
  }
  const result = answer.result ?? {};
  if (result.isError) out.append(el("p", { className: "error", textContent: "the tool reported an error:" }));
  for (const c of result.content ?? []) {
    if (c.type === "text") out.append(el("div", { className: "text", textContent: c.text }));
    else if (c.type === "image") out.append(el("img", { src: `data:${c.mimeType};base64,${c.data}`, alt: "image result" }));
    else out.append(el("div", { textContent: JSON.stringify(c, null, 2) }));
  }
  if (result.structuredContent) out.append(el("div", { textContent: JSON.stringify(result.structuredContent, null, 2) }));
}

// ---------------------------------------------------------------- the phone's own tools

const text = (t) => ({ content: [{ type: "text", text: t }] });

function serve(ev) {
  const reply = (result) => { try { hub.answerCall(ev.id, JSON.stringify(result), Date.now()); } catch (e) { toast(e.message); } pump(); };
  const fail = (refused, message) => { try { hub.failCall(ev.id, refused, message, Date.now()); } catch (e) { toast(e.message); } pump(); };
  const from = `${ev.principal}@${ev.hub ?? "a hub"}`;
  switch (ev.tool) {
    case "location":
      if (!navigator.geolocation) { fail(false, "this browser has no geolocation"); return; }
      navigator.geolocation.getCurrentPosition(
        (p) => {
          const where = { latitude: p.coords.latitude, longitude: p.coords.longitude, accuracy_m: p.coords.accuracy };
          reply({ content: [{ type: "text", text: JSON.stringify(where) }], structuredContent: where });
          toast(`${from} read this phone's location`);
        },
        (e) => fail(e.code === 1, `location: ${e.message || "unavailable"}`),
        { enableHighAccuracy: true, timeout: Math.max(1000, ev.deadline_ms - Date.now() - 1000), maximumAge: 10000 });
      return;
    case "notify": {
      const title = String(ev.arguments.title ?? "");
      const body = String(ev.arguments.body ?? "");
      if ("Notification" in window && Notification.permission === "granted") {
        new Notification(title, { body });
      }
      toast(`${title}${body ? `: ${body}` : ""} (from ${from})`);
      reply(text("shown"));
      return;
    }
    case "ask": {
      const card = el("div", { className: "ask" });
      card.dataset.call = ev.id;
      card.append(el("div", { className: "from", textContent: `${from} asks:` }),
        el("p", { className: "question", textContent: String(ev.arguments.question ?? "") }));
      const done = (answer) => { card.remove(); asks.delete(ev.id); reply(text(answer)); };
      const choices = el("div", { className: "choices" });
      const list = Array.isArray(ev.arguments.choices) ? ev.arguments.choices.map(String) : [];
      if (list.length) {
        for (const c of list) {
          const b = el("button", { type: "button", textContent: c });
          b.dataset.choice = c;
          b.onclick = () => done(c);
          choices.append(b);
        }
      } else {
        const input = el("input", { type: "text", className: "answer", placeholder: "Your answer" });
        const send = el("button", { type: "button", className: "send", textContent: "Send" });
        send.onclick = () => done(input.value);
        choices.append(input, send);
      }
      const refuse = el("button", { type: "button", className: "secondary refuse", textContent: "Refuse" });
      refuse.onclick = () => { card.remove(); asks.delete(ev.id); fail(true, "refused by the person holding the phone"); };
      choices.append(refuse);
      card.append(choices);
      $("asks").append(card);
      asks.set(ev.id, card);
      if ("Notification" in window && Notification.permission === "granted" && document.hidden) {
        new Notification("A question for you", { body: String(ev.arguments.question ?? "") });
      }
      return;
    }
    default:
      fail(false, `no tool ${ev.tool}`);
  }
}

// ---------------------------------------------------------------- sharing and audit

function drawSharing() {
  const policy = hub.sharing;
  const select = $("sharing");
  const custom = $("sharing-custom");
  select.value = policy === "local" || policy === "cluster" ? policy : "custom";
  custom.hidden = select.value !== "custom";
  custom.value = select.value === "custom" ? policy : "";
}

function drawAuditEntry(e) {
  const li = el("li", { className: e.decision, textContent:
    `${new Date(e.at_ms).toLocaleTimeString()} ${e.kind} ${e.app}${e.tool ? `/${e.tool}` : ""} ${e.hub ?? ""} ${e.decision}: ${e.reason}` });
  li.dataset.kind = e.kind;
  li.dataset.decision = e.decision;
  $("audit").prepend(li);
  while ($("audit").children.length > 50) $("audit").lastChild.remove();
}

// ---------------------------------------------------------------- start

async function startHub(kept) {
  hub = Hub.open(kept, Date.now());
  if (hub.revoked) {
    show("revoked");
    document.body.dataset.state = "revoked";
    return;
  }
  show("hub");
  document.body.dataset.state = "member";
  $("title").textContent = "Hub";
  drawSharing();
  for (const e of await lastAudit(JSON.parse(kept).audit_seq ?? 0)) drawAuditEntry(e);
  drawHubs();
  hub.setHidden(document.hidden);
  connect();
}

async function loadWasm() {
  const bytes = await (await fetch(new URL("pkg/hub_web_bg.wasm", import.meta.url))).arrayBuffer();
  if (!WASM_SHA384.startsWith("__")) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-384", bytes));
    const b64 = btoa(String.fromCharCode(...digest));
    if (b64 !== WASM_SHA384) throw new Error("the hub module does not match this page: not run");
  }
  await init({ module_or_path: bytes });
}

async function main() {
  await loadWasm();
  if ("serviceWorker" in navigator && window.isSecureContext) {
    navigator.serviceWorker.register("sw.js").catch(() => {});
  }
  $("sharing").onchange = () => { $("sharing-custom").hidden = $("sharing").value !== "custom"; };
  $("sharing-form").onsubmit = (e) => {
    e.preventDefault();
    const v = $("sharing").value === "custom" ? $("sharing-custom").value.trim() : $("sharing").value;
    try {
      hub.setSharing(v, Date.now());
      $("sharing-said").textContent = "saved";
      if (v !== "local" && "Notification" in window && Notification.permission === "default") Notification.requestPermission();
    } catch (err) {
      $("sharing-said").textContent = err.message;
    }
    pump();
    drawSharing();
  };
  $("forget").onclick = async () => { await forget(); location.reload(); };
  document.addEventListener("visibilitychange", () => {
    if (!hub) return;
    hub.setHidden(document.hidden);
    if (!document.hidden) { hub.networkChanged(Date.now()); connect(); }
    pump();
  });
  window.addEventListener("online", () => {
    if (!hub) return;
    backoff = RECONNECT_MIN_MS;
    hub.networkChanged(Date.now());
    connect();
    pump();
  });

  const token = tokenFromFragment();
  const kept = await getKept();
  if (kept) {
    if (token) toast("this page is a hub already: the token was not used");
    await startHub(kept);
    return;
  }
  show("join");
  document.body.dataset.state = "join";
  if (token) $("join-token").value = token;
  $("join-form").onsubmit = async (e) => {
    e.preventDefault();
    $("join-button").disabled = true;
    $("join-error").textContent = "";
    try {
      const joined = await join($("join-token").value, $("join-name").value);
      await putKept(joined);
      await startHub(joined);
    } catch (err) {
      $("join-error").textContent = err.message;
    } finally {
      $("join-button").disabled = false;
    }
  };
}

main().catch((e) => {
  show("join");
  $("join-error").textContent = `this page cannot run here: ${e.message}`;
});
