'use strict';
// devloop shop example, web: the front end (node built-ins only).
//   GET /        -> HTML page with this server's VERSION and what the API answered. The page is
//                   rendered server-side: every request calls $API_URL (default the `api` Service).
//                   When the API cannot be reached the page still answers 200, with
//                   "api unavailable: <reason>".
//   GET /healthz -> 200 ok (does not depend on the API, so an API rollout never touches web)
//   GET /metrics -> Prometheus text: http_requests_total{path,status}, api_calls_total{outcome}
// Tests change the page by editing the VERSION line below (plain text replacement).
const VERSION = 'web v1';

const http = require('http');
const https = require('https');
const os = require('os');

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const API_URL = process.env.API_URL || 'http://api:80/api/items';
const API_TIMEOUT_MS = Number.parseInt(process.env.API_TIMEOUT_MS || '1500', 10);
const POD_NAME = process.env.HOSTNAME || os.hostname();
const SHUTDOWN_TIMEOUT_MS = 500;
const MAX_API_BODY = 1024 * 1024;
const ROUTES = new Set(['/', '/healthz', '/metrics']);

// http_requests_total{path,status}; unknown paths share one label value to bound cardinality
const requestCounts = new Map();
// api_calls_total{outcome}: ok or error, both from the start at 0
const apiCalls = new Map([
  ['ok', 0],
  ['error', 0],
]);

function seriesKey(path, status) {
  return `${ROUTES.has(path) ? path : 'other'}\u0000${status}`;
}

// The series this app answers with exist from the start, at 0: a counter that appears only with its first
// request hides that request from rate()/increase() (a burst between two scrapes would read as no traffic).
for (const path of ROUTES) requestCounts.set(seriesKey(path, 200), 0);
requestCounts.set(seriesKey('other', 404), 0);

function countRequest(path, status) {
  const key = seriesKey(path, status);
  requestCounts.set(key, (requestCounts.get(key) || 0) + 1);
}

function escapeLabel(value) {
  return String(value).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function escapeHtml(value) {
  return String(value)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function renderMetrics() {
  const lines = [
    '# HELP http_requests_total Total HTTP requests handled, by path and status code.',
    '# TYPE http_requests_total counter',
  ];
  for (const [key, count] of [...requestCounts.entries()].sort()) {
    const [path, status] = key.split('\u0000');
    lines.push(`http_requests_total{path="${escapeLabel(path)}",status="${status}"} ${count}`);
  }
  lines.push('# HELP api_calls_total Calls to the item API, by outcome.', '# TYPE api_calls_total counter');
  for (const [outcome, count] of [...apiCalls.entries()].sort()) {
    lines.push(`api_calls_total{outcome="${outcome}"} ${count}`);
  }
  lines.push(
    '# HELP app_info Application version.',
    '# TYPE app_info gauge',
    `app_info{version="${escapeLabel(VERSION)}",node_version="${escapeLabel(process.version)}"} 1`,
    '# HELP process_uptime_seconds Seconds since the process started.',
    '# TYPE process_uptime_seconds gauge',
    `process_uptime_seconds ${process.uptime().toFixed(3)}`,
  );
  return lines.join('\n') + '\n';
}

// GET $API_URL -> {data, pod}; rejects with an Error whose message is the reason shown on the page.
function fetchItems() {
  return new Promise((resolve, reject) => {
    let url;
    try {
      url = new URL(API_URL);
    } catch {
      reject(new Error(`bad API_URL ${API_URL}`));
      return;
    }
    const client = url.protocol === 'https:' ? https : http;
    // agent: false -> a fresh connection per call, so calls spread over the api replicas and a
    // rollout of the api is visible at once (no keep-alive socket pinned to an old pod).
    const req = client.get(url, { agent: false, headers: { Accept: 'application/json' } }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_API_BODY) {
          req.destroy(new Error('response too large'));
          return;
        }
        chunks.push(chunk);
      });
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) {
          reject(new Error(`HTTP ${res.statusCode} from ${API_URL}`));
          return;
        }
        try {
          resolve({ data: JSON.parse(Buffer.concat(chunks).toString('utf8')), pod: res.headers['x-pod-name'] || '' });
        } catch {
          reject(new Error(`invalid JSON from ${API_URL}`));
        }
      });
    });
    req.setTimeout(API_TIMEOUT_MS, () => req.destroy(new Error(`no answer from ${API_URL} within ${API_TIMEOUT_MS} ms`)));
    req.on('error', reject);
  });
}

