// The hub's operator console: one page over the hub's own API (docs/API.md). The API token is
// kept in this tab's sessionStorage and sent as a bearer header; no cookie is ever set. Every
// value from the API is put into the page as text (textContent), never as markup.
'use strict';

const TOKEN_KEY = 'hub-console-token';
const PAGES = ['cluster', 'peers', 'pairing', 'apps', 'audit', 'stats'];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  online: new Set(),
  peers: new Map(), // id -> name, for the audit page
  stream: null,
  refresh: null,
  chart: null,
};

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: 'http', message: res.statusText };
    if (res.status === 401) signOut('The hub refused this token: sign in again.');
    throw new ApiError(res.status, err.code, err.message);
  }
  return data;
}

function when(ms) {
  if (!ms) return 'never';
  return new Date(ms).toLocaleString();
}

function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 5) return 'now';
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function short(id) {
  return id ? `${id.slice(0, 8)}…` : '';
}

function showError(e) {
  const p = $('error');
  if (!e) {
    p.hidden = true;
    return;
  }
  p.textContent = e.message || String(e);
  p.hidden = false;
}

/** Asks for a confirmation in the page's dialog; resolves to true if confirmed. */
function confirmAction(text, action) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = action;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
    dialog.returnValue = '';
    dialog.showModal();
  });
}

// ---- signing in and out ----

async function signIn(token) {
  state.token = token;
  const status = await api('GET', '/api/status');
  sessionStorage.setItem(TOKEN_KEY, token);
  $('signin').hidden = true;
  $('app').hidden = false;
  $('hub-name').textContent = status.name || '(not in a cluster)';
  watch();
  route();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  $('app').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('token').value = '';
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('signin-error').textContent = '';
  try {
    await signIn($('token').value.trim());
  } catch (e) {
    signOut(e.status === 401 ? 'That token is not valid here.' : e.message);
  }
});

$('signout').addEventListener('click', () => signOut(''));

// ---- live updates: server-sent events read through fetch (so the token goes in a header) ----

async function watch() {
  const controller = new AbortController();
  state.stream = controller;
  while (state.stream === controller) {
    try {
      const res = await fetch('/api/events', {
        headers: { Authorization: `Bearer ${state.token}` },
        signal: controller.signal,
        cache: 'no-store',
      });
      if (!res.ok) throw new Error(`events: ${res.status}`);
      $('live').textContent = 'live';
      $('live').classList.add('on');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).trim())
            .join('\n');
          if (data) changed(JSON.parse(data));
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    $('live').textContent = 'offline';
    $('live').classList.remove('on');
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function changed(change) {
  state.online = new Set(change.peers);
  // Several changes at once make one refresh.
  clearTimeout(state.refresh);
  state.refresh = setTimeout(() => render(currentPage(), true), 150);
}

// ---- pages ----

function currentPage() {
  const name = location.hash.replace('#', '');
  return PAGES.includes(name) ? name : 'cluster';
}

function route() {
  const page = currentPage();
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('current', a.getAttribute('href') === `#${page}`);
  }
  // A pairing token is shown once: leaving the page forgets it.
  if (page !== 'pairing') forgetToken();
  render(page, false);
}

window.addEventListener('hashchange', route);

async function render(page, live) {
  if (!state.token) return;
  try {
    showError(null);
    switch (page) {
      case 'cluster': await renderCluster(); break;
      case 'peers': await renderPeers(); break;
      case 'apps': await renderApps(); break;
      case 'audit': await renderAudit(); break;
      case 'stats': await renderStats(); break;
      case 'pairing': if (!live) await renderPairing(); break;
      default: break;
    }
  } catch (e) {
    if (state.token) showError(e);
  }
}

function facts(dl, rows) {
  dl.replaceChildren(
    ...rows.flatMap(([k, v, id]) => [el('dt', {}, k), el('dd', { id }, v ?? '—')]),
  );
}

