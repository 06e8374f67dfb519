// jupyter_qwen notebook widgets: ServerPanel (kind "server") and GpuDashboard (kind "gpu").
// Charts are inline SVG; colours come from JupyterLab's theme variables (panel.css).

const SVG = 'http://www.w3.org/2000/svg';
const W = 300;
const H = 80;

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// ---- numbers, bytes and durations: the rules of jupyter_qwen/format.py and of the sidebar's
// format.ts (tests/format_cases.json holds the cases all three pass) ----

const MISSING = '–';
const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
const SECONDS_UNTIL_MINUTES = 120;
const MINUTES_UNTIL_HOURS = 120;

const missing = v => v === null || v === undefined;

export function formatNumber(value, digits = 1) {
  if (missing(value)) return MISSING;
  return Number(value).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function formatPercent(fraction, digits = 1) {
  return missing(fraction) ? MISSING : `${formatNumber(100 * fraction, digits)} %`;
}

export function formatBytes(value, unit = null, digits = null, signed = false) {
  if (missing(value)) return MISSING;
  let index = unit === null ? 0 : BYTE_UNITS.indexOf(unit);
  while (unit === null && Math.abs(value) >= 1024 ** (index + 1) && index < BYTE_UNITS.length - 1) index++;
  const places = digits === null ? (index >= 3 ? 1 : 0) : digits;
  const figure = (Math.abs(value) / 1024 ** index).toLocaleString('en-US', {
    minimumFractionDigits: places,
    maximumFractionDigits: places
  });
  const sign = value < 0 ? '-' : signed ? '+' : '';
  return `${sign}${figure} ${BYTE_UNITS[index]}`;
}

export function formatDuration(seconds) {
  if (missing(seconds)) return MISSING;
  if (Math.abs(seconds) < SECONDS_UNTIL_MINUTES) return `${formatNumber(seconds, 0)} s`;
  if (Math.abs(seconds) < 60 * MINUTES_UNTIL_HOURS) return `${formatNumber(seconds / 60, 0)} min`;
  return `${formatNumber(seconds / 3600, 0)} h`;
}

const MILLISECONDS_UNTIL_SECONDS = 0.9995;

export function formatLatency(seconds) {
  if (missing(seconds)) return MISSING;
  if (Math.abs(seconds) < MILLISECONDS_UNTIL_SECONDS) return `${formatNumber(1000 * seconds, 0)} ms`;
  if (Math.abs(seconds) < SECONDS_UNTIL_MINUTES) return `${formatNumber(seconds, 1)} s`;
  return formatDuration(seconds);
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function niceBytes(v) {
  if (!(v > 0)) return 1024;
  const unit = Math.pow(1024, Math.floor(Math.log(v) / Math.log(1024)));
  return niceMax(v / unit) * unit;
}

function spanLabel(seconds) {
  return `−${formatDuration(seconds)}`;
}

/** One chart: a few line series over the last `windowS` seconds at most. */
class Chart {
  constructor(title, series, format, nice = niceMax) {
    this.series = series; // [{key, label}]
    this.format = format;
    this.nice = nice;
    this.el = h('div', 'jqw-chart');
    this.el.dataset.chart = title;
    const head = h('div', 'jqw-chart-head');
    head.append(h('span', 'jqw-chart-title', title), (this.maxLabel = h('span', 'jqw-chart-max')));
    this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', class: 'jqw-svg' });
    for (const y of [0.25, 0.5, 0.75]) {
      this.svg.append(svg('line', { x1: 0, x2: W, y1: H * y, y2: H * y, class: 'jqw-grid' }));
    }
    this.paths = series.map((_, i) => {
      const path = svg('path', { class: `jqw-line jqw-s${i}`, d: '' });
      this.svg.append(path);
      return path;
    });
    const axis = h('div', 'jqw-chart-axis');
    axis.append((this.startLabel = h('span', '', '')), h('span', '', 'now'));
    this.legend = h('div', 'jqw-legend');
    this.values = series.map((s, i) => {
      const item = h('span', 'jqw-legend-item');
      const value = h('span', 'jqw-legend-value', '–');
      item.append(h('span', `jqw-swatch jqw-s${i}`), h('span', '', s.label), value);
      this.legend.append(item);
      return value;
    });
    this.el.append(head, this.svg, axis, this.legend);
  }

  update(history, windowS, fixedMax) {
    const t = history.t || [];
    const columns = this.series.map(s => history[s.key] || []);
    const seen = columns.flat().filter(v => v !== null && v !== undefined);
    const max = fixedMax || this.nice(Math.max(0, ...seen) * 1.1);
    const span = Math.min(windowS, Math.max(60, t.length ? -t[0] : 0));
    this.maxLabel.textContent = this.format(max);
    this.startLabel.textContent = spanLabel(span);
    columns.forEach((values, i) => {
      this.paths[i].setAttribute('d', linePath(t, values, span, max));
      const last = values.length ? values[values.length - 1] : null;
      this.values[i].textContent = this.format(last);
    });
  }
}

function linePath(t, values, span, max) {
  let d = '';
  let pen = 'M';
  for (let i = 0; i < t.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) {
      pen = 'M';
      continue;
    }
    if (t[i] < -span) continue;
    const x = W * (1 + t[i] / span);
    const y = H - (H * Math.min(v, max)) / max;
    d += `${pen}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = 'L';
  }
  return d;
}

function stat(label, key) {
  const el = h('div', `jqw-stat jqw-stat-${key}`);
  const value = h('div', 'jqw-stat-value', '–');
  el.append(value, h('div', 'jqw-stat-label', label));
  return { el, set: text => (value.textContent = text) };
}

// ---- talking to the Jupyter server extension, or to the kernel as a fallback ----

function pageConfig() {
  const el = document.getElementById('jupyter-config-data');
  try {
    return el ? JSON.parse(el.textContent) : {};
  } catch {
    return {};
  }
}

function baseUrl() {
  const base = pageConfig().baseUrl || document.body.dataset.baseUrl || '/';
  return base.endsWith('/') ? base : `${base}/`;
}

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|;\\s*)${name}=([^;]*)`));
  return match ? decodeURIComponent(match[1]) : '';
}

