// Bridgehead live dashboard: polls the admin JSON API once a second and
// renders each answer with plain DOM calls. All data enters the page through
// text nodes (never innerHTML), and each section fails on its own.
'use strict';

const POLL_MS = 1000;        // one poll a second, the next one after the last ends
const TIMEOUT_MS = 4000;     // a hung request must not stall the poll loop
const HISTORY = 120;         // sparkline length, in polls
const TOKEN_KEY = 'bridgehead.token';
const ENDPOINTS = ['status', 'trunks', 'peers', 'versions', 'recent'];
const DASH = '–';
const SBC = '\u0000sbc';     // lane key of the SBC itself in the ladder

// ---------------------------------------------------------------- helpers

const $ = (id) => document.getElementById(id);

// Builds an element: attributes (null/undefined/false are skipped, on* are
// listeners) and children (strings become text nodes, arrays are flattened).
function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(2)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs, ...children) =>
  build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const int = (v) => (num(v) === null ? DASH : String(Math.round(v)));
const pad = (n, width = 2) => String(n).padStart(width, '0');
const truncate = (s, n) => (s.length > n ? s.slice(0, Math.max(1, n - 1)) + '…' : s);

function uptime(seconds) {
  if (num(seconds) === null) return DASH;
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d}d ${pad(h)}h ${pad(m)}m ${pad(sec)}s`;
  if (h) return `${h}h ${pad(m)}m ${pad(sec)}s`;
  if (m) return `${m}m ${pad(sec)}s`;
  return `${sec}s`;
}

const duration = (s) => (num(s) === null ? DASH : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);
const offset = (ms) => (num(ms) === null ? '' : ms < 1000 ? `+${ms.toFixed(1)} ms` : `+${(ms / 1000).toFixed(3)} s`);
const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

// An ISO timestamp in local time with milliseconds, or the raw text.
function stamp(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso ?? DASH) : `${clock(d)}.${pad(d.getMilliseconds(), 3)}`;
}

// Colour class of a SIP start line: responses by class, requests neutral.
function sipClass(line) {
  const m = /^SIP\/2\.0\s+(\d)\d\d/.exec(String(line ?? ''));
  if (!m) return 'req';
  return { 1: 'prov', 2: 'ok', 3: 'redir' }[m[1]] || 'err';
}

// A table body row spanning every column, for "loading", "none", "unavailable".
const fullRow = (cols, text, cls = 'muted') => el('tr', {}, el('td', { colspan: cols, class: cls }, text));

function table(headers, rows) {
  return el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, headers.map(([h, cls]) => el('th', { class: cls }, h)))),
    el('tbody', {}, rows)));
}

// ---------------------------------------------------------------- token

let token = null;
try { token = sessionStorage.getItem(TOKEN_KEY); } catch { /* storage disabled */ }

// Takes `#token=XYZ` from the URL into sessionStorage and out of the address bar.
function readToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has('token')) return;
  token = params.get('token') || null;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* kept in memory only */ }
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
}

// ---------------------------------------------------------------- fetching

async function getJson(name) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const res = await fetch(`/api/${name}`, { headers, cache: 'no-store', signal: abort.signal });
    if (res.status === 401) throw Object.assign(new Error('HTTP 401'), { auth: true });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const text = await res.text();
    return { text, data: JSON.parse(text) };
  } catch (err) {
    if (err.name === 'AbortError') throw new Error('timed out');
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

const seen = {};             // last JSON text per endpoint: unchanged answers are not redrawn

async function poll() {
  const began = performance.now();
  try {
    await pollOnce();
  } finally {
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - began)));
  }
}

async function pollOnce() {
  const results = await Promise.allSettled(ENDPOINTS.map(getJson));
  let good = 0, auth = false;
  results.forEach((result, i) => {
    const name = ENDPOINTS[i];
    if (result.status === 'rejected') {
      auth ||= Boolean(result.reason.auth);
      seen[name] = null;
      unavailable(name, result.reason.message);
      return;
    }
    good++;
    const { text, data } = result.value;
    if (name !== 'status' && text === seen[name]) return; // status feeds the sparklines: every poll
    try {
      RENDER[name](data);
      seen[name] = text;
    } catch (err) {
      console.warn(`dashboard: bad /api/${name} answer`, err);
      seen[name] = null;
      unavailable(name, 'unexpected answer');
    }
  });
  if (good) $('updated').textContent = clock(new Date());
  document.body.classList.toggle('stale', good === 0);
  banner(auth ? 'auth' : good === 0 ? 'down' : null);
}