async function renderCluster() {
  const s = await api('GET', '/api/status');
  if (!s.joined) {
    facts($('cluster-facts'), [['Cluster', 'this hub has not joined a cluster yet']]);
    return;
  }
  const r = s.relay || {};
  const cert = s.certificate || {};
  const days = cert.not_after_ms ? Math.floor((cert.not_after_ms - Date.now()) / 86400000) : null;
  const rows = [
    ['Cluster id', s.cluster_id, 'fact-cluster'],
    ['This hub', `${s.name} (${s.hub_id})`, 'fact-hub'],
    ['Trust level', `${s.trust_level}${s.founder ? ', founder (holds the cluster CA)' : ''}`],
    ['Relay', r.url, 'fact-relay'],
    ['Relay connection', r.connected
      ? `connected, round trip ${r.rtt_ms != null ? r.rtt_ms.toFixed(1) + ' ms' : 'not measured'}`
      : `not connected${r.last_error ? ': ' + r.last_error : ''}`, 'fact-relay-state'],
    ['Peers online', String(s.peers_online ?? 0), 'fact-online'],
    ['Manifest epoch', s.manifest_epoch != null ? String(s.manifest_epoch) : 'none held'],
    ['Revocation list', s.revocation_version != null ? `version ${s.revocation_version}` : 'none held'],
    ['Certificate', cert.sha256 ? `SHA-256 ${cert.sha256}` : null],
    ['Certificate expires', cert.not_after_ms
      ? `${when(cert.not_after_ms)} (${days} days)` : null, 'fact-expiry'],
    ['Certificate renewal', cert.renew_at_ms ? `from ${when(cert.renew_at_ms)}, on its own` : null],
  ];
  // Said from 30 days before the end (or a third of a shorter term), or once it has ended.
  if (cert.warning) rows.push(['Warning', cert.warning, 'fact-cert-warning']);
  facts($('cluster-facts'), rows);
}

async function renderPeers() {
  const peers = await api('GET', '/api/federation/peers');
  const body = $('peers-table').tBodies[0];
  body.replaceChildren(...peers.map((p) => {
    state.peers.set(p.id, p.name);
    const online = p.revoked_at == null && (state.online.has(p.id) || p.online === true);
    const stateText = p.revoked_at != null ? 'revoked'
      : p.suspended_at != null ? (online ? 'online, suspended' : 'suspended')
        : online ? 'online' : 'offline';
    const actions = [];
    actions.push(el('button', { type: 'button', onclick: () => peerDetail(p.id) }, 'Details'));
    if (p.revoked_at == null) {
      actions.push(p.suspended_at == null
        ? el('button', { type: 'button', 'data-action': 'suspend', onclick: () => peerAction(p, 'suspend') }, 'Suspend')
        : el('button', { type: 'button', 'data-action': 'resume', onclick: () => peerAction(p, 'resume') }, 'Resume'));
      actions.push(el('button', { type: 'button', class: 'danger', 'data-action': 'revoke', onclick: () => peerAction(p, 'revoke') }, 'Revoke'));
    }
    return el('tr', { 'data-peer': p.id, 'data-state': stateText.split(',')[0] },
      el('td', {}, p.name),
      el('td', { title: p.id }, el('code', {}, short(p.id))),
      el('td', { class: `state ${stateText.split(',')[0]}` }, stateText),
      el('td', {}, online ? 'now' : ago(p.last_seen_at)),
      el('td', {}, p.trust_level),
      el('td', {}, p.trust_score != null ? String(p.trust_score) : '—'),
      el('td', { class: 'actions' }, actions));
  }));
  if (peers.length === 0) {
    body.append(el('tr', {}, el('td', { colspan: 7, class: 'hint' }, 'No peers yet: make a pairing token.')));
  }
}