/** POST to the server extension; null when the route is not there (not JupyterLab). */
async function viaServerExtension(serverId, action, payload = {}) {
  const headers = { 'Content-Type': 'application/json', 'X-XSRFToken': cookie('_xsrf') };
  const token = pageConfig().token;
  if (token) headers.Authorization = `token ${token}`;
  const url = `${baseUrl()}jupyter-qwen/servers/${encodeURIComponent(serverId)}/${action}`;
  let response;
  try {
    response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(payload), credentials: 'same-origin' });
  } catch {
    return null;
  }
  if (response.status === 404 || response.status === 405) return null;
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { message: text };
  }
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}

let nextRequest = 1;

function viaKernel(model, action, extra = {}) {
  const id = `${Date.now()}-${nextRequest++}`;
  return new Promise((resolve, reject) => {
    const onMsg = msg => {
      if (!msg || msg.kind !== 'action' || msg.id !== id) return;
      model.off('msg:custom', onMsg);
      msg.ok ? resolve(msg.result) : reject(new Error(msg.error));
    };
    model.on('msg:custom', onMsg);
    model.send({ ...extra, action, id });
  });
}

function cleanSummary(report) {
  const rows = [['RSS', report.before.rss, report.after.rss]];
  if (report.has_gpu) {
    rows.push(['torch reserved', report.before.torch_reserved, report.after.torch_reserved]);
    (report.before.gpu_used || []).forEach((used, i) =>
      rows.push([`GPU ${i}`, used, (report.after.gpu_used || [])[i]])
    );
  }
  const parts = rows.map(([name, before, after]) => `${name} ${formatBytes(before)} → ${formatBytes(after)}`);
  return `cleaned: ${parts.join('; ')}${report.has_gpu ? '' : ' (no GPU)'}`;
}

