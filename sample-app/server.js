'use strict';
// devloop sample app: a dependency-free Node.js HTTP server.
//   GET /         -> MESSAGE + "\n" (header X-Pod-Name: $HOSTNAME)
//   GET /healthz  -> 200 ok
//   GET /metrics  -> Prometheus text format: http_requests_total{path,status},
//                    http_request_duration_seconds{path,status} (histogram), app_info{version,revision,image_tag};
//                    the request series exist from the start, at 0
// Tests change the response by editing the MESSAGE line below (plain text replacement).
const MESSAGE = 'Hello from devloop sample-app v1';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const nodePath = require('path');

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const POD_NAME = process.env.HOSTNAME || os.hostname();
const VERSION = (() => {
  try {
    return require('./package.json').version;
  } catch {
    return 'unknown';
  }
})();
// What is serving, for dashboards (`devloop status` shows the versions of a service's pods):
// revision: a hash of this process's own source files, read at start, so it changes with every edit (also
// after a live update, which restarts the process without a new image); image_tag: the image's tag when
// the deployment passes it in (DEVLOOP_IMAGE_TAG), else "unknown".
const REVISION = (() => {
  const hash = crypto.createHash('sha256');
  for (const file of ['server.js', 'package.json']) {
    try {
      hash.update(fs.readFileSync(nodePath.join(__dirname, file)));
    } catch {
      hash.update(`missing ${file}`);
    }
  }
  return hash.digest('hex').slice(0, 12);
})();
const IMAGE_TAG = process.env.DEVLOOP_IMAGE_TAG || 'unknown';
const SHUTDOWN_TIMEOUT_MS = 500;
const ROUTES = new Set(['/', '/healthz', '/metrics']);

// http_requests_total{path,status}; unknown paths share one label value to bound cardinality
const requestCounts = new Map();

// http_request_duration_seconds{path,status}: a histogram with Prometheus' default buckets
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const durations = new Map(); // key -> { counts: per bucket (not cumulative), sum, count }

const emptyHistogram = () => ({ counts: new Array(BUCKETS.length).fill(0), sum: 0, count: 0 });

function seriesKey(path, status) {
  return `${ROUTES.has(path) ? path : 'other'}\u0000${status}`;
}

// Every series this app answers with exists from the start, at 0 (as Prometheus' client guidance asks):
// a counter that appears only with its first request hides that request from rate()/increase(), so a
// burst between two scrapes would read as no traffic. The app answers each route 200 (GET) or 405, and 404 elsewhere.
const KNOWN_SERIES = [...[...ROUTES].flatMap((path) => [seriesKey(path, 200), seriesKey(path, 405)]), seriesKey('other', 404)];
for (const key of KNOWN_SERIES) {
  requestCounts.set(key, 0);
  durations.set(key, emptyHistogram());
}

function countRequest(path, status, seconds) {
  const key = seriesKey(path, status);
  requestCounts.set(key, (requestCounts.get(key) || 0) + 1);
  let h = durations.get(key);
  if (!h) {
    h = emptyHistogram();
    durations.set(key, h);
  }
  const i = BUCKETS.findIndex((le) => seconds <= le);
  if (i >= 0) h.counts[i] += 1;
  h.sum += seconds;
  h.count += 1;
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
    '# HELP http_request_duration_seconds Time to handle an HTTP request, by path and status code.',
    '# TYPE http_request_duration_seconds histogram',
  );
  for (const [key, h] of [...durations.entries()].sort()) {
    const [path, status] = key.split('\u0000');
    const labels = `path="${escapeLabel(path)}",status="${status}"`;
    let cumulative = 0;
    BUCKETS.forEach((le, i) => {
      cumulative += h.counts[i];
      lines.push(`http_request_duration_seconds_bucket{${labels},le="${le}"} ${cumulative}`);
    });
    lines.push(
      `http_request_duration_seconds_bucket{${labels},le="+Inf"} ${h.count}`,
      `http_request_duration_seconds_sum{${labels}} ${h.sum.toFixed(6)}`,
      `http_request_duration_seconds_count{${labels}} ${h.count}`,
    );
  }
  const mem = process.memoryUsage();
  const info = {
    version: VERSION,
    revision: REVISION,
    image_tag: IMAGE_TAG,
    node_version: process.version,
  };
  const infoLabels = Object.entries(info)
    .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
    .join(',');
  lines.push(
    '# HELP app_info Application build information: what is serving.',
    '# TYPE app_info gauge',
    `app_info{${infoLabels}} 1`,
    '# HELP process_uptime_seconds Seconds since the process started.',
    '# TYPE process_uptime_seconds gauge',
    `process_uptime_seconds ${process.uptime().toFixed(3)}`,
    '# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.',
    '# TYPE process_start_time_seconds gauge',
    `process_start_time_seconds ${Math.floor(Date.now() / 1000 - process.uptime())}`,
    '# HELP process_resident_memory_bytes Resident memory size in bytes.',
    '# TYPE process_resident_memory_bytes gauge',
    `process_resident_memory_bytes ${mem.rss}`,
  );
  return lines.join('\n') + '\n';
}

function send(res, status, body, contentType = 'text/plain; charset=utf-8') {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
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
  const started = process.hrtime.bigint();
  res.on('finish', () => countRequest(path, res.statusCode, Number(process.hrtime.bigint() - started) / 1e9));

  if (!ROUTES.has(path)) return send(res, 404, 'not found\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(res, 405, 'method not allowed\n');
  }
  if (path === '/') return send(res, 200, MESSAGE + '\n');
  if (path === '/healthz') return send(res, 200, 'ok\n');
  return send(res, 200, renderMetrics(), 'text/plain; version=0.0.4; charset=utf-8');
}

function createServer() {
  const server = http.createServer(handler);
  server.keepAliveTimeout = 5000;
  return server;
}

function start(port = PORT) {
  const server = createServer();
  let stopping = false;

  const shutdown = (signal) => {
    if (stopping) return;
    stopping = true;
    console.log(`received ${signal}, shutting down`);
    // Force exit if in-flight requests do not finish quickly.
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
    console.log(`listening on :${server.address().port}`);
  });
  return server;
}

module.exports = { MESSAGE, REVISION, IMAGE_TAG, createServer, renderMetrics, start };

if (require.main === module) start();