function renderPage(api) {
  let body;
  if (api.error) {
    body = `<p id="api-error">api unavailable: ${escapeHtml(api.error)}</p>`;
  } else {
    const items = Array.isArray(api.data.items) ? api.data.items : [];
    const rows = items
      .map((it) => `    <li>${escapeHtml(it && it.name)}${it && it.price !== undefined ? ` (${escapeHtml(it.price)})` : ''}</li>`)
      .join('\n');
    body = [
      `<p>API version: <b id="api-version">${escapeHtml(api.data.version)}</b>` +
        (api.pod ? ` <small>(pod ${escapeHtml(api.pod)})</small>` : '') +
        '</p>',
      `<ul id="items">`,
      rows,
      `</ul>`,
    ].join('\n');
  }
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>devloop shop</title>
</head>
<body>
<h1>devloop shop</h1>
<p>Web version: <b id="web-version">${escapeHtml(VERSION)}</b> <small>(pod ${escapeHtml(POD_NAME)})</small></p>
${body}
</body>
</html>
`;
}

function send(res, status, body, contentType = 'text/plain; charset=utf-8') {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Pod-Name': POD_NAME,
  });
  res.end(body);
}

async function handler(req, res) {
  let path;
  try {
    path = new URL(req.url, 'http://localhost').pathname;
  } catch {
    path = req.url;
  }
  res.on('finish', () => countRequest(path, res.statusCode));

  if (!ROUTES.has(path)) return send(res, 404, 'not found\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(res, 405, 'method not allowed\n');
  }
  if (path === '/healthz') return send(res, 200, 'ok\n');
  if (path === '/metrics') return send(res, 200, renderMetrics(), 'text/plain; version=0.0.4; charset=utf-8');

  let api;
  try {
    api = await fetchItems();
    apiCalls.set('ok', (apiCalls.get('ok') || 0) + 1);
  } catch (err) {
    // AggregateError (several addresses refused, Node >= 20) has an empty message but a code
    api = { error: (err && (err.message || err.code)) || String(err) };
    apiCalls.set('error', (apiCalls.get('error') || 0) + 1);
  }
  if (res.destroyed) return undefined; // client went away meanwhile
  return send(res, 200, renderPage(api), 'text/html; charset=utf-8');
}

function start(port = PORT) {
  const server = http.createServer((req, res) => {
    handler(req, res).catch((err) => {
      console.error(err);
      if (!res.headersSent) send(res, 500, 'internal error\n');
    });
  });
  server.keepAliveTimeout = 5000;
  let stopping = false;

  const shutdown = (signal) => {
    if (stopping) return;
    stopping = true;
    console.log(`${VERSION}: received ${signal}, shutting down`);
    // Force exit if in-flight requests do not finish quickly (well within 1 s).
    setTimeout(() => {
      if (server.closeAllConnections) server.closeAllConnections();
      process.exit(0);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    server.close(() => process.exit(0));
    // close() waits for keep-alive sockets; drop the idle ones now (Node >= 18.2)
    if (server.closeIdleConnections) server.closeIdleConnections();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  server.listen(port, () => {
    console.log(`${VERSION} listening on :${server.address().port}, API_URL=${API_URL}`);
  });
  return server;
}

module.exports = { VERSION, handler, renderPage, renderMetrics, start };

if (require.main === module) start();