// ---- the views ----

function header(model) {
  const el = h('div', 'jqw-header');
  const title = h('div', 'jqw-title');
  const name = h('span', 'jqw-model');
  const state = h('span', 'jqw-state');
  title.append(name, state);
  const chips = h('div', 'jqw-chips');
  const device = h('span', 'jqw-chip jqw-device');
  const variant = h('span', 'jqw-chip jqw-variant');
  const uptime = h('span', 'jqw-chip jqw-uptime');
  const origin = h('span', 'jqw-chip jqw-origin');
  origin.title = 'kernel: in this kernel; process: a child process of it; remote: attached, not ours to stop';
  device.title = 'where the model runs';
  variant.title = "how the chat template thinks (hybrid, instruct-2507, thinking-2507)";
  chips.append(origin, device, variant, uptime);
  const demo = h('div', 'jqw-demo');
  const url = h('a', 'jqw-url');
  url.target = '_blank';
  const path = h('div', 'jqw-path');
  el.append(title, chips, demo, url, path);
  const update = () => {
    const view = model.get('view') || {};
    name.textContent = model.get('model_name');
    state.textContent = model.get('state');
    state.dataset.state = model.get('state');
    device.textContent = `device ${view.device || MISSING}`;
    variant.textContent = `chat ${view.chat_variant || MISSING}`;
    uptime.textContent = `up ${view.uptime || MISSING}`;
    origin.textContent = model.get('origin');
    origin.dataset.origin = model.get('origin');
    demo.textContent = model.get('demo') ? model.get('demo_label') : '';
    demo.hidden = !model.get('demo');
    url.textContent = model.get('url');
    url.href = model.get('url').replace(/\/v1$/, '/v1/models');
    path.textContent = model.get('model_path');
  };
  return { el, update };
}

/** A failed or dead server: the cause in one line, what to do, the full text folded. */
function errorView(model) {
  const el = h('div', 'jqw-error-box');
  const line = h('div', 'jqw-error-line');
  const hint = h('div', 'jqw-hint');
  const details = h('details', 'jqw-error-details');
  const detail = h('pre', 'jqw-error-text');
  details.append(h('summary', '', 'full error'), detail);
  el.append(line, hint, details);
  const update = () => {
    el.hidden = !model.get('error');
    line.textContent = model.get('error');
    hint.textContent = model.get('hint');
    hint.hidden = !model.get('hint');
    detail.textContent = model.get('error_detail');
    details.hidden = !model.get('error_detail');
  };
  return { el, update };
}

function loadingView(model) {
  const el = h('div', 'jqw-loading');
  const phase = h('div', 'jqw-phase');
  const bar = h('div', 'jqw-bar');
  const fill = h('div', 'jqw-bar-fill');
  bar.append(fill);
  el.append(phase, bar);
  const update = () => {
    const fraction = model.get('loading_fraction');
    phase.textContent = `loading: ${model.get('loading_phase') || 'starting'}` +
      (fraction === null ? '' : ` (${Math.round(100 * fraction)} %)`);
    bar.classList.toggle('jqw-indeterminate', fraction === null);
    fill.style.width = fraction === null ? '30%' : `${Math.round(100 * fraction)}%`;
  };
  return { el, update };
}

function memoryChart(model) {
  const gpu = model.get('has_gpu');
  const series = gpu ? [{ key: 'memory', label: 'GPU used (NVML)' }, { key: 'torch_reserved', label: 'torch reserved' }]
    : [{ key: 'memory', label: 'process RSS' }];
  return new Chart(gpu ? 'GPU memory' : 'memory (no GPU)', series, formatBytes, niceBytes);
}