async function peerDetail(id) {
  const d = await api('GET', `/api/federation/peers/${id}`);
  const box = $('peer-detail');
  const score = d.trust_score;
  box.replaceChildren(...[
    el('h3', {}, `${d.name} `, el('code', {}, d.id)),
    el('p', {}, `Trust level ${d.trust_level}; roles ${d.roles.length ? d.roles.join(', ') : 'none'}; paired ${when(d.paired_at)}.`),
    score ? el('p', {}, el('strong', {}, `Trust score ${score.score}`), ' of 100') : null,
    score ? el('table', { class: 'parts' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Part'), el('th', {}, 'Observed'), el('th', {}, 'Points off'))),
      el('tbody', {}, score.parts.map((part) => el('tr', { class: part.penalty ? 'bad' : '' },
        el('td', {}, part.name), el('td', {}, part.observed), el('td', {}, String(part.penalty)))))) : null,
    d.report_error ? el('p', { class: 'hint' }, `Not asked now: ${d.report_error}`) : null,
  ].filter(Boolean));
  box.hidden = false;
}

async function peerAction(p, action) {
  const texts = {
    suspend: [`Suspend ${p.name}? Its calls are refused until you resume it.`, 'Suspend'],
    resume: [`Resume ${p.name}? Its calls are accepted again.`, 'Resume'],
    revoke: [`Revoke ${p.name} for good? Its certificate goes on the cluster's revocation list, and every hub and the relay refuse it within seconds.`, 'Revoke'],
  };
  const [text, verb] = texts[action];
  if (!(await confirmAction(text, verb))) return;
  try {
    if (action === 'revoke') await api('DELETE', `/api/federation/peers/${p.id}?reason=${encodeURIComponent('revoked from the console')}`);
    else await api('POST', `/api/federation/peers/${p.id}/${action}`);
  } catch (e) {
    showError(e);
  }
  $('peer-detail').hidden = true;
  await renderPeers();
}

function forgetToken() {
  $('pairing-result').hidden = true;
  $('pairing-token').value = '';
  $('pairing-qr').removeAttribute('src');
  $('pairing-phone').removeAttribute('href');
}

async function renderPairing() {
  forgetToken();
}

$('pairing-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  forgetToken();
  try {
    const roles = $('pairing-roles').value.split(',').map((r) => r.trim()).filter(Boolean);
    const t = await api('POST', '/api/federation/generate-pairing-token', {
      trust_level: $('pairing-trust').value,
      roles,
      ttl_seconds: Math.round(Number($('pairing-ttl').value || 60) * 60),
      qr: true,
    });
    $('pairing-token').value = t.token;
    $('pairing-qr').src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(t.qr_svg)}`;
    $('pairing-phone').href = t.phone_url;
    $('pairing-expiry').textContent = `at ${new Date(t.expires_at).toLocaleTimeString()}`;
    $('pairing-result').hidden = false;
  } catch (e) {
    showError(e);
  }
});

async function renderApps() {
  const hubs = await api('GET', '/api/apps');
  const mine = hubs.find((h) => h.local);
  const body = $('apps-table').tBodies[0];
  // A live refresh keeps a sharing policy being edited, and the focus in it.
  const edits = new Map();
  let focused = null;
  for (const input of body.querySelectorAll('input.sharing')) {
    if (input.value !== input.defaultValue) edits.set(input.dataset.app, input.value);
    if (input === document.activeElement) focused = input.dataset.app;
  }
  body.replaceChildren(...(mine ? mine.apps : []).map((a) => {
    const input = el('input', { value: a.sharing || 'local', 'aria-label': `sharing of ${a.name}`, class: 'sharing', 'data-app': a.name });
    if (edits.has(a.name)) input.value = edits.get(a.name);
    const save = el('button', {
      type: 'button',
      onclick: async () => {
        try {
          await api('PUT', `/api/apps/${encodeURIComponent(a.name)}/sharing`, { sharing: input.value.trim() });
          input.defaultValue = input.value;
          await renderApps();
        } catch (e) {
          showError(e);
        }
      },
    }, 'Save');
    return el('tr', { 'data-app': a.name },
      el('td', {}, a.name),
      el('td', {}, a.available ? 'yes' : `no${a.reason ? ': ' + a.reason : ''}`),
      el('td', {}, a.tools.map((t) => el('code', { title: t.description || '' }, t.name)).flatMap((c, i) => (i ? [', ', c] : [c]))),
      el('td', { class: 'shared' }, a.sharing || 'local'),
      el('td', { class: 'actions' }, input, save));
  }));
  if (focused !== null) {
    const input = [...body.querySelectorAll('input.sharing')].find((i) => i.dataset.app === focused);
    input?.focus();
  }
  if (!mine || mine.apps.length === 0) {
    body.append(el('tr', {}, el('td', { colspan: 5, class: 'hint' }, 'No apps: hub apps add NAME --command "CMD ARGS..."')));
  }
  const others = hubs.filter((h) => !h.local);
  $('remote-apps').replaceChildren(...others.map((h) => el('div', { class: 'card', 'data-hub': h.hub_id },
    el('h3', {}, h.hub_name, ' ', el('span', { class: `state ${h.online ? 'online' : 'offline'}` }, h.online ? `online (${h.path})` : 'offline')),
    h.error ? el('p', { class: 'hint' }, h.error) : null,
    h.apps.length === 0 && !h.error ? el('p', { class: 'hint' }, 'Shares nothing with this hub.') : null,
    el('ul', {}, h.apps.map((a) => el('li', {}, el('strong', {}, a.name), ': ',
      a.tools.map((t) => t.name).join(', ') || 'no tools', a.available ? '' : ' (unavailable)'))))));
  if (others.length === 0) $('remote-apps').append(el('p', { class: 'hint' }, 'No other hubs yet.'));
}

let auditRows = [];
let auditBroken = null;

async function renderAudit() {
  const [entries, verify] = await Promise.all([
    api('GET', '/api/federation/audit?limit=1000'),
    api('GET', '/api/federation/audit/verify'),
  ]);
  if (state.peers.size === 0) {
    for (const p of await api('GET', '/api/federation/peers')) state.peers.set(p.id, p.name);
  }
  const banner = $('audit-verify');
  if (verify.ok) {
    banner.textContent = `The audit chain verifies: ${verify.entries} entries, each MAC chained to the one before.`;
    banner.className = 'banner ok';
    auditBroken = null;
  } else {
    banner.textContent = `The audit chain does NOT verify: ${verify.error}. Entries from #${verify.seq} on cannot be trusted.`;
    banner.className = 'banner bad';
    auditBroken = verify.seq;
  }
  auditRows = entries.reverse();
  drawAudit();
}