function banner(kind) {
  const box = $('banner');
  box.hidden = !kind;
  if (kind === 'auth') {
    box.replaceChildren('a bearer token is required: open /#token=…');
    if (token) box.append(el('span', { class: 'muted' }, ' (the token given was refused)'));
  } else if (kind === 'down') {
    box.replaceChildren('the admin API cannot be reached; retrying every second');
  }
}

// One section's "unavailable" state.
function unavailable(name, why) {
  const text = `unavailable (${why})`;
  switch (name) {
    case 'status':
      for (const id of ['active-calls', 'answered-calls', 'cps', 'uptime']) $(id).textContent = DASH;
      $('status-note').textContent = `status ${text}`;
      $('status-note').hidden = false;
      break;
    case 'trunks':
      $('trunks').tBodies[0].replaceChildren(fullRow(7, text, 'err'));
      $('mos').replaceChildren(el('p', { class: 'err' }, text));
      $('mos-total').textContent = '';
      break;
    case 'peers':
      $('peers').tBodies[0].replaceChildren(fullRow(5, text, 'err'));
      break;
    default: // versions, recent (the ladder keeps its last drawing)
      $(name).replaceChildren(name === 'recent' ? el('li', { class: 'err' }, text) : el('p', { class: 'err' }, text));
  }
}

// ---------------------------------------------------------------- status

const trend = { cps: [], active: [] }; // per poll, for the sparklines
let previous = null;         // last sample of calls_started, for the CPS

function renderStatus(s) {
  $('status-note').hidden = true;
  $('version').textContent = s.version ? `v${s.version}` : '';
  $('active-calls').textContent = int(s.calls);
  $('answered-calls').textContent = int(s.answered);
  $('uptime').textContent = uptime(s.uptime_s);
  $('shards').textContent = num(s.shards) === null ? '' : `${s.shards} shard${s.shards === 1 ? '' : 's'}`;
  document.title = num(s.calls) === null ? 'Bridgehead' : `${s.calls} calls · Bridgehead`;

  // CPS: the change of calls_started over the elapsed time, measured on the
  // server's clock (uptime_s) when it has one, else on ours.
  const now = { started: num(s.calls_started), up: num(s.uptime_s), at: performance.now() / 1000 };
  let cps = null;
  if (previous && now.started !== null && previous.started !== null) {
    const dt = now.up !== null && previous.up !== null ? now.up - previous.up : now.at - previous.at;
    const dn = now.started - previous.started;
    if (dt > 0 && dn >= 0) cps = dn / dt; // a restart (counter going back) skips one sample
  }
  previous = now;
  if (cps !== null) $('cps').textContent = cps.toFixed(1);
  else if (now.started === null) $('cps').textContent = DASH;

  record(trend.active, num(s.calls));
  record(trend.cps, cps);
  spark('spark-active', trend.active, 'active calls');
  spark('spark-cps', trend.cps, 'calls/s');
}

function record(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

// A sparkline: the newest point at the right edge, gaps where a poll failed.
function spark(id, series, what) {
  const W = 160, H = 32, step = W / (HISTORY - 1);
  const values = series.filter((v) => v !== null);
  const max = Math.max(1, ...values);
  const lines = [];
  let points = [];
  series.forEach((v, i) => {
    if (v === null) { if (points.length) lines.push(points); points = []; return; }
    const x = W - (series.length - 1 - i) * step;
    points.push(`${x.toFixed(1)},${(H - 2 - (v / max) * (H - 4)).toFixed(1)}`);
  });
  if (points.length) lines.push(points);
  const peak = values.length ? Math.max(...values) : 0;
  $(id).replaceChildren(svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' },
    svg('title', {}, `${what}: peak ${Number.isInteger(peak) ? peak : peak.toFixed(1)} over the last ${series.length} polls`),
    lines.map((p) => svg('polyline', { points: p.join(' '), 'vector-effect': 'non-scaling-stroke' }))));
}

// ---------------------------------------------------------------- trunks & MOS