/** The server's own memory over time, scaled to the largest figure it shows. */
function serverMemoryChart(model) {
  const gpu = model.get('has_gpu');
  const series = gpu
    ? [{ key: 'memory', label: 'this process (GPU)' }, { key: 'torch_reserved', label: 'torch reserved' }]
    : [{ key: 'memory', label: 'process RSS' }];
  series.push({ key: 'kv_used_bytes', label: 'KV cache used' });
  return new Chart(gpu ? 'GPU memory' : 'memory (no GPU)', series, formatBytes, niceBytes);
}

/** Where the server's memory goes: one bar split by part, scaled to the server's total. */
function memorySplit(model) {
  const el = h('div', 'jqw-split');
  const head = h('div', 'jqw-split-head');
  const bar = h('div', 'jqw-split-bar');
  const legend = h('div', 'jqw-split-legend');
  el.append(head, bar, legend);
  const update = () => {
    const view = model.get('view') || {};
    const parts = view.memory_parts || [];
    const total = parts.reduce((sum, p) => sum + (p.bytes || 0), 0);
    head.textContent = `server memory ${view.memory_total || MISSING}`;
    bar.replaceChildren(...parts.filter(p => p.bytes > 0 && total > 0).flatMap((p, i) => {
      const pieces = [];
      const used = p.used === null || p.used === undefined ? p.bytes : Math.min(p.used, p.bytes);
      const part = h('span', `jqw-split-part jqw-p${parts.indexOf(p)}`);
      part.style.width = `${(100 * used) / total}%`;
      part.title = `${p.label}: ${p.text}`;
      pieces.push(part);
      if (used < p.bytes) {
        const free = h('span', `jqw-split-part jqw-p${parts.indexOf(p)} jqw-split-free`);
        free.style.width = `${(100 * (p.bytes - used)) / total}%`;
        free.title = `${p.label} not in use`;
        pieces.push(free);
      }
      return pieces;
    }));
    bar.hidden = !(total > 0);
    legend.replaceChildren(...parts.map((p, i) => {
      const item = h('span', 'jqw-legend-item');
      item.append(h('span', `jqw-swatch jqw-p${i}`), h('span', '', p.label), h('span', 'jqw-legend-value', p.text));
      return item;
    }));
  };
  return { el, update };
}

/** The requests the engine holds now, each with Abort. */
function runningTable(model) {
  const el = h('div', 'jqw-running');
  const title = h('div', 'jqw-section-title', 'running requests');
  const table = h('table', 'jqw-table');
  const head = h('tr');
  for (const name of ['request', 'state', 'age', 'prompt', 'cached', 'generated', 'session', '']) {
    head.append(h('th', '', name));
  }
  const body = h('tbody');
  table.append(h('thead'), body);
  table.firstChild.append(head);
  const empty = h('div', 'jqw-note', 'no request is running');
  const result = h('div', 'jqw-result');
  el.append(title, table, empty, result);
  const abort = async (requestId, button) => {
    button.disabled = true;
    result.classList.remove('jqw-error');
    result.textContent = `aborting ${requestId}…`;
    try {
      let reply = await viaServerExtension(model.get('server_id'), 'abort', { request_id: requestId });
      if (reply === null) reply = await viaKernel(model, 'abort', { request_id: requestId });
      result.textContent = `aborted ${reply.aborted || requestId}`;
    } catch (err) {
      result.classList.add('jqw-error');
      result.textContent = `abort failed: ${err.message || err}`;
      button.disabled = false;
    }
  };
  const update = () => {
    const rows = (model.get('view') || {}).running || [];
    body.replaceChildren(...rows.map(row => {
      const tr = h('tr');
      tr.dataset.requestId = row.id;
      row.cells.forEach(cell => tr.append(h('td', '', cell)));
      const button = h('button', 'jqw-button jqw-abort', 'Abort');
      button.title = 'stop generating this request';
      button.disabled = !model.get('can_abort') || model.get('state') !== 'ok';
      button.onclick = () => abort(row.id, button);
      const cell = h('td');
      cell.append(button);
      tr.append(cell);
      return tr;
    }));
    table.hidden = rows.length === 0;
    empty.hidden = rows.length > 0;
  };
  return { el, update };
}

