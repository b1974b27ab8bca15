'use strict';
// devloop notes example, web: the front end (node built-ins only).
//   GET /        -> HTML page: this server's VERSION, the API's version and the notes it returned from
//                   the database. Rendered server-side: every view calls $API_URL (default the `api`
//                   Service). When the API cannot be reached the page still answers 200, with
//                   "api unavailable: <reason>".
//   GET /healthz -> 200 ok (does not depend on the API, so an API rollout never touches web)
// Tests change the page by editing the VERSION line below (plain text replacement).
const VERSION = 'web v1';

const http = require('http');
const os = require('os');

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const API_URL = process.env.API_URL || 'http://api:80/api/notes';
const API_TIMEOUT_MS = Number.parseInt(process.env.API_TIMEOUT_MS || '1500', 10);
const POD_NAME = process.env.HOSTNAME || os.hostname();

function escapeHtml(value) {
  return String(value)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

// GET $API_URL -> the parsed JSON; rejects with an Error whose message is shown on the page.
function fetchNotes() {
  return new Promise((resolve, reject) => {
    // agent: false -> a fresh connection per call, so an api rollout is visible at once
    const req = http.get(API_URL, { agent: false, headers: { Accept: 'application/json' } }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode} from ${API_URL}`));
        try {
          return resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          return reject(new Error(`invalid JSON from ${API_URL}`));
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
    const notes = Array.isArray(api.notes) ? api.notes : [];
    const rows = notes.map((n) => `  <li><b>${escapeHtml(n.title)}</b> ${escapeHtml(n.body)}</li>`).join('\n');
    body = `<p>API version: <b id="api-version">${escapeHtml(api.version)}</b></p>\n<ul id="notes">\n${rows}\n</ul>`;
  }
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>devloop notes</title>
</head>
<body>
<h1>devloop notes</h1>
<p>Web version: <b id="web-version">${escapeHtml(VERSION)}</b> <small>(pod ${escapeHtml(POD_NAME)})</small></p>
${body}
</body>
</html>
`;
}

function send(res, status, body, contentType = 'text/plain; charset=utf-8') {
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

async function handler(req, res) {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path === '/healthz') return send(res, 200, 'ok\n');
  if (path !== '/') return send(res, 404, 'not found\n');
  let api;
  try {
    api = await fetchNotes();
  } catch (err) {
    // AggregateError (several addresses refused) has an empty message but a code
    api = { error: (err && (err.message || err.code)) || String(err) };
  }
  return send(res, 200, renderPage(api), 'text/html; charset=utf-8');
}

const server = http.createServer((req, res) => {
  handler(req, res).catch((err) => {
    console.error(err);
    if (!res.headersSent) send(res, 500, 'internal error\n');
  });
});
server.keepAliveTimeout = 5000;

function shutdown(signal) {
  console.log(`${VERSION}: received ${signal}, shutting down`);
  setTimeout(() => process.exit(0), 500).unref();
  server.close(() => process.exit(0));
  server.closeIdleConnections();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.listen(PORT, () => console.log(`${VERSION} listening on :${PORT}, API_URL=${API_URL}`));
