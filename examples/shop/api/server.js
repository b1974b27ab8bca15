'use strict';
// devloop shop example, api: the item API (node built-ins only).
//   GET /api/items -> {"version": VERSION, "items": [...]} (header X-Pod-Name: $HOSTNAME)
//   GET /healthz   -> 200 ok
//   GET /metrics   -> Prometheus text: http_requests_total{path,status}
// Tests change the answer by editing the VERSION line below (plain text replacement).
const VERSION = 'api v1';

const http = require('http');
const os = require('os');

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const POD_NAME = process.env.HOSTNAME || os.hostname();
const SHUTDOWN_TIMEOUT_MS = 500;
const ROUTES = new Set(['/api/items', '/healthz', '/metrics']);

const ITEMS = [
  { id: 1, name: 'coffee mug', price: 9.5 },
  { id: 2, name: 'notebook', price: 4.25 },
  { id: 3, name: 'sticker pack', price: 2.0 },
];

// http_requests_total{path,status}; unknown paths share one label value to bound cardinality
const requestCounts = new Map();

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

function renderMetrics() {
  const lines = [
    '# HELP http_requests_total Total HTTP requests handled, by path and status code.',
    '# TYPE http_requests_total counter',
  ];
  for (const [key, count] of [...requestCounts.entries()].sort()) {
    const [path, status] = key.split('\u0000');
    lines.push(`http_requests_total{path="${escapeLabel(path)}",status="${status}"} ${count}`);
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

function send(res, status, body, contentType = 'text/plain; charset=utf-8') {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Pod-Name': POD_NAME,
  });
  res.end(body);
}

function handler(req, res) {
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
  if (path === '/api/items') {
    return send(res, 200, JSON.stringify({ version: VERSION, items: ITEMS }) + '\n', 'application/json; charset=utf-8');
  }
  if (path === '/healthz') return send(res, 200, 'ok\n');
  return send(res, 200, renderMetrics(), 'text/plain; version=0.0.4; charset=utf-8');
}

function start(port = PORT) {
  const server = http.createServer(handler);
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
    console.log(`${VERSION} listening on :${server.address().port}`);
  });
  return server;
}

module.exports = { VERSION, ITEMS, handler, renderMetrics, start };

if (require.main === module) start();