function serverDashboard(model) {
  const el = h('div', 'jqw-dashboard');
  const stats = {
    memory: stat('server memory', 'memory'),
    kv: stat('KV cache used', 'kv'),
    ttft: stat('time to first token', 'ttft'),
    itl: stat('inter-token latency', 'itl'),
    gen: stat('generated tok/s', 'gen'),
    prompt: stat('prompt tok/s', 'prompt'),
    hits: stat('prefix hits', 'hits'),
    total: stat('tokens generated', 'total'),
    requests: stat('running · waiting', 'requests')
  };
  const row = h('div', 'jqw-stats');
  row.append(...Object.values(stats).map(s => s.el));
  const split = memorySplit(model);
  const table = runningTable(model);
  const charts = h('div', 'jqw-charts');
  let memory = null;
  const tokens = new Chart('tokens/s', [
    { key: 'generation_tokens_per_s', label: 'generation' },
    { key: 'prompt_tokens_per_s', label: 'prompt' }
  ], v => formatNumber(v, 1));
  const requests = new Chart('requests', [
    { key: 'requests_running', label: 'running' },
    { key: 'requests_waiting', label: 'waiting' }
  ], v => formatNumber(v, 0));
  el.append(row, split.el, table.el, charts);
  const update = () => {
    if (!memory || memory.gpu !== model.get('has_gpu')) {
      memory = serverMemoryChart(model);
      memory.gpu = model.get('has_gpu');
      charts.replaceChildren(memory.el, tokens.el, requests.el);
    }
    const c = model.get('current');
    const view = model.get('view') || {};
    const history = model.get('history');
    const windowS = model.get('window_s');
    stats.memory.set(view.memory_total || MISSING);
    stats.kv.set(formatPercent(c.kv_cache_usage));
    stats.kv.el.title = view.kv || '';
    stats.ttft.set(view.ttft || MISSING);
    stats.itl.set(view.itl || MISSING);
    stats.hits.set(formatPercent(c.prefix_cache_hit_rate));
    stats.gen.set(formatNumber(c.generation_tokens_per_s));
    stats.prompt.set(formatNumber(c.prompt_tokens_per_s));
    stats.total.set(formatNumber(c.generation_tokens_total, 0));
    stats.requests.set(`${formatNumber(c.requests_running, 0)} · ${formatNumber(c.requests_waiting, 0)}`);
    split.update();
    table.update();
    memory.update(history, windowS);
    tokens.update(history, windowS);
    requests.update(history, windowS);
  };
  return { el, update };
}

function gpuList(model) {
  const el = h('div', 'jqw-gpus');
  const update = () => {
    const gpus = model.get('gpus');
    el.replaceChildren(...gpus.map(g => {
      const row = h('div', 'jqw-gpu');
      const util = g.utilization === null ? '' : `, ${g.utilization} % busy`;
      row.textContent = `GPU ${g.index} ${g.name}: ${formatBytes(g.used)} / ${formatBytes(g.total)}${util}`;
      return row;
    }));
    if (!model.get('has_gpu')) {
      el.replaceChildren(h('div', 'jqw-note', `No GPU (${model.get('gpu_reason')}): showing this process's memory.`));
    }
  };
  return { el, update };
}