function drawAudit() {
  const kind = $('audit-kind').value.trim();
  const peer = $('audit-peer').value.trim().toLowerCase();
  const decision = $('audit-decision').value;
  const rows = auditRows.filter((e) => (!kind || e.kind.includes(kind))
    && (!decision || e.decision === decision)
    && (!peer || (e.peer && (e.peer.startsWith(peer) || (state.peers.get(e.peer) || '').toLowerCase().includes(peer)))));
  $('audit-table').tBodies[0].replaceChildren(...rows.map((e) => {
    const flagged = (auditBroken != null && e.seq >= auditBroken) || e.kind === 'audit.inconsistent' || e.kind === 'peer.fault';
    return el('tr', { class: flagged ? 'flagged' : e.decision === 'refused' ? 'refused' : '', 'data-seq': e.seq },
      el('td', {}, String(e.seq)),
      el('td', { title: new Date(e.at_ms).toISOString() }, when(e.at_ms)),
      el('td', {}, e.kind),
      el('td', { title: e.peer || '' }, e.peer ? (state.peers.get(e.peer) || short(e.peer)) : ''),
      el('td', {}, [e.app, e.tool].filter(Boolean).join(' / ')),
      el('td', {}, e.decision),
      el('td', {}, e.reason));
  }));
}

for (const id of ['audit-kind', 'audit-peer', 'audit-decision']) {
  $(id).addEventListener('input', drawAudit);
}
$('audit-filter').addEventListener('submit', (ev) => ev.preventDefault());

async function renderStats() {
  const [windows, series] = await Promise.all([
    api('GET', '/api/federation/stats'),
    api('GET', '/api/federation/stats/series?hours=24'),
  ]);
  const sum = (m) => Object.values(m || {}).reduce((a, b) => a + b, 0);
  $('stats-table').tBodies[0].replaceChildren(...windows.map((w) => {
    const t = w.total;
    return el('tr', { 'data-window': w.window },
      el('td', {}, w.window),
      el('td', {}, String(t.calls_out)),
      el('td', {}, String(sum(t.refused_out))),
      el('td', {}, String(t.calls_in)),
      el('td', {}, String(t.accepted_in)),
      el('td', {}, String(sum(t.refused_in))),
      el('td', {}, `${(t.call_ms / 1000).toFixed(1)} s`),
      el('td', {}, String(t.call_bytes)),
      el('td', {}, String(t.pairings)));
  }));
  drawChart(series);
}

function drawChart(series) {
  // Every hour of the window, with zeros where nothing happened.
  const byStart = new Map(series.buckets.map((b) => [b.start_ms, b]));
  const xs = [];
  const calls = [];
  const refused = [];
  for (let t = series.since_ms; t <= Date.now(); t += series.bucket_ms) {
    const b = byStart.get(t);
    xs.push(t / 1000);
    calls.push(b ? b.calls : 0);
    refused.push(b ? b.refused : 0);
  }
  const box = $('stats-chart');
  const width = Math.max(320, box.clientWidth || 720);
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot({
    width,
    height: 260,
    series: [
      {},
      { label: 'calls', stroke: '#2563eb', fill: 'rgba(37,99,235,0.12)', width: 2 },
      { label: 'refused', stroke: '#dc2626', width: 2 },
    ],
    axes: [{}, { label: 'per hour' }],
    scales: { y: { range: (u, min, max) => [0, Math.max(4, max)] } },
  }, [xs, calls, refused], box);
}

// ---- start ----

if (state.token) {
  signIn(state.token).catch(() => signOut(''));
} else {
  signOut('');
}