// Non-2xx final statuses, e.g. "486×3, 503×1".
function failures(byStatus) {
  return Object.entries(byStatus || {})
    .filter(([code, n]) => !/^[12]/.test(code) && n > 0)
    .sort(([a], [b]) => Number(a) - Number(b) || a.localeCompare(b))
    .map(([code, n]) => `${code}×${n}`)
    .join(', ');
}

function renderTrunks(list) {
  if (!Array.isArray(list)) throw new Error('not a list');
  const rows = list.map((t) => {
    const asr = num(t.asr) ?? (num(t.calls) ? t.answered / t.calls : null);
    const failed = failures(t.by_status) || (num(t.failed) ? String(t.failed) : DASH);
    return el('tr', {},
      el('td', {}, t.trunk ?? DASH, t.to ? el('span', { class: 'muted' }, ` → ${t.to}`) : null),
      el('td', { class: 'n' }, int(t.calls)),
      el('td', { class: 'n' }, int(t.answered)),
      el('td', { class: `n ${asr === null ? '' : asr < 0.5 ? 'err' : asr < 0.8 ? 'warn' : 'ok'}` },
        asr === null ? DASH : `${(asr * 100).toFixed(1)} %`),
      el('td', { class: failed === DASH ? 'muted' : 'err', title: `${int(t.failed)} failed` }, failed),
      el('td', { class: 'n' }, int(t.short)),
      el('td', { class: 'n' }, duration(t.setup_mean_s)));
  });
  $('trunks').tBodies[0].replaceChildren(...(rows.length ? rows : [fullRow(7, 'no trunks yet')]));
  renderMos(list);
}

// The MOS histogram of all trunks together, bucket by bucket.
function renderMos(list) {
  const label = (b) => (Number.isInteger(b * 10) ? b.toFixed(1) : String(b));
  const buckets = new Map(); // label -> { upper, count }
  for (const t of list) {
    const bounds = t.mos?.bounds, counts = t.mos?.counts;
    if (!Array.isArray(bounds) || !Array.isArray(counts) || !bounds.length) continue;
    counts.forEach((n, i) => {
      const last = i >= bounds.length;
      const key = last ? `>${label(bounds[bounds.length - 1])}` : `≤${label(bounds[i])}`;
      const bucket = buckets.get(key) || { upper: last ? Infinity : bounds[i], count: 0 };
      bucket.count += num(n) ?? 0;
      buckets.set(key, bucket);
    });
  }
  const all = [...buckets].sort(([, a], [, b]) => a.upper - b.upper);
  const total = all.reduce((sum, [, b]) => sum + b.count, 0);
  $('mos-total').textContent = total ? `(${total} legs)` : '';
  if (!all.length) return $('mos').replaceChildren(el('p', { class: 'muted' }, 'no MOS samples yet'));
  const peak = Math.max(1, ...all.map(([, b]) => b.count));
  $('mos').replaceChildren(...all.map(([key, b]) => {
    const quality = b.upper <= 3.0 ? 'err' : b.upper <= 3.5 ? 'warn' : 'ok';
    const share = total ? ` (${((b.count / total) * 100).toFixed(0)} %)` : '';
    return el('div', { class: 'bucket', title: `MOS ${key}: ${b.count} legs${share}` },
      el('span', { class: 'count' }, b.count),
      el('div', { class: 'track' }, el('div', { class: `bar ${quality}`, style: `height:${(b.count / peak) * 100}%` })),
      el('span', { class: 'label' }, key));
  }));
}

// ---------------------------------------------------------------- peers

function renderPeers(list) {
  if (!Array.isArray(list)) throw new Error('not a list');
  const rows = list.map((p) => {
    const state = p.up === true ? 'up' : p.up === false ? 'down' : 'unknown';
    return el('tr', {},
      el('td', {}, p.trunk ?? DASH),
      el('td', { class: 'mono' }, p.peer ?? DASH),
      el('td', {}, el('span', { class: `badge ${state}` }, state)),
      el('td', { class: 'n' }, int(p.changes)),
      el('td', { class: 'n' }, num(p.rtt_ms) === null ? DASH : `${p.rtt_ms.toFixed(1)} ms`));
  });
  $('peers').tBodies[0].replaceChildren(...(rows.length ? rows : [fullRow(5, 'no peers')]));
}

// ---------------------------------------------------------------- versions & rules