function gpuDashboard(model) {
  const el = h('div', 'jqw-dashboard');
  const list = gpuList(model);
  const charts = h('div', 'jqw-charts');
  const util = new Chart('GPU utilisation', [{ key: 'utilization', label: 'mean' }], v => (missing(v) ? MISSING : formatPercent(v / 100, 0)));
  let memory = null;
  el.append(list.el, charts);
  const update = () => {
    list.update();
    if (!memory || memory.gpu !== model.get('has_gpu')) {
      memory = memoryChart(model);
      memory.gpu = model.get('has_gpu');
      charts.replaceChildren(...(memory.gpu ? [memory.el, util.el] : [memory.el]));
    }
    const c = model.get('current');
    memory.update(model.get('history'), model.get('window_s'), c.memory_total);
    util.update(model.get('history'), model.get('window_s'), 100);
  };
  return { el, update };
}

/** What the last Stop or Clean said, by server id, so that a redrawn view (the kernel
 * re-publishes the output when the server settles) shows it again. Kept in this module: the
 * model each view gets is a fresh proxy, so nothing set on it outlives the view. */
const lastResults = new Map();

function keepResult(model, result) {
  lastResults.set(model.get('server_id'), {
    text: result.textContent,
    error: result.classList.contains('jqw-error'),
    data: { ...result.dataset }
  });
}

function restoreResult(model, result) {
  const last = lastResults.get(model.get('server_id'));
  if (!last) return;
  result.textContent = last.text;
  result.classList.toggle('jqw-error', last.error);
  Object.assign(result.dataset, last.data);
}

function actions(model, setResult) {
  const el = h('div', 'jqw-actions');
  const stop = h('button', 'jqw-button jqw-stop', 'Stop');
  const clean = h('button', 'jqw-button jqw-clean', 'Clean');
  stop.title = 'Stop this server and give its memory back';
  clean.title = 'gc, empty the CUDA cache, reset torch.compile: with a before/after report';
  const result = h('span', 'jqw-result');
  restoreResult(model, result);
  const buttons = { stop, clean };
  const busy = new Set();
  el.append(...model.get('actions').filter(a => buttons[a]).map(a => buttons[a]), result);
  const run = async (action, button) => {
    busy.add(action);
    button.disabled = true;
    result.dataset.action = action;
    delete result.dataset.done;
    result.dataset.route = 'server';
    result.classList.remove('jqw-error');
    result.textContent = action === 'stop' ? 'stopping…' : 'cleaning…';
    keepResult(model, result);
    try {
      let reply = await viaServerExtension(model.get('server_id'), action);
      if (reply === null) {
        result.dataset.route = 'kernel';
        result.textContent += ' (through the kernel: waits for the running cell)';
        keepResult(model, result);
        reply = await viaKernel(model, action);
      }
      result.textContent = action === 'stop' ? model.get('stop_report') || 'stopped' : cleanSummary(reply);
      result.dataset.done = action;
    } catch (err) {
      result.classList.add('jqw-error');
      result.textContent = `${action} failed: ${err.message || err}`;
    } finally {
      busy.delete(action);
      keepResult(model, result);
      update();
      setResult(action);
    }
  };
  stop.onclick = () => run('stop', stop);
  clean.onclick = () => run('clean', clean);
  const update = () => {
    const state = model.get('state');
    const stopping = state === 'stopped' || state === 'stopping' || busy.has('stop') ||
      result.dataset.done === 'stop';
    stop.disabled = stopping;
    clean.disabled = busy.has('clean') || state === 'stopping';
    if (state === 'stopped' && result.dataset.action !== 'clean') {
      result.textContent = model.get('stop_report') || 'stopped';
      keepResult(model, result);
    }
  };
  return { el, update };
}

function snippet(model) {
  const el = h('div', 'jqw-snippet');
  const code = h('code', 'jqw-code');
  const copy = h('button', 'jqw-button jqw-copy', 'Copy');
  copy.onclick = async () => {
    try {
      await navigator.clipboard.writeText(code.textContent);
      copy.textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      copy.textContent = 'Selected: Ctrl+C';
    }
    setTimeout(() => (copy.textContent = 'Copy'), 2000);
  };
  el.append(code, copy);
  return { el, update: () => (code.textContent = model.get('snippet')) };
}

function renderServer(model, root) {
  const parts = [header(model), loadingView(model), errorView(model)];
  const dashboard = serverDashboard(model);
  const buttons = actions(model, () => undefined);
  const code = snippet(model);
  root.append(...parts.map(p => p.el), dashboard.el, buttons.el, code.el);
  return () => {
    const state = model.get('state');
    root.dataset.state = state;
    parts.forEach(p => p.update());
    parts[1].el.hidden = state !== 'loading';
    dashboard.el.hidden = state === 'loading' || state === 'failed';
    if (!dashboard.el.hidden) dashboard.update();
    buttons.update();
    code.update();
  };
}

/** This kernel's servers of every origin, one row each; Stop where the origin allows it. */
function serverList(model) {
  const el = h('div', 'jqw-server-list');
  const stopping = new Set();
  const stop = async (row, button, result) => {
    stopping.add(row.id);
    button.disabled = true;
    result.textContent = 'stopping…';
    try {
      let reply = await viaServerExtension(row.id, 'stop');
      if (reply === null) reply = await viaKernel(model, 'stop', { server_id: row.id });
      result.textContent = (reply && reply.report) || 'stopped';
    } catch (err) {
      result.classList.add('jqw-error');
      result.textContent = `stop failed: ${err.message || err}`;
      button.disabled = false;
    } finally {
      stopping.delete(row.id);
    }
  };
  const update = () => {
    const rows = model.get('servers') || [];
    el.replaceChildren(...rows.map(row => {
      const view = row.view || {};
      const line = h('div', 'jqw-server-row');
      line.dataset.origin = row.origin;
      line.dataset.state = row.state;
      const origin = h('span', 'jqw-chip jqw-origin', row.origin);
      origin.dataset.origin = row.origin;
      const figures = h('span', 'jqw-server-figures',
        `${row.state} · requests ${view.requests || MISSING} · tok/s ${view.tokens_per_s || MISSING} · KV ${view.kv || MISSING}`);
      line.append(h('span', 'jqw-model', row.name), origin, figures);
      if ((row.actions || []).includes('stop')) {
        const button = h('button', 'jqw-button jqw-stop', 'Stop');
        const result = h('span', 'jqw-result');
        button.disabled = stopping.has(row.id) || row.state === 'stopped';
        button.onclick = () => stop(row, button, result);
        line.append(button, result);
      }
      return line;
    }));
  };
  return { el, update };
}

function renderGpu(model, root) {
  const title = h('div', 'jqw-title');
  title.append(h('span', 'jqw-model', 'GPU monitor'));
  const dashboard = gpuDashboard(model);
  const servers = serverList(model);
  root.append(title, dashboard.el, servers.el);
  return () => {
    dashboard.update();
    servers.update();
  };
}

function render({ model, el }) {
  const root = h('div', 'jqw-root');
  root.dataset.kind = model.get('kind');
  el.append(root);
  const draw = model.get('kind') === 'server' ? renderServer(model, root) : renderGpu(model, root);
  let frame = 0;
  const schedule = () => {
    if (!frame) {
      frame = requestAnimationFrame(() => {
        frame = 0;
        root.dataset.updatedAt = String(model.get('updated_at'));
        draw();
      });
    }
  };
  const names = ['state', 'loading_phase', 'loading_fraction', 'error', 'error_detail', 'hint', 'view',
    'history', 'current', 'gpus', 'has_gpu', 'stop_report', 'updated_at', 'demo', 'snippet', 'url', 'can_abort',
    'servers', 'origin', 'actions'];
  names.forEach(n => model.on(`change:${n}`, schedule));
  root.dataset.updatedAt = String(model.get('updated_at'));
  draw();
  return () => {
    names.forEach(n => model.off(`change:${n}`, schedule));
    if (frame) cancelAnimationFrame(frame);
  };
}

export default { render };