function renderVersions(v) {
  if (!v || typeof v !== 'object') throw new Error('not an object');
  const parts = [el('p', { class: 'summary' },
    'current version ', el('strong', {}, v.current ?? DASH),
    ' · reloads ', int(v.reloads),
    ' · refused ', el('span', { class: v.reload_failures > 0 ? 'err' : '' }, int(v.reload_failures)))];

  const byVersion = Array.isArray(v.calls_by_version) ? v.calls_by_version : [];
  parts.push(el('h3', {}, 'Calls by version'), byVersion.length
    ? el('div', { class: 'chips' }, byVersion.map((c) =>
      el('span', { class: `chip${c.version === v.current ? ' current' : ''}` }, `v${c.version}: ${int(c.calls)}`)))
    : el('p', { class: 'muted' }, 'no calls in progress'));

  if (Array.isArray(v.history)) {
    // newest first, whatever order the server keeps them in
    const entries = v.history.map((h, i) => ({ h, i, t: Date.parse(h.at) }))
      .sort((a, b) => (Number.isNaN(a.t) || Number.isNaN(b.t) ? a.i - b.i : b.t - a.t))
      .slice(0, 20);
    parts.push(el('h3', {}, 'Reloads'), entries.length ? el('ul', { class: 'history' }, entries.map(({ h }) =>
      el('li', { class: h.ok ? 'ok' : 'err' },
        el('span', { class: 'mono muted' }, stamp(h.at)), ' ',
        h.ok ? `version ${h.version ?? DASH} loaded` : 'refused',
        Array.isArray(h.errors) && h.errors.length
          ? el('ul', { class: 'errors' }, h.errors.map((e) => el('li', { class: 'mono' }, e))) : null)))
      : el('p', { class: 'muted' }, 'no reloads yet'));
  }

  if (Array.isArray(v.rules)) {
    parts.push(el('h3', {}, 'Rule hooks'), v.rules.length ? table(
      [['Script'], ['Hook'], ['Calls', 'n'], ['Errors', 'n'], ['Budget hits', 'n']],
      v.rules.map((r) => el('tr', {},
        el('td', { class: 'mono' }, r.script ?? DASH), el('td', { class: 'mono' }, r.hook ?? DASH),
        el('td', { class: 'n' }, int(r.calls)),
        el('td', { class: `n${r.errors > 0 ? ' err' : ''}` }, int(r.errors)),
        el('td', { class: `n${r.budget_hits > 0 ? ' warn' : ''}` }, int(r.budget_hits)))))
      : el('p', { class: 'muted' }, 'no hooks ran yet'));
  }

  if (Array.isArray(v.counters)) {
    parts.push(el('h3', {}, 'Rule counters (bh.metric)'), v.counters.length ? table(
      [['Name'], ['Labels'], ['Value', 'n']],
      v.counters.map((c) => el('tr', {},
        el('td', { class: 'mono' }, c.name ?? DASH),
        el('td', { class: 'mono muted' },
          Object.entries(c.labels || {}).map(([k, val]) => `${k}=${val}`).join(', ') || DASH),
        el('td', { class: 'n' }, num(c.value) === null ? DASH : String(c.value)))))
      : el('p', { class: 'muted' }, 'no counters yet'));
  }
  $('versions').replaceChildren(...parts);
}

// ---------------------------------------------------------------- recent calls & ladder

let recent = [];             // the last /api/recent answer
let selected = null;         // id of the call in the ladder
let pinned = null;           // the call the operator clicked (kept if it leaves the list), else follow the newest
let drawn = null;            // what the ladder shows, to skip identical redraws

function renderRecent(list) {
  if (!Array.isArray(list)) throw new Error('not a list');
  recent = list;
  if (pinned) pinned = list.find((c) => c.id === pinned.id) || pinned;
  selected = pinned ? pinned.id : list[0]?.id ?? null;
  $('recent').replaceChildren(...(list.length ? list.map((c) => {
    const msgs = Array.isArray(c.messages) ? c.messages : [];
    const last = msgs.length ? String(msgs[msgs.length - 1].line ?? '') : '';
    return el('li', {}, el('button', { type: 'button', 'data-id': c.id, class: c.id === selected ? 'selected' : null },
      el('span', { class: 'id mono', title: c.id }, c.id),
      el('span', { class: 'when mono muted' }, stamp(c.started)),
      el('span', { class: 'hint' }, el('span', { class: 'muted' }, `${msgs.length} msgs `),
        el('span', { class: sipClass(last) }, last))));
  }) : [el('li', { class: 'muted' }, 'no calls yet')]));
  drawSelected();
}

function drawSelected() {
  const call = pinned || recent.find((c) => c.id === selected) || null;
  $('follow').hidden = !pinned;
  const key = JSON.stringify(call);
  if (key === drawn) return;
  drawn = key;
  $('ladder-title').textContent = call ? `${call.id} · ${stamp(call.started)}` : '';
  drawLadder(call);
}

function drawLadder(call) {
  const box = $('ladder');
  const msgs = Array.isArray(call?.messages) ? call.messages : [];
  if (!call) return box.replaceChildren(el('p', { class: 'muted' }, 'no call selected'));
  if (!msgs.length) return box.replaceChildren(el('p', { class: 'muted' }, 'no messages recorded'));

  // Lanes: remotes first seen inbound left of the SBC, the others right of it.
  const left = [], right = [], locals = new Set();
  for (const m of msgs) {
    const remote = String(m.remote ?? '?');
    if (m.local) locals.add(String(m.local));
    if (!left.includes(remote) && !right.includes(remote)) (m.dir === 'out' ? right : left).push(remote);
  }
  if (!left.length) left.push(...right.splice(0));
  const lanes = [...left, SBC, ...right];

  // Geometry: a time gutter, then lanes spread over the box's width.
  const CH = 6.6, GUTTER = 76, EDGE = 70, TOP = 44, ROW = 30;
  const width = Math.max(box.clientWidth - 2, 600);
  const step = Math.min(340, Math.max(150, (width - GUTTER - 2 * EDGE) / Math.max(1, lanes.length - 1)));
  const x = (lane) => GUTTER + EDGE + lanes.indexOf(lane) * step;
  const W = x(lanes[lanes.length - 1]) + EDGE, H = TOP + msgs.length * ROW + 10;

  const heads = lanes.map((lane) => {
    const name = lane === SBC ? 'SBC' : lane;
    const text = truncate(name, Math.floor((step - 14) / CH));
    const w = text.length * CH + 16;
    return svg('g', { class: lane === SBC ? 'head sbc' : 'head' },
      svg('title', {}, lane === SBC ? ['SBC', ...locals].join('\n') : lane),
      svg('line', { class: 'lifeline', x1: x(lane), x2: x(lane), y1: 30, y2: H - 4 }),
      svg('rect', { x: x(lane) - w / 2, y: 6, width: w, height: 22, rx: 4 }),
      svg('text', { x: x(lane), y: 21, 'text-anchor': 'middle' }, text));
  });

  const arrows = msgs.map((m, i) => {
    const remote = String(m.remote ?? '?'), line = String(m.line ?? '');
    const [from, to] = m.dir === 'out' ? [SBC, remote] : [remote, SBC];
    const x1 = x(from), x2 = x(to), dir = Math.sign(x2 - x1), y = TOP + i * ROW + 16;
    const room = Math.floor((Math.abs(x2 - x1) - 12) / CH);
    return svg('g', { class: `msg ${sipClass(line)}` },
      svg('title', {}, `${line}\n${offset(m.t_ms)}  ${m.dir === 'out' ? m.local ?? 'SBC' : remote} → ${m.dir === 'out' ? remote : m.local ?? 'SBC'}`),
      svg('text', { class: 't', x: 6, y: y + 4 }, offset(m.t_ms)),
      svg('line', { x1, x2: x2 - dir * 7, y1: y, y2: y }),
      svg('polygon', { points: `${x2},${y} ${x2 - dir * 8},${y - 4} ${x2 - dir * 8},${y + 4}` }),
      svg('text', { x: (x1 + x2) / 2, y: y - 5, 'text-anchor': 'middle' }, truncate(line, room)));
  });

  box.replaceChildren(svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img' }, heads, arrows));
}

// ---------------------------------------------------------------- wiring

const RENDER = { status: renderStatus, trunks: renderTrunks, peers: renderPeers, versions: renderVersions, recent: renderRecent };

$('recent').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-id]');
  if (!button) return;
  pinned = recent.find((c) => c.id === button.dataset.id) || null;
  renderRecent(recent);
});
$('follow').addEventListener('click', () => { pinned = null; renderRecent(recent); });
window.addEventListener('hashchange', readToken);
window.addEventListener('resize', () => { drawn = null; drawSelected(); });

readToken();
poll();
